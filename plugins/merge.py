"""The merger and post-processors of the seed's final submission, registered for ``bench ensemble``
(implemented in ``plugins.components.merging``)."""

from harness.api import hookimpl
from plugins.components import merging

__version__ = "0.1.0"


@hookimpl
def bench_mergers():
    return {"mean": merging.mean}


@hookimpl
def bench_postprocessors():
    return {"keep_largest": merging.keep_largest, "convex_hull": merging.convex_hull,
            "seed_hull": merging.seed_hull}
