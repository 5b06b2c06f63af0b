"""What a run decides from its data and its machine before it trains, kept in ``choices.json``.

Three recipe values leave a decision to the run, because the right answer depends on the data or the
machine and not on the recipe:

* ``input.size = "objects"``: the input scale, from the size of the objects in the training masks.
  Each image is scaled so that the median object is about ``input.object_size`` pixels across, and
  never enlarged: where the objects are already that small (nuclei of 10 pixels), the images keep
  their own resolution. A fixed short side (the quick profile's 64 before) shrank 10-pixel nuclei to
  3 and lost most of the Dice on real microscopy (0.34 against 0.93); no fixed scale serves both
  Carvana's 1,000-pixel cars and such nuclei.
* ``train.budget_seconds``: the optimizer steps a budget of seconds buys, from the seconds per step
  timed before training (``harness.engine.compute_choice``). Every recipe gets the same seconds; the
  steps follow from its speed, so a slow model gets fewer steps, as it would on the user's clock.
* ``model.encoder_weights = "auto"``: ImageNet weights where they can be had (cached, or downloaded),
  else training from scratch, said in one line and recorded.

The decisions are written once (``write_once_json``): a resumed run, the other processes of a
multi-process run and ``bench predict`` read them back instead of deciding again, so a run never
changes its input scale or its step count half way (a timing differs from one start to the next).
The recipe's own text, and so the run's folder name, does not depend on them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from rich.console import Console

from harness.data.dataset import DataFolder, read_mask
from harness.engine import compute_choice
from harness.engine.device import Compute
from harness.errors import BenchError
from harness.io import write_once_json
from harness.recipe.schema import Recipe
from harness.runs.folder import read_json

if TYPE_CHECKING:  # assembly.py holds a run's Choices: a runtime import would be circular
    from harness.engine.assembly import Assembly
    from harness.engine.distributed import Ranks

OBJECT_SIZE = 64  # input.object_size unset: the median object's size in input pixels
MASKS_MEASURED = 64  # masks read to find the objects' size: evenly spaced over the sorted training ids


@dataclass(frozen=True)
class Choices:
    """The decisions of one run; a field is None when its recipe value left nothing to decide."""

    input_scale: float | None = None  # input.size = "objects": the factor applied to every image (1: none)
    object_diameter: float | None = None  # the median object's equivalent diameter, in pixels of the image
    objects_measured: int | None = None  # connected components found in the masks measured
    seconds_per_step: float | None = None  # train.budget_seconds: the timing the steps follow from
    steps_per_epoch: int | None = None
    encoder_weights: str | None = None  # model.encoder_weights = "auto": "imagenet" or "none"
    encoder_note: str | None = None  # why "none", when auto could not load ImageNet weights

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Choices:
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})


def read_choices(path: Path) -> Choices | None:
    """The choices a run folder holds (a damaged file is one line naming it), or None when it holds none yet."""
    return Choices.from_dict(read_json(path)) if path.exists() else None


def keep_choices(path: Path, choices: Choices) -> Choices:
    """Write ``choices`` unless the run already holds some; return the ones the run holds."""
    return Choices.from_dict(write_once_json(path, asdict(choices)))


@dataclass(frozen=True)
class ObjectSize:
    diameter: float  # median equivalent diameter (sqrt(4 area / pi)) of the objects, in pixels
    objects: int
    masks: int


def object_size(dataset: DataFolder, limit: int = MASKS_MEASURED) -> ObjectSize:
    """The median size of the objects (8-connected components) in up to ``limit`` training masks."""
    ids = sorted(dataset.train)
    chosen = [ids[round(i)] for i in np.linspace(0, len(ids) - 1, min(limit, len(ids)))] if ids else []
    areas: list[np.ndarray] = []
    for image_id in chosen:
        count, _, stats, _ = cv2.connectedComponentsWithStats(read_mask(dataset, image_id), connectivity=8)
        areas.append(stats[1:count, cv2.CC_STAT_AREA])
    found = np.concatenate(areas) if areas else np.zeros(0)
    if not found.size:
        raise BenchError(f'input.size = "objects": the {len(chosen)} masks measured in {dataset.root} hold no '
                         "object; give input.size a number or [width, height]")
    return ObjectSize(float(np.median(np.sqrt(4 * found / np.pi))), int(found.size), len(chosen))


def input_scale(measured: ObjectSize, wanted: int) -> float:
    """The factor that brings the median object to about ``wanted`` pixels, never above 1."""
    return round(min(1.0, wanted / measured.diameter), 4)


def scale_for(recipe: Recipe, dataset: DataFolder) -> Choices:
    """``input.size = "objects"``: the input scale of this data, with the measurement it follows from."""
    if recipe.input.size != "objects":
        return Choices()
    measured = object_size(dataset)
    return Choices(input_scale=input_scale(measured, recipe.input.object_size or OBJECT_SIZE),
                   object_diameter=round(measured.diameter, 1), objects_measured=measured.objects)


def steps_for(budget_seconds: float, seconds_per_step: float, folds: int, epochs: int) -> int:
    """Optimizer steps per epoch that ``budget_seconds`` buys for the whole run (at least one)."""
    return max(1, int(budget_seconds / (seconds_per_step * folds * epochs)))


def decide_from_data(parts: Assembly, dataset: DataFolder, ranks: Ranks | None, console: Console) -> Choices:
    """The decisions that follow from the data and the network (see the module docstring): the input
    scale of ``input.size = "objects"``, the weights of ``model.encoder_weights = "auto"``. Under
    torchrun, rank 0's."""
    if ranks is not None and not ranks.main:
        return Choices.from_dict(ranks.from_main(None))
    recipe, choices = parts.recipe, scale_for(parts.recipe, dataset)
    if recipe.model.params.get("encoder_weights") == "auto":
        weights, note = imagenet_or_none(parts)
        choices = replace(choices, encoder_weights=weights, encoder_note=note)
        if note:
            console.print(f"[yellow]warning:[/] {note}", highlight=False)
    return choices if ranks is None else Choices.from_dict(ranks.from_main(asdict(choices)))


