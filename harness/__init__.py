"""segbench's engine: data layer, plugin manager, recipes and the ``bench`` command.

Plugin authors need only ``hookimpl`` from here; everything else is the harness's own business.
"""

import os

# albumentations pings the network at import to look for updates; this machine (and most clusters)
# has no network, so the ping only costs time. Set before anything imports albumentations.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from harness.recipe.hookspecs import hookimpl  # noqa: E402

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
