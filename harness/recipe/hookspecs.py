"""The contract between segbench and its plugins.

A plugin is a Python module (one file in a plugins folder, or a package registered under the
``bench`` entry-point group) that implements some of the hooks below, marked with
``@hookimpl`` (``from harness.api import hookimpl``). Every hook returns a mapping from a component *name* to a *factory*; a recipe
refers to components by name and its TOML table supplies the factory's keyword arguments::

    [loss]
    name = "bce_dice"      # which factory
    per_image = true       # its keyword arguments

Rules that hold for every factory:

* Parameters the recipe may set are keyword parameters with a type hint and a default. segbench
  validates the recipe's table against the signature before any work starts, so a misspelt key or a
  wrong type is reported at load time, naming the file and the key, with the close matches.
* Parameters the harness supplies at run time (the model parameters for an optimizer, say) come
  first and positionally; they are listed with each hook.
* Names are global across plugins: two plugins registering the same name for the same kind is an
  error that names both plugins, never a silent override.

Hooks are called once, when the plugin manager starts; keep them cheap (return functions or classes,
build nothing heavy). They are grouped below by the part of the harness that consumes them, and each
names a built-in plugin to copy. The one table of kinds (recipe key, run-time arguments, when a
component is built) is ``harness.recipe.kinds``; plugin authors import from ``harness.api``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import pluggy

if TYPE_CHECKING:  # the contract names these types; importing torch here would slow `bench --help`
    import albumentations
    import numpy
    import torch

PROJECT_NAME = "bench"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

# The callables that factories return, as the harness calls them (shapes in each hook's docstring).
Loss = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]  # (logits, target) -> scalar
Schedule = Callable[[float], float]  # fractional epoch -> multiplier of the optimizer's base lr
Merge = Callable[[Sequence["numpy.ndarray"], Sequence[float]], "numpy.ndarray"]  # (maps, weights) -> map
PostProcess = Callable[["numpy.ndarray", "numpy.ndarray"], "numpy.ndarray"]  # (probability, mask) -> mask


@dataclass(frozen=True)
class TrackedRun:
    """What a tracker is told about the run it tracks (``bench_trackers``)."""

    name: str  # the run folder's name
    folder: Path
    params: dict[str, str]  # the resolved recipe, flattened: "train.epochs" -> "4"
    tags: dict[str, str] = field(default_factory=dict)  # recipe; study and trial for a tuning trial


# --------------------------------------------------------------------------------------------------
# Training: what `bench run` builds from a recipe's [model], [loss], [optimizer], [schedule] and
# [[callbacks]] tables (harness.engine).
# --------------------------------------------------------------------------------------------------


@hookspec
def bench_models() -> Mapping[str, Callable[..., torch.nn.Module]]:
    """Segmentation networks, by name.

    ``factory(**params) -> torch.nn.Module``. The module maps a float batch ``(N, 3, H, W)``,
    normalised as the recipe's ``input.normalize`` says and in its ``input.channels`` order (RGB
    unless it says ``bgr``), to logits ``(N, 1, H, W)`` at the same size.
    The harness pads or resizes inputs so that ``H`` and ``W`` are multiples of 32.

    A factory that accepts ``encoder_weights: str`` should resolve it with ``harness.api``'s
    ``load_encoder_weights`` (or ``smp_imagenet``) so that ``"none"``, a local file and ``"imagenet"`` behave the same in every
    model (and ``"imagenet"`` fails fast offline).

    Example: plugins/components/nets/smp_models.py (``smp``), registered by plugins/core.py.
    """


@hookspec
def bench_losses() -> Mapping[str, Callable[..., Loss]]:
    """Training losses, by name.

    ``factory(**params) -> loss``, where ``loss(logits, target) -> scalar tensor``; ``logits`` and
    ``target`` are ``(N, 1, H, W)``, ``target`` is float in {0, 1}, or in [0, 1] (soft along the
    edges) when the recipe says ``input.mask_interpolation = "linear"``. A loss that needs pixel weights
    (a border weight map, say) derives them from ``target`` itself.

    Example: plugins/components/losses.py (``bce_dice``), registered by plugins/alexander.py.
    """


@hookspec
def bench_optimizers() -> Mapping[str, Callable[..., torch.optim.Optimizer]]:
    """Optimizers, by name.

    ``factory(params, **hyperparams) -> torch.optim.Optimizer``; ``params`` (supplied by the harness)
    is the iterable of the model's trainable parameters. ``lr`` is the base learning rate that the
    schedule multiplies.

    Example: plugins/components/optimizers.py (``adam``), registered by plugins/core.py.
    """


@hookspec
def bench_schedules() -> Mapping[str, Callable[..., Schedule]]:
    """Learning-rate schedules, by name.

    ``factory(**params) -> multiplier``, where ``multiplier(epoch) -> float`` gives the factor applied to
    the optimizer's base ``lr``. ``epoch`` is fractional (``3.25`` is a quarter into epoch 3), and the
    harness calls it before every optimisation step, so one contract serves per-epoch schedules
    (use ``int(epoch)``) and per-step ones (use the fraction). Keeping schedules as multipliers means
    tuning ``optimizer.lr`` rescales the whole schedule.

    Example: plugins/components/schedules.py (``piecewise_cyclic``), registered by plugins/core.py.
    """


@hookspec
def bench_callbacks() -> Mapping[str, Callable[..., Any]]:
    """Training-loop callbacks (hard negative mining, ...), by name.

    ``factory(**params) -> callback``. A callback is an object with any of these methods; the
    engine calls the ones it has:

    * ``after_train_step(batch, loss: float, step: int) -> batch | None``: called after every
      optimisation step with the batch it used and its loss. Returning a batch asks the engine for one
      extra optimisation step on it (this is how hard negative mining replays a batch). The batch
      is ``(images, masks)`` as the model saw them; with gradient accumulation, the last micro-batch.
      The replay step itself is not reported back.
    * ``state_dict() -> dict`` and ``load_state_dict(state)``: what the callback must carry across an
      interrupted and resumed run (tensors, numbers, lists and dicts only: checkpoints are loaded with
      ``weights_only=True``).

    Example: plugins/components/mining.py (``hard_negative_mining``), registered by plugins/alexander.py.
    """


# --------------------------------------------------------------------------------------------------
# Data: where images come from ([data.source]) and how every image ([[preprocess]]) or every
# training image ([[augment]]) is transformed (harness.data, harness.engine).
# --------------------------------------------------------------------------------------------------


@hookspec
def bench_datasets() -> Mapping[str, Callable[..., Path]]:
    """Data sources, by name.

    ``factory(**params) -> Path`` of a data folder in the folders layout (``images/``, ``masks/``,
    optional ``test/`` and ``groups.csv``; see ``harness.data.folders``) or the Carvana layout
    (``train/``, ``train_masks/`` or ``train_masks.csv``, optional ``test/`` and ``metadata.csv``; see
    ``harness.data.carvana``). Anything that can be laid out either way (generated, downloaded,
    converted) is a dataset, and the two readers serve them all. A factory that generates data should cache it and return quickly the second time.

    Example: plugins/components/datasets.py (``synthetic``), registered by plugins/core.py.
    """


@hookspec
def bench_preprocessors() -> Mapping[str, Callable[..., albumentations.BasicTransform]]:
    """Deterministic preprocessing, by name (CLAHE, say).

    Same factory contract as ``bench_augmentations``, but applied to every image at training,
    validation and test time, identically, so a model never sees a distribution at test time that it
    did not train on.

    Example: plugins/components/augmentations.py (``clahe``), registered by plugins/alexander.py.
    """


@hookspec
def bench_augmentations() -> Mapping[str, Callable[..., albumentations.BasicTransform]]:
    """Training-time augmentations, by name.

    ``factory(**params) -> albumentations transform``. It is applied to ``image`` (uint8 HxWx3 RGB)
    and ``mask`` (uint8 HxW, values 0/1; float32 in [0, 1] when the recipe says
    ``input.mask_interpolation = "linear"``, which also sets the ``mask_interpolation`` of every
    transform that has one) together, in the order the recipe lists them, on training
    images only. A transform that must see the mask to change the image (recolouring only the car's
    pixels, say) is a ``DualTransform`` that reads it.

    Example: plugins/components/augmentations.py (``hflip``), registered by plugins/core.py.
    """


# --------------------------------------------------------------------------------------------------
# Ensemble: merging runs' maps and post-processing masks (`bench ensemble --merger/--post`,
# harness.ensemble).
# --------------------------------------------------------------------------------------------------


@hookspec
def bench_mergers() -> Mapping[str, Callable[..., Merge]]:
    """Ways to merge several models' probability maps into one, by name.

    ``factory(**params) -> merge``, where ``merge(maps, weights) -> map``: ``maps`` is a sequence of
    float32 ``(H, W)`` probability maps of one image, one per ensemble member, ``weights`` a sequence
    of floats of the same length; the result is one float32 ``(H, W)`` probability map.

    A merge may declare ``merge.pixelwise = True`` (an attribute on the callable the factory returns):
    "each output pixel is computed from the same pixel of the maps alone, by operations that give the
    same float32 for the same inputs whatever the arrays' shape and the pixel's position". Then the
    test pass of ``bench ensemble`` (``harness.ensemble.exact``) may call it on 1-D arrays: once on the
    256 levels for a lookup table, and per image on the pixels where the members disagree, which
    makes the test pass several times faster and gives the same submission bit for bit. Basic arithmetic (``+ - * /``,
    ``np.clip``, ``np.minimum``, ...) qualifies; leave it undeclared for anything that looks at
    neighbours or the whole map, or uses transcendental functions (``np.exp``, ``np.log``: their SIMD
    and scalar loops may round differently), and the harness merges whole maps as before.

    Example: plugins/components/merging.py (``mean``, which declares ``pixelwise``), registered by plugins/merge.py.
    """


@hookspec
def bench_postprocessors() -> Mapping[str, Callable[..., PostProcess]]:
    """Mask post-processing, by name (keep the largest component, convex hull, ...).

    ``factory(**params) -> postprocess``, where ``postprocess(probability, mask) -> mask``:
    ``probability`` is the float32 ``(H, W)`` map, ``mask`` the bool ``(H, W)`` mask thresholded from it;
    the result is a bool ``(H, W)`` mask.

    Example: plugins/components/merging.py (``convex_hull``), registered by plugins/merge.py.
    """


# --------------------------------------------------------------------------------------------------
# Tracking: where a run's parameters, curves and results are also sent (`bench run --track NAME`,
# `bench tune --track NAME`; harness.track). Not part of a recipe: tracking changes no result.
# --------------------------------------------------------------------------------------------------


@hookspec
def bench_trackers() -> Mapping[str, Callable[[], Any]]:
    """Experiment trackers, by name (MLflow, TensorBoard, ...).

    ``factory() -> tracker``, called when the command starts: a factory whose library is missing
    raises ``BenchError`` naming the extra to install, so the command stops before any training. The
    tracker's own settings come from its library's environment variables (``MLFLOW_TRACKING_URI``, say).
    A tracker is an object with these methods, which the harness calls in this order:

    * ``start(run: TrackedRun, state: dict | None) -> dict`` (``TrackedRun`` from ``harness.api``): open the tracked run for
      segbench's run ``run.name`` (its folder, its resolved recipe flattened to ``run.params``,
      ``run.tags``: the recipe, and for a tuning trial the study and trial number). ``state`` is what
      an earlier ``start`` returned for the same run folder (a resumed run): continue that tracked run.
      Return what identifies it (JSON: strings, numbers, lists, dicts); segbench keeps it in the run folder.
    * ``log_metrics(metrics: dict[str, float], step: int)``: numbers at a step. Each epoch of fold K
      comes as ``fold{K}/train_loss``, ``fold{K}/val_dice``, ... at step = the epoch, each once, even
      across a resume; the run's summary as ``oof_dice``, ``fold_dice_mean``, ... at step 0.
    * ``log_files(paths: list[Path])``: files to keep with the tracked run (``summary.json``, the
      recipe, the report page).
    * ``end(status: str)``: ``"finished"``; ``"failed"`` when the run stopped on an error (a resumed
      run starts again with ``start`` and the state), ``"pruned"`` for a tuning trial Optuna pruned.

    Any of them may raise: segbench then prints one line saying that tracking with it is off, and the
    run goes on without it.

    Example: plugins/components/trackers.py (``mlflow``, ``tensorboard``), registered by plugins/core.py.
    """
