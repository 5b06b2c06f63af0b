"""Assembling a recipe into the things that train: its data, input fit, transforms, loaders, model,
loss, optimizer, schedule, callbacks, and the compute it runs on.

``bench run``, ``bench benchmark`` and the ensemble's predictions all build a recipe the same way,
from here. Every component is built through ``harness.recipe.components.build`` under the recipe key
that chose it, so a factory that raises (a plugin's bug, or a value that only torch rejects) is one
line naming that key, the component and its plugin.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import albumentations as A
import torch
from rich.console import Console

from harness.data.dataset import DataFolder
from harness.data.geometry import CV2_INTERPOLATIONS, Fit, crop_shape
from harness.data.layouts import open_data
from harness.data.loading import Normalise, ShapeBatches, padded_batch
from harness.engine import compute_choice
from harness.engine.choices import Choices
from harness.engine.device import Compute, set_tf32
from harness.errors import BenchError
from harness.recipe import components
from harness.recipe.phases import Phase, builds_optimizer, epoch_table, phase_at, phases_of
from harness.recipe.plugins import Plugins
from harness.recipe.schema import ComponentSpec, Recipe

CACHE_BYTES = 4 << 30  # decoded training images kept in memory when they fit (Carvana needs 37 GB)


@dataclass(frozen=True)
class Assembly:
    """A resolved recipe and the plugins that supply its components."""

    recipe: Recipe
    plugins: Plugins
    choices: Choices = Choices()  # what the run decided from its data and machine (harness.engine.choices)

    def build(self, kind: str, key: str, spec: ComponentSpec, *runtime_args: Any,
              params: dict[str, Any] | None = None) -> Any:
        """The component of ``kind`` that the recipe's ``key`` names (``params`` replace its own)."""
        component = self.plugins.get(kind, spec.name)
        return components.build(component, spec.params if params is None else params, *runtime_args,
                                where=f"{self.recipe.name}: key '{key}'")

    def model(self, pretrained: bool = True) -> torch.nn.Module:
        """The network; without pretrained weights when only its shape and speed matter."""
        return self.build("model", "model", self.recipe.model, params=self.model_params(pretrained))

    def model_params(self, pretrained: bool) -> dict[str, Any]:
        params = dict(self.recipe.model.params)
        if params.get("encoder_weights") == "auto" and self.choices.encoder_weights is not None:
            params["encoder_weights"] = self.choices.encoder_weights
        if not pretrained and "encoder_weights" in params:
            params["encoder_weights"] = "none"
        return params

    def optimizer(self, parameters, phase: Phase | None = None) -> torch.optim.Optimizer:
        """The optimizer of ``phase`` (default: the recipe's first), built over ``parameters``."""
        phase = phase or phases_of(self.recipe)[0]
        return self.build("optimizer", phase.optimizer_key, phase.optimizer, parameters)

    def optimizers(self) -> Callable[[int, Any], torch.optim.Optimizer]:
        """``(epoch, parameters) -> optimizer``: the optimizer of the phase in force at ``epoch``."""
        phases = phases_of(self.recipe)
        return lambda epoch, parameters: self.optimizer(parameters, phase_at(phases, epoch))

    def builds_optimizer(self) -> Callable[[int], bool]:
        """``epoch -> bool``: the epoch starts with a fresh optimizer (a phase's, or vladimir's every epoch)."""
        phases = phases_of(self.recipe)
        return lambda epoch: builds_optimizer(self.recipe, phases, epoch)

    def base_lr(self, phase: Phase) -> float:
        """The lr ``phase``'s optimizer is built with, which the schedule multiplies."""
        return self.optimizer([torch.nn.Parameter(torch.zeros(1))], phase).param_groups[0]["lr"]

    def epoch_table(self) -> list[dict]:
        """The lr, phase and optimizer of every epoch, as the engine will train them (``bench show``)."""
        return epoch_table(self.recipe, self.schedule(), self.base_lr)

    def loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return self.build("loss", "loss", self.recipe.loss)

    def schedule(self) -> Callable[[float], float]:
        return self.build("schedule", "schedule", self.recipe.schedule)

    def callbacks(self) -> list[Any]:
        return [self.build("callback", f"callbacks.{i}", spec) for i, spec in enumerate(self.recipe.callbacks)]

    def transforms(self, key: str) -> A.Compose | None:
        """``preprocess`` or ``augment``: the recipe's transforms in order, or None when it lists none.

        ``input.mask_interpolation``, when set, is how every augmentation that resamples the mask does it
        (albumentations' ``Compose(mask_interpolation=...)`` sets it on each transform that has one)."""
        kind = {"preprocess": "preprocessor", "augment": "augmentation"}[key]
        return self._compose(kind, key, getattr(self.recipe, key))

    def augment_phases(self) -> list[tuple[int, A.Compose | None]]:
        """``(first epoch, augmentation)`` of every phase, for ``harness.data.loading.PhasedAugment``."""
        return [(phase.start, self._compose("augmentation", phase.augment_key, phase.augment))
                for phase in phases_of(self.recipe)]

    def _compose(self, kind: str, key: str, specs) -> A.Compose | None:
        if not specs:
            return None
        how = self.recipe.input.mask_interpolation if kind == "augmentation" else None
        return A.Compose([self.build(kind, f"{key}.{i}", spec) for i, spec in enumerate(specs)],
                         mask_interpolation=None if how is None else CV2_INTERPOLATIONS[how])

    def data_root(self) -> Path:
        if self.recipe.data.root:
            return Path(self.recipe.data.root)
        return self.build("dataset", "data.source", self.recipe.data.source)

    def dataset(self) -> DataFolder:
        """The recipe's data, opened and checked in its layout with the ``[data]`` settings."""
        data = self.recipe.data
        return open_data(self.data_root(), data.layout or "auto", data.images or "standard", data.mask_suffix,
                         data.groups, data.group_pattern)

    def fit_for(self, dataset: DataFolder) -> Fit:
        """The recipe's fit, checked against every image size of the data."""
        fit = recipe_fit(self.recipe, self.choices)
        for height, width in set(dataset.sizes.values()):
            problem = fit.check(height, width)
            if problem:
                raise BenchError(f"{problem} (data: {dataset.root})")
        return fit

    def loader_workers(self, compute: Compute) -> int:
        """``auto``: no workers on a CPU (the model needs every core), up to 8 feeding a GPU."""
        if self.recipe.train.workers != "auto":
            return self.recipe.train.workers
        return 0 if compute.device.type == "cpu" else min(8, os.cpu_count() or 1)

    def timing_workload(self, height: int, width: int, batch_size: int) -> compute_choice.Workload:
        """The recipe's training step as ``harness.engine.compute_choice`` times it: its model without
        pretrained weights (speed does not depend on their values), loss and optimizer, at its input
        size and batch."""
        recipe, model_params = self.recipe, self.model_params(pretrained=False)
        return compute_choice.Workload(
            build_model=lambda: self.model(pretrained=False),
            make_optimizer=self.optimizer,
            loss=self.loss(),
            batch_size=batch_size, height=height, width=width,
            identity={"model": [recipe.model.name, model_params], "loss": [recipe.loss.name, recipe.loss.params],
                      "optimizer": [recipe.optimizer.name, recipe.optimizer.params],
                      **({} if recipe.train.tf32 is None else {"tf32": recipe.train.tf32})},  # TF32 changes GPU speed
        )

    def choose_compute(self, device: torch.device, workload: compute_choice.Workload,
                       console: Console) -> tuple[Compute, compute_choice.Decision | None]:
        """The recipe's precision and memory format on this device: as fixed, or the fastest measured.

        Printed before anything trains (the decision with its timings, or a warning for a fixed choice
        known to be far slower), and the decision is what ``environment.json`` records.
        """
        set_tf32(device, self.recipe.train.tf32)
        precision, channels_last = self.recipe.train.precision, self.recipe.train.channels_last
        if precision != "auto" and channels_last != "auto":
            warning = compute_choice.explicit_warning(device, precision, channels_last, workload)
            if warning:
                console.print(f"[yellow]warning:[/] {warning}", highlight=False)
            return Compute(device, precision, channels_last), None
        decision = compute_choice.choose(device, precision, channels_last, workload)
        console.print(f"compute: {decision.describe()}", highlight=False)
        return Compute(device, decision.chosen.precision, decision.chosen.channels_last), decision


