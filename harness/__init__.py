"""segbench's harness, in wings that follow the path of the data (``docs/architecture.md``).

Plugin authors import from ``harness.api`` only; everything else is the harness's own business.
"""

import os

# albumentations pings the network at import to look for updates; this machine (and most clusters)
# has no network, so the ping only costs time. Set before anything imports albumentations.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
