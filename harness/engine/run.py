"""``bench run``: a recipe, k-fold, into a run folder that ``bench compare`` and ``bench ensemble`` read.

The run folder's layout belongs to ``harness.runs.folder`` (and is documented in
``docs/results.md``). Every stage leaves a marker when it finishes (each fold's, the test
predictions', and last the summary, which marks the run complete), so ``--resume`` skips finished
work and redoes only the interrupted stage; within a fold, training resumes from the last finished
epoch.

Folds may train in several processes at once (``--folds``; ``harness.distribute`` starts them on
devices and clusters): each process trains the folds it is given into the one run folder, and the
process that finds every fold finished assembles the run (test prediction, summary). Assembly is a
function of the finished folds alone, and its markers are written once (``write_once_json``), so two
processes that both assemble write the same bytes, with no lock.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from rich.console import Console

from harness.data.dataset import DataFolder, data_hash, wxh
from harness.data.folders import ONE_PER_IMAGE, UNGROUPED
from harness.data.geometry import Fit
from harness.data.image_files import ImageFile
from harness.data.loading import (CachedImage, EpochSampler, Images, PhasedAugment, PredictionSamples, ShapeBatches,
                                  TrainingSamples, shapes_of_test_images)
from harness.data.splits import Splits, read_splits, splits_for, write_splits
from harness.engine import compute_choice, distributed
from harness.engine.assembly import (CACHE_BYTES, Assembly, largest_input, loader, recipe_crop, recipe_normalise,
                                     shape_loader)
from harness.engine.choices import Choices, decide_from_data, decide_steps, keep_choices, read_choices
from harness.engine.device import Compute, check_precision, resolve_device
from harness.engine.environment import describe_environment
from harness.engine.inference import Predictor, predict_images
from harness.engine.outputs import MapStore
from harness.engine.predict import TTA
from harness.engine.progress import ConsoleReporter, WorkLeft
from harness.engine.pseudo import Joined, PseudoLabelled, Selection, select_confident
from harness.engine.train import FoldSetup, Validation, train_fold
from harness.errors import BenchError
from harness.io import atomic_write_json, atomic_write_text, ensure_room, write_once_json
from harness.recipe.plugins import Plugins
from harness.recipe.schema import Recipe
from harness.runs.folder import FoldFolder, RunFolder, read_json
from harness.runs.probabilities import ProbabilityMaps, estimated_bytes


class RunMonitor(Protocol):
    """Watches a run's first stage as it trains; raising from any method stops the run.

    ``bench tune`` reports to Optuna through one, and ``--estimate`` is one that stops at the
    estimate. ``estimated`` is called once, a few steps in, with the estimated duration of the run.
    While any fold is left to train, ``fold_done`` is called for every fold in order, folds finished
    before a resume included; a run found complete, or with every fold trained, calls nothing.
    """

    def estimated(self, seconds: float) -> None: ...
    def epoch_done(self, fold: int, record: dict[str, float]) -> None: ...
    def fold_done(self, fold: int, folder: FoldFolder) -> None: ...


class Monitors:
    """Several monitors as one (a tuning trial's pruner and its trackers), each told everything in turn."""

    def __init__(self, *monitors: RunMonitor):
        self.monitors = monitors

    def estimated(self, seconds: float) -> None:
        for monitor in self.monitors:
            monitor.estimated(seconds)

    def epoch_done(self, fold: int, record: dict[str, float]) -> None:
        for monitor in self.monitors:
            monitor.epoch_done(fold, record)

    def fold_done(self, fold: int, folder: FoldFolder) -> None:
        for monitor in self.monitors:
            monitor.fold_done(fold, folder)


@dataclass(frozen=True)
class RunRequest:
    recipe: Recipe
    results: Path
    name: str | None = None
    resume: bool = False
    device: str | None = None
    estimate_only: bool = False
    monitor: RunMonitor | None = None
    folds: tuple[int, ...] | None = None  # train only these (another process trains the others); None: all


@dataclass(frozen=True)
class _Stage:
    """What every step of one stage (the run, or its pseudo-label stage) works with."""

    recipe: Recipe
    parts: Assembly
    compute: Compute
    dataset: DataFolder
    fit: Fit
    splits: Splits
    folder: RunFolder
    console: Console
    ranks: distributed.Ranks | None = None  # the processes that train each fold together (--ddp)

    @property
    def main(self) -> bool:
        return self.ranks is None or self.ranks.main


class _EstimateReached(Exception):
    """Raised by ``_StopAtEstimate``: not an error, the end of an ``--estimate`` run."""


class _StopAtEstimate:
    def estimated(self, seconds: float) -> None:
        raise _EstimateReached

    def epoch_done(self, fold: int, record: dict[str, float]) -> None:
        pass

    def fold_done(self, fold: int, folder: FoldFolder) -> None:
        pass


def run_id(recipe: Recipe) -> str:
    """``<recipe name>-<hash of the resolved recipe>``: the same recipe finds its own folder again."""
    return f"{recipe.name}-{hashlib.sha256(recipe.to_toml().encode()).hexdigest()[:8]}"


def run(request: RunRequest, plugins: Plugins, console: Console) -> Path:
    """Run (or resume, or find complete) a recipe; return the run folder.

    With ``request.folds``, only those folds train, and the run is assembled only when every fold of
    the stage is found finished: the folder may be left incomplete, for another process to finish.
    Under torchrun, every process runs this with the others, each fold with DistributedDataParallel
    (``harness.engine.distributed``).
    """
    recipe, folder = run_recipe(request), run_folder(request)
    check_folds(request.folds, recipe.folds.k)
    ranks = distributed.ranks_from_environment()
    device = resolve_device(request.device)
    if ranks is not None:
        device = ranks.device(device)
        ranks.split_batch(recipe.train.batch_size)
        distributed.start(ranks, device)
        console = console if ranks.main else Console(quiet=True)
    if _complete(folder, recipe):
        console.print(f"{folder.path} is already complete; nothing to do", highlight=False)
        return folder.path
    joins = _joins(request)
    check_startable(request)
    if ranks is not None:
        ranks.barrier()  # every rank has looked at the folder before rank 0 creates it
    parts = Assembly(recipe, plugins)
    check_precision(device, recipe.train.precision)
    dataset = parts.dataset()
    if dataset.grouping == ONE_PER_IMAGE:
        console.print(f"[yellow]warning:[/] {dataset.root}: {UNGROUPED}", highlight=False)
    if recipe.pseudo_label is not None and not dataset.test:
        test_dir = dataset.test_dir
        raise BenchError(f"[pseudo_label] needs unlabelled test images, and {test_dir} has none; "
                         f"remove the [pseudo_label] table or use data with a {test_dir.name}/ folder")
    # before _prepare creates the run folder: a bad folds file or view leaves nothing behind
    folds = recipe.folds
    splits = splits_for(dataset, folds.method, folds.k, folds.seed, view=folds.view, file=folds.file)
    kept = read_choices(folder.choices) if joins else None
    choices = kept or decide_from_data(parts, dataset, ranks, console)
    parts = replace(parts, choices=choices)
    fit = parts.fit_for(dataset)
    height, width = largest_input(fit, dataset.sizes.values(), recipe_crop(recipe))
    compute, decision = _choose_compute(parts, device, height, width, ranks, console)
    if kept is None:
        choices = decide_steps(parts, compute, decision, height, width, splits.k, ranks)
    if request.estimate_only:
        parts = replace(parts, choices=choices)
        console.print(f"budget: {describe_budget(parts, splits, dataset, height, width, ranks)}", highlight=False)
        with tempfile.TemporaryDirectory() as scratch:
            stage = _Stage(recipe, parts, compute, dataset, fit, splits, RunFolder(Path(scratch)), console)
            try:
                _train_folds(stage, monitor=_StopAtEstimate(), estimate_only=True)
            except _EstimateReached:
                console.print("stopped after the estimate (--estimate)", highlight=False)
        return folder.path
    stage = _Stage(recipe, parts, compute, dataset, fit, splits, folder, console, ranks)
    if stage.main:
        _prepare(stage, decision, joins)
        choices = keep_choices(folder.choices, choices)  # a process that started first decided for all
    if ranks is not None:
        ranks.barrier()
        choices = Choices.from_dict(ranks.from_main(asdict(choices)))
    stage = replace(stage, parts=replace(parts, choices=choices))
    console.print(f"budget: {describe_budget(stage.parts, splits, dataset, height, width, ranks)}", highlight=False)
    console.print(f"run {folder.path} on {compute.describe()}", highlight=False)
    if not folder.complete():
        assembled = _train_and_assemble(stage, request.monitor, request.folds)
        if not assembled or request.folds is not None:  # with --folds, one stage a call: the next is
            return folder.path                           # started again by whoever runs the folds
    if recipe.pseudo_label is not None:
        _pseudo_stage(stage, request.folds)
    return folder.path


def _choose_compute(parts: Assembly, device, height: int, width: int, ranks: distributed.Ranks | None,
                    console: Console) -> tuple[Compute, compute_choice.Decision | None]:
    """The compute of ``Assembly.choose_compute``; under torchrun, rank 0's choice on every rank."""
    workload = parts.timing_workload(height, width, parts.recipe.train.batch_size // (ranks.world if ranks else 1))
    if ranks is None:
        return parts.choose_compute(device, workload, console)
    compute, decision = parts.choose_compute(device, workload, console) if ranks.main else (None, None)
    precision, channels_last = ranks.from_main((compute.precision, compute.channels_last) if ranks.main else None)
    return Compute(device, precision, channels_last), decision


def _joins(request: RunRequest) -> bool:
    """The run may go on in a folder that exists: resumed, or a process of a multi-process run."""
    return request.resume or request.folds is not None


def check_startable(request: RunRequest) -> None:
    """An unfinished run folder is resumed or joined, never started over by mistake."""
    folder = run_folder(request)
    if folder.path.exists() and not _joins(request) and not request.estimate_only:
        if not _complete(folder, run_recipe(request)):
            raise BenchError(f"{folder.path} holds an unfinished run; pass --resume to finish it, or remove the folder")


def run_recipe(request: RunRequest) -> Recipe:
    """The recipe as the run keeps it: ``[tune]`` says how to search, not what to run, so the run's
    folder, hash and ``recipe.toml`` leave it out."""
    return request.recipe.model_copy(update={"tune": None})


def run_folder(request: RunRequest) -> RunFolder:
    return RunFolder(request.results / (request.name or run_id(run_recipe(request))))


def stage_to_train(folder: RunFolder, recipe: Recipe) -> RunFolder | None:
    """The stage whose folds train next: the run itself, then its pseudo-label stage; None once the
    run is complete."""
    if _complete(folder, recipe):
        return None
    return folder if not folder.complete() else folder.pseudo


def check_joinable(folder: RunFolder, recipe: Recipe) -> None:
    """A run folder that exists was made by this very recipe (resumed, or joined by another process)."""
    if folder.recipe_toml.exists() and folder.recipe_toml.read_text() != recipe.to_toml():
        raise BenchError(f"{folder.recipe_toml} differs from this recipe: the folder holds another recipe's "
                         "folds. Resume or join it with the same recipe, profiles and --set, or pass another "
                         "--name")


def check_folds(folds: tuple[int, ...] | None, k: int) -> None:
    """``--folds`` names folds the recipe has (0 to k-1), before anything is written."""
    for fold in folds or ():
        if not 0 <= fold < k:
            raise BenchError(f"--folds {fold}: the recipe has {k} folds, numbered 0 to {k - 1}")


def _train_and_assemble(stage: _Stage, monitor: RunMonitor | None, only: tuple[int, ...] | None,
                        extra: PseudoLabelled | None = None, pseudo_images: int | None = None) -> bool:
    """Train the stage's folds (``only`` those, when given); assemble the stage when every fold is
    finished. Whether it was assembled: when not, another process is still training folds."""
    models = _train_folds(stage, monitor=monitor, extra=extra, only=only)
    unfinished = [fold.index for fold in models if not fold.done()]  # the same on every rank: each fold ended
    if unfinished:
        left = f"fold{'s' if len(unfinished) > 1 else ''} {', '.join(map(str, unfinished))}"
        stage.console.print(f"{stage.folder.path}: {len(models) - len(unfinished)} of {len(models)} folds finished, "
                            f"{left} still to train (--folds). The process that finishes the last fold assembles "
                            "the run", highlight=False)
        return False
    if stage.main:
        _predict_test(stage, models)
        _summarise(stage, pseudo_images=pseudo_images)
    if stage.ranks is not None:
        stage.ranks.barrier()  # the others wait for rank 0 to assemble the stage
    return True


def _complete(folder: RunFolder, recipe: Recipe) -> bool:
    """Every stage the recipe asks for is done (the pseudo stage comes last; see ``_pseudo_stage``)."""
    if not folder.complete():
        return False
    return recipe.pseudo_label is None or folder.pseudo.complete() or _nothing_selected(folder)


def _nothing_selected(folder: RunFolder) -> bool:
    path = folder.pseudo.selection
    return path.exists() and not read_json(path)["images"]


def _pseudo_stage(first: _Stage, only: tuple[int, ...] | None) -> None:
    """vladimir's second stage (``harness.engine.pseudo``): the same folds trained again, from scratch,
    with the confident test images added to every fold's training side, into the run's pseudo stage.

    The selection is written before any training and reused on resume, so an interrupted stage
    finishes with the images it started with (and every process training its folds with the same
    ones). When no image qualifies, the stage would only repeat the first one: the empty selection is
    recorded and the stage is skipped, with a warning.
    """
    recipe, folder = first.recipe, first.folder
    stage = replace(first, folder=folder.pseudo)
    selection_path = stage.folder.selection
    if not selection_path.exists() and stage.main:
        chosen = select_confident(folder.open_maps("test"), recipe.pseudo_label, recipe.predict.threshold)
        stage.folder.path.mkdir(exist_ok=True)
        write_once_json(selection_path, chosen.to_json())
    if stage.ranks is not None:
        stage.ranks.barrier()  # rank 0 has written it
    selection = Selection.from_json(read_json(selection_path))
    if not selection.images:
        first.console.print(f"[yellow]warning:[/] pseudo labelling skipped: no test image has at most "
                            f"{recipe.pseudo_label.max_uncertain_share} of its pixels uncertain (recorded in "
                            f"{selection_path})", highlight=False)
        return
    first.console.print(f"pseudo labelling: {len(selection.images)} of {selection.candidates} test images "
                        f"added to training (rule in {selection_path})", highlight=False)
    extra = PseudoLabelled(first.dataset, selection.images, folder.test_maps, recipe.predict.threshold,
                           first.parts.transforms("preprocess"))
    if not _train_and_assemble(stage, None, only, extra=extra, pseudo_images=len(selection.images)):
        return
    before, after = (f.read_summary().oof_dice for f in (folder, stage.folder))
    first.console.print(f"pseudo-label stage: out-of-fold Dice {after:.4f} (first stage {before:.4f}) in "
                        f"{stage.folder.path}", highlight=False)


def _prepare(stage: _Stage, decision: compute_choice.Decision | None, joins: bool) -> None:
    """Create the run folder, or check that the one being resumed (or joined by another process of
    the run) was made by this very recipe.

    Two processes that start together may both create it: each file is written whole, and the two
    write the same recipe and folds (``environment.json``, the compute each measured, is the last one's).
    """
    folder, recipe = stage.folder, stage.recipe
    if joins and folder.recipe_toml.exists():
        check_joinable(folder, recipe)
        if read_splits(folder.splits).hash != stage.splits.hash:
            raise BenchError(f"{folder.splits} differs from this data's folds; the data (or the folds file) changed "
                             "since the run started")
        return
    folder.path.mkdir(parents=True, exist_ok=True)
    write_splits(stage.splits, folder.splits)
    environment = describe_environment(stage.compute, decision)
    environment["encoder_weights"] = encoder_start(stage.parts)  # "auto" decided: choices.json says why
    if stage.ranks is not None:
        environment["ddp"] = {"processes": stage.ranks.world, "backend": torch.distributed.get_backend()}
    atomic_write_json(folder.environment, environment)
    atomic_write_text(folder.recipe_toml, recipe.to_toml())


def _allocate_maps(stage: _Stage) -> ProbabilityMaps:
    """Create the out-of-fold store, and the test store with it (unless ``predict.test = false``), once
    the disk has room for both by estimate (``harness.runs.probabilities.estimated_bytes``): a disk too
    small for the test maps stops the run before its first fold rather than after its last."""
    dataset, folder = stage.dataset, stage.folder
    predicts_test = dataset.test and stage.recipe.predict.test is not False
    test_shapes = shapes_of_test_images(dataset) if predicts_test else {}
    oof_shapes = {i: dataset.sizes[i] for i in dataset.train}
    if not folder.oof_maps.exists():
        ensure_room(folder.path, estimated_bytes(oof_shapes) + estimated_bytes(test_shapes),
                    "its out-of-fold and test probability maps")
    if test_shapes:
        ProbabilityMaps.create(folder.test_maps, test_shapes)
    return ProbabilityMaps.create(folder.oof_maps, oof_shapes)


def _train_folds(stage: _Stage, monitor: RunMonitor | None = None, extra: PseudoLabelled | None = None,
                 estimate_only: bool = False, only: tuple[int, ...] | None = None) -> list[FoldFolder]:
    """Train every unfinished fold (of ``only``, when given); return every fold's folder, each
    finished one holding its best weights.

    ``extra`` (pseudo-labelled images) joins the training side of every fold, never validation.
    """
    recipe, dataset, splits = stage.recipe, stage.dataset, stage.splits
    folds = [stage.folder.fold(f) for f in range(splits.k)]
    pending = [f for f in range(splits.k) if not folds[f].done() and (only is None or f in only)]
    # an estimate stops before the first validation: it needs no store (at Carvana scale, 12 GB of disk)
    oof = None if estimate_only else _allocate_maps(stage)
    if pending:
        images = Images(dataset, dataset.train, stage.parts.transforms("preprocess"), CACHE_BYTES)
        extra_idx = list(range(len(images), len(images) + len(extra))) if extra is not None else []
        if extra is not None:
            images = Joined(images, extra)
        batch = recipe.train.batch_size
        largest_fold = max(len(splits.training_images(dataset, f)) for f in pending) + len(extra_idx)
        val_images = len(dataset.train) // splits.k
        work = WorkLeft(
            folds=len(pending), epochs=recipe.train.epochs,
            steps_per_epoch=-(-_samples_per_epoch(stage.parts, largest_fold) // batch),
            batch_size=batch, val_images_per_fold=val_images,
            val_images_per_epoch=min(val_images, recipe.train.validate_images or val_images),
            test_images=len(dataset.test) if recipe.predict.test is not False else 0,
            tta_variants=len(TTA[recipe.predict.tta]), k=splits.k,
        )
        reporter = ConsoleReporter(stage.console, work, on_estimate=monitor.estimated if monitor else None)
        watched = reporter if monitor is None else _Watched(reporter, monitor)
        training = _Training(images, {image_id: i for i, image_id in enumerate(dataset.train)},
                             PhasedAugment(stage.parts.augment_phases()), oof, extra_idx)
        try:
            for fold in range(splits.k):
                if fold in pending:
                    setup = _fold_setup(stage, training, fold)
                    if fold == pending[0]:
                        _warn_unsynchronised_batch_norm(stage, setup.model)
                    summary = train_fold(setup, watched)
                    if stage.main:  # the other ranks of a --ddp run have no summary: rank 0 wrote it
                        stage.console.print(f"fold {fold + 1}/{splits.k}: val Dice {summary['val_dice']:.4f} with "
                                            f"epoch {summary['best_epoch'] + 1}'s weights "
                                            f"({_KEPT[summary['checkpoint']]})", highlight=False)
                if monitor is not None and only is None:
                    monitor.fold_done(fold, folds[fold])
        finally:
            reporter.close()
    return folds


def _warn_unsynchronised_batch_norm(stage: _Stage, model: torch.nn.Module) -> None:
    """Under --ddp on the CPU, where PyTorch has no SyncBatchNorm, say that batch norm sees slices."""
    if stage.ranks is not None and stage.compute.device.type == "cpu" and distributed.has_batch_norm(model):
        stage.console.print(f"[yellow]warning:[/] the model has batch norm, and on the CPU each of the "
                            f"{stage.ranks.world} processes normalises with the statistics of its own "
                            f"{stage.recipe.train.batch_size // stage.ranks.world} images (PyTorch has no "
                            "SyncBatchNorm there); on CUDA the whole batch's are used", highlight=False)


_KEPT = {"best_val_dice": "best val Dice", "best_val_loss": "lowest val loss", "last": "the last epoch"}


@dataclass(frozen=True)
class _Training:
    """What every fold of a stage trains and validates on: one image cache for all folds."""

    images: Images | Joined
    position: dict[str, int]  # training image id -> index in ``images``
    augment: PhasedAugment
    oof: ProbabilityMaps | None
    extra_idx: list[int]  # indices of pseudo-labelled images, on every fold's training side


class _Watched:
    """The console reporter, with every finished epoch also shown to the run's monitor."""

    def __init__(self, reporter: ConsoleReporter, monitor: RunMonitor):
        self.reporter, self.monitor = reporter, monitor

    def fold_started(self, fold: int, epochs: int, steps_per_epoch: int, first_epoch: int) -> None:
        self.reporter.fold_started(fold, epochs, steps_per_epoch, first_epoch)

    def step_done(self, loss: float) -> None:
        self.reporter.step_done(loss)

    def warn(self, message: str) -> None:
        self.reporter.warn(message)

    def epoch_done(self, fold: int, record: dict[str, float]) -> None:
        self.reporter.epoch_done(fold, record)
        self.monitor.epoch_done(fold, record)


def describe_budget(parts: Assembly, splits: Splits, dataset: DataFolder, height: int, width: int,
                    ranks: distributed.Ranks | None = None) -> str:
    """The training a run buys per fold, in optimizer steps, images and input size, with what the run
    chose and why (a time budget's steps, the input scale, the encoder's start; and, under torchrun,
    how the processes share each batch)."""
    recipe, choices = parts.recipe, parts.choices
    train = recipe.train
    images = train.batch_size * train.accumulate
    what = "crops" if recipe.input.crop is not None else "images"
    step = f"{images} {what} a step at {width}x{height}"
    steps_per_epoch = _steps_per_epoch(parts)
    if steps_per_epoch is None:
        largest = max(len(splits.training_images(dataset, f)) for f in range(splits.k))
        steps = -(-largest // images)
        budget = f"{splits.k} folds x {train.epochs} epochs of one pass (up to {steps} optimizer steps), {step}"
    else:
        total = train.epochs * steps_per_epoch
        budget = (f"{splits.k} folds x {train.epochs} epochs of {steps_per_epoch} optimizer steps, "
                  f"{total} in all ({total * images} {what}), {step}")
    if choices.steps_per_epoch is not None:
        budget += (f" (train.budget_seconds = {train.budget_seconds:g}: {choices.seconds_per_step:.3f} s a step "
                   f"as timed here, so every recipe gets the same seconds)")
    elif train.budget_seconds is not None:
        budget += f" (train.steps_per_epoch is set, so train.budget_seconds = {train.budget_seconds:g} is not used)"
    sizes = set(dataset.sizes.values())
    if choices.input_scale is not None:
        scaled = (f"images scaled by {choices.input_scale:g}" if choices.input_scale < 1 else
                  "images at their own resolution (objects already that small; never enlarged)")
        seen = f"the {wxh(next(iter(sizes)))} images" if len(sizes) == 1 else f"images of {len(sizes)} sizes"
        budget += (f"; input.size = \"objects\": {scaled}, from the median object of {choices.objects_measured} "
                   f"in the masks, {choices.object_diameter:g} px across in {seen}")
    if dataset.layout != "carvana":
        budget += f"; folds of {len(set(dataset.groups.values()))} groups ({dataset.grouping})"
    if len(sizes) > 1:
        budget += f"; {len(sizes)} image sizes, a batch padded to its largest"
    if choices.encoder_weights is not None:
        budget += "; encoder from ImageNet weights" if choices.encoder_weights == "imagenet" else \
            "; encoder from scratch (no ImageNet weights here)"
    if train.validate_images is not None:
        budget += (f"; each epoch validates up to {train.validate_images} held-out images, "
                   "and the whole fold is predicted once with the best epoch's weights")
    if ranks is not None:
        budget += (f"; DistributedDataParallel over {ranks.world} processes of {train.batch_size // ranks.world} "
                   "images each a batch")
    return budget


def _steps_per_epoch(parts: Assembly) -> int | None:
    """``train.steps_per_epoch``, or the steps the run's time budget bought; None: one pass."""
    return parts.recipe.train.steps_per_epoch or parts.choices.steps_per_epoch


def _samples_per_epoch(parts: Assembly, training_images: int) -> int:
    """One pass over the fold's training images, or the epoch's optimizer steps of batches."""
    train, steps = parts.recipe.train, _steps_per_epoch(parts)
    if steps is None:
        return training_images
    return steps * train.accumulate * train.batch_size


def _fold_setup(stage: _Stage, training: _Training, fold: int) -> FoldSetup:
    recipe, parts, compute, dataset, fit = stage.recipe, stage.parts, stage.compute, stage.dataset, stage.fit
    images, position = training.images, training.position
    train_ids = stage.splits.training_images(dataset, fold)
    val_ids = stage.splits.validation_images(dataset, fold)
    train_idx = [position[i] for i in train_ids] + training.extra_idx
    workers, batch = parts.loader_workers(compute), recipe.train.batch_size
    samples = TrainingSamples(images, train_idx, training.augment, fit, seed=recipe.seed,
                              augment_on_input=recipe.input.augment_on == "input", crop=recipe_crop(recipe))
    sampler = EpochSampler(len(samples), seed=recipe.seed + fold, shuffle=True,
                           samples_per_epoch=_samples_per_epoch(parts, len(samples)))

    def validation(ids: list[str]) -> Validation:
        idx = [position[i] for i in ids]
        samples = PredictionSamples(CachedImage(images, idx), len(idx), fit)
        batches = ShapeBatches([fit.input_shape(*dataset.sizes[i]) for i in ids], batch)
        return Validation(loader=shape_loader(samples, compute, workers, batches), ids=ids,
                          groups=[dataset.group_of(i) for i in ids],
                          shapes=[dataset.sizes[i] for i in ids], mask=lambda index: images[idx[index]][1])

    sample = validation_sample(val_ids, recipe.train.validate_images, recipe.seed + fold)
    torch.manual_seed(recipe.seed + fold)  # model initialisation
    model = parts.model()
    folder = stage.folder.fold(fold)
    folder.path.mkdir(parents=True, exist_ok=True)
    train_loader = loader(samples, compute, workers, batch, sampler)
    if stage.ranks is not None:  # this rank's slice of every batch
        train_loader = loader(samples, compute, workers, stage.ranks.split_batch(batch),
                              distributed.RankSampler(sampler, batch, stage.ranks))
    return FoldSetup(
        fold=fold, seed=recipe.seed, epochs=recipe.train.epochs, accumulate=recipe.train.accumulate,
        grad_clip=recipe.train.grad_clip, threshold=recipe.predict.threshold, tta=recipe.predict.tta,
        average=recipe.predict.average, compute=compute, fit=fit, normalise=recipe_normalise(recipe),
        model=model, make_optimizer=parts.optimizers(), builds_optimizer=parts.builds_optimizer(),
        accumulation=recipe.train.accumulation or "mean", checkpoint=recipe.train.checkpoint or "best_val_dice",
        multiplier=parts.schedule(),
        loss=parts.loss(), callbacks=parts.callbacks(), train_loader=train_loader,
        validation=validation(val_ids), epoch_validation=None if sample is None else validation(sample),
        oof=training.oof, folder=folder, compile=recipe.train.compile, tiling=recipe.predict.tiling, ranks=stage.ranks,
    )


def validation_sample(val_ids: list[str], size: int | None, seed: int) -> list[str] | None:
    """The held-out images validated after every epoch (``train.validate_images``), in fold order;
    None when every image is (no cap, or a fold no larger than it)."""
    if size is None or size >= len(val_ids):
        return None
    chosen = np.random.default_rng(seed).choice(len(val_ids), size, replace=False)
    return [val_ids[i] for i in sorted(chosen)]


def _predict_test(stage: _Stage, folds: list[FoldFolder]) -> None:
    """Fold-averaged probabilities of every test image into the run's test store, through the code of
    ``bench predict`` (``harness.engine.inference``), merged as ``predict.fold_average`` says. A rerun
    predicts only the maps the store does not hold yet; ``predict.test = false`` skips the stage."""
    recipe, parts, compute, dataset, folder = stage.recipe, stage.parts, stage.compute, stage.dataset, stage.folder
    if folder.test_marker.exists() or not dataset.test or recipe.predict.test is False:
        return
    images = [ImageFile(image_id, dataset.test_files[image_id]) for image_id in dataset.test]
    output = MapStore(folder.open_maps("test"))  # created by _allocate_maps
    outcome = predict_images(images, Predictor.from_folds(parts, folds, compute), output, recipe.train.batch_size,
                             None, stage.console)
    if outcome.skipped:
        path, reason = outcome.skipped[0]
        raise BenchError(f"{path}: {reason} ({len(outcome.skipped)} test images unreadable); replace or remove "
                         "them, then run again with --resume")
    write_once_json(folder.test_marker, {  # a second process assembling at the same time keeps the first's
        "images": len(dataset.test), "models": len(folds), "seconds": round(outcome.seconds, 3),
        "images_per_s": round(outcome.images_per_s, 2),
    })


def _summarise(stage: _Stage, pseudo_images: int | None = None) -> None:
    """Pool the folds' per-image Dice into the run's per-image table and write its summary (the
    completion mark).

    A pseudo-label stage (``pseudo_images`` set) is summarised like a run of its own, under the
    recipe name ``<name>+pseudo``, so ``bench compare`` ranks it against the first stage on the same folds
    (its pseudo-labelled test images train, and are never scored: the data hash is the first stage's).

    Everything here follows from the finished folds and the test marker, not from the process that
    writes it, so two processes that both assemble the run write the same bytes.
    """
    recipe, dataset, splits, folder = stage.recipe, stage.dataset, stage.splits, stage.folder
    rows, folds = [], []
    for k in range(splits.k):
        fold = folder.fold(k)
        folds.append(fold.read())
        for line in fold.per_image.read_text().splitlines()[1:]:
            fields = line.split(",")
            image_id, score = fields[0], fields[-1]  # image,car,dice (image,dice before groups were written)
            rows.append((image_id, dataset.group_of(image_id), k, float(score)))
    rows.sort()
    atomic_write_text(folder.per_image, "image,car,fold,dice\n" + "".join(
        f"{image_id},{car},{fold},{score:.6f}\n" for image_id, car, fold, score in rows))
    scores = np.array([score for *_, score in rows])
    fold_means = np.array([f["val_dice"] for f in folds])
    test = read_json(folder.test_marker) if folder.test_marker.exists() else {}
    model = stage.parts.model(pretrained=False)
    train_seconds = sum(f["train_seconds"] for f in folds)
    run_folder = folder.path if pseudo_images is None else folder.path.parent
    summary = {
        "complete": True,
        "recipe": recipe.name if pseudo_images is None else f"{recipe.name}+pseudo",
        "run": folder.name,
        "splits_hash": splits.hash,
        "data": str(dataset.root),
        "data_hash": data_hash(dataset),  # what it was scored on: runs that share it compare and merge
        "train_images": len(dataset.train),
        "test_images": len(dataset.test),
        "oof_dice": float(scores.mean()),
        "fold_dice_mean": float(fold_means.mean()),
        "fold_dice_std": float(fold_means.std(ddof=1)) if len(folds) > 1 else 0.0,
        "folds": folds,
        "train_seconds": round(train_seconds, 3),
        "train_images_per_s": round(sum(f["train_images_per_s"] * f["train_seconds"] for f in folds)
                                    / max(train_seconds, 1e-9), 2),
        "inference_images_per_s": test.get("images_per_s", folds[-1].get("val_images_per_s")),
        "parameters": sum(p.numel() for p in model.parameters()),
        "encoder_weights": encoder_start(stage.parts),
        "device": _devices_of(folds, stage.compute),
        "reproduce": f"bench run {RunFolder(run_folder).recipe_toml} --name {run_folder.name}-again",
    }
    if pseudo_images is not None:
        summary.update(stage=folder.path.name, pseudo_images=pseudo_images)
    _record_fold_devices(folder, folds)
    atomic_write_json(folder.summary_path, summary)


def encoder_start(parts: Assembly) -> str:
    """Where the run's encoder started: "imagenet", "none" (random init, and every model without an
    encoder parameter) or the weights file's path; what ``bench compare`` marks when runs differ in it."""
    return str(parts.model_params(pretrained=True).get("encoder_weights", "none"))


def _record_fold_devices(folder: RunFolder, folds: list[dict]) -> None:
    """``environment.json`` says where each fold trained (each ``fold.json`` records it)."""
    if not folder.environment.exists():  # a pseudo stage: its run's environment.json says it
        return
    environment = read_json(folder.environment)
    environment["folds"] = {str(f["fold"]): {"device": f.get("device"), "host": f.get("host")} for f in folds}
    atomic_write_json(folder.environment, environment)


def _devices_of(folds: list[dict], compute: Compute) -> str:
    """The device the folds trained on, or each device once when they differ (folds written before
    ``fold.json`` recorded it count as this process's)."""
    devices = sorted({f.get("device") or compute.describe() for f in folds})
    return devices[0] if len(devices) == 1 else "; ".join(devices)