def recipe_fit(recipe: Recipe, choices: Choices = Choices()) -> Fit:
    """``input.size``: a fixed [width, height], a short side (one number), ``original``, or ``objects``
    (the scale the run chose: padded at the image's own size where it chose none); with the recipe's
    padding side, mask resampling and logits upsampling (unset: centre, nearest, false)."""
    size, spec = recipe.input.size, recipe.input
    options = dict(pad_side=spec.pad_side or "centre", mask_interpolation=spec.mask_interpolation or "nearest",
                   align_corners=bool(spec.align_corners))
    if size == "objects":
        if choices.input_scale is None:
            raise BenchError(f'{recipe.name}: input.size = "objects" is chosen by a run from its data; this run '
                             "folder has no choices.json")
        if choices.input_scale < 1:
            return Fit("resize", None, spec.pad_mode, scale=choices.input_scale, **options)
        return Fit("pad", None, spec.pad_mode, **options)
    if isinstance(size, int):
        return Fit(spec.fit, None, spec.pad_mode, short_side=size, **options)
    return Fit(spec.fit, None if size == "original" else tuple(size), spec.pad_mode, **options)


def recipe_normalise(recipe: Recipe) -> Normalise:
    """``input.normalize`` and ``input.channels``: what every batch goes through on the device."""
    return Normalise(recipe.input.normalize, recipe.input.channels or "rgb")


def loader(samples, compute: Compute, workers: int, batch_size: int, sampler=None) -> torch.utils.data.DataLoader:
    """Training batches, padded where the samples' shapes differ (``padded_batch``)."""
    return torch.utils.data.DataLoader(
        samples, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=padded_batch,
        pin_memory=compute.device.type == "cuda", persistent_workers=workers > 0,
    )


def shape_loader(samples, compute: Compute, workers: int, batches: ShapeBatches) -> torch.utils.data.DataLoader:
    """Prediction batches of one input shape each (``ShapeBatches``)."""
    return torch.utils.data.DataLoader(
        samples, batch_sampler=batches, num_workers=workers,
        pin_memory=compute.device.type == "cuda", persistent_workers=workers > 0,
    )


def largest_input(fit: Fit, sizes: Iterable[tuple[int, int]], crop: tuple[int, int] | None) -> tuple[int, int]:
    """(height, width) of the largest training input (a crop where the recipe crops): what a step is
    timed and its memory measured at, so that the largest batch fits where the timing said it would."""
    shapes = {crop_shape(crop, *fit.input_shape(height, width)) for height, width in set(sizes)}
    return max(shapes, key=lambda shape: (shape[0] * shape[1], shape))


def recipe_crop(recipe: Recipe) -> tuple[int, int] | None:
    """``input.crop`` as (width, height), or None: training sees whole inputs."""
    crop = recipe.input.crop
    return (crop, crop) if isinstance(crop, int) else crop