def imagenet_or_none(parts: Assembly) -> tuple[str, str | None]:
    """``model.encoder_weights = "auto"``: "imagenet" when the model builds with them (from the cache or
    downloaded), else "none" and the line that says why the run trains from scratch."""
    params = {**parts.recipe.model.params, "encoder_weights": "imagenet"}
    try:
        parts.build("model", "model", parts.recipe.model, params=params)
    except BenchError as error:
        return "none", (f'model.encoder_weights = "auto": training from scratch, no ImageNet weights could be '
                        f"loaded ({error})")
    return "imagenet", None


def decide_steps(parts: Assembly, compute: Compute, decision: compute_choice.Decision | None, height: int,
                 width: int, k: int, ranks: Ranks | None) -> Choices:
    """The choices with the steps per epoch that ``train.budget_seconds`` buys at the seconds per step
    of the chosen compute (timed for the choice, or now for a fixed one; cached per machine)."""
    train, choices = parts.recipe.train, parts.choices
    if train.budget_seconds is None or train.steps_per_epoch is not None:
        return choices
    if ranks is not None and not ranks.main:
        return Choices.from_dict(ranks.from_main(None))
    if decision is None:
        workload = parts.timing_workload(height, width, train.batch_size // (ranks.world if ranks else 1))
        decision = compute_choice.choose(compute.device, compute.precision, compute.channels_last, workload)
    seconds = decision.step_seconds[decision.chosen.name] * train.accumulate
    choices = replace(choices, seconds_per_step=round(seconds, 4),
                             steps_per_epoch=steps_for(train.budget_seconds, seconds, k, train.epochs))
    return choices if ranks is None else Choices.from_dict(ranks.from_main(asdict(choices)))
