"""What a plugin may import from segbench: the one public API, kept stable for plugin authors.

* ``hookimpl`` marks a plugin's hooks (the hooks themselves are ``harness.recipe.hookspecs``);
* ``Loss``, ``Schedule``, ``Merge``, ``PostProcess``: the callables that factories return;
* ``TrackedRun``: what a tracker's ``start`` is told about the run it tracks;
* ``BenchError``: raise it to reject a value in one line (anything else a factory raises is
  reported as one line too, naming the recipe key, the component and the plugin);
* ``load_encoder_weights``, ``smp_imagenet``, ``HubFile``, ``UrlFile``: pretrained encoders from a local
  file, or from the network where there is one, the same way in every model;
* ``cached_synthetic_carvana``: the built-in synthetic set, for data sources that generate.

Everything else in ``harness`` is the harness's own business and may change; the built-in plugins
import only from here, and a test holds them to it.
"""

from harness.data.synthetic import cached_synthetic_carvana
from harness.errors import BenchError
from harness.recipe.hookspecs import Loss, Merge, PostProcess, Schedule, TrackedRun, hookimpl
from harness.recipe.weights import HubFile, UrlFile, load_encoder_weights, smp_imagenet

__all__ = [
    "BenchError", "HubFile", "Loss", "Merge", "PostProcess", "Schedule", "TrackedRun", "UrlFile",
    "cached_synthetic_carvana", "hookimpl", "load_encoder_weights", "smp_imagenet",
]
