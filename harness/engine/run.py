"""``bench run``: a recipe, k-fold, into a run folder that ``bench compare`` and ``bench ensemble`` read.

The run folder's layout is documented in ``results/README.md``. A folder is complete when
``summary.json`` exists; it is written last. Every stage before it leaves a marker of its own
(``fold-K/fold.json``, ``test.json``), so ``--resume`` skips finished work and redoes only the
interrupted stage; within a fold, training resumes from the last finished epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import albumentations as A
import numpy as np
import torch
from rich.console import Console

from harness.data.carvana import CarvanaSet, car_id, car_mask_areas, open_carvana
from harness.data.geometry import Fit
from harness.data.loading import (CachedImage, EpochSampler, Images, Normalise, PredictionSamples, TestImage,
                                  TrainingSamples, shapes_of_test_images)
from harness.data.splits import Splits, make_splits, read_splits, write_splits
from harness.engine import compute_choice
from harness.engine.device import Compute, check_precision, resolve_device
from harness.engine.environment import describe_environment
from harness.engine.predict import TTA, predict_loader
from harness.engine.progress import ConsoleReporter, Workload
from harness.engine.pseudo import Joined, PseudoLabelled, Selection, select_confident
from harness.engine.train import FoldSetup, Validation, train_fold
from harness.errors import BenchError
from harness.io import atomic_write_json, atomic_write_text
from harness.recipe import components
from harness.recipe.plugins import Plugins
from harness.recipe.schema import Recipe
from harness.runs.probabilities import ProbabilityMaps

PSEUDO_STAGE = "pseudo"  # the pseudo-label stage's folder inside the run folder
CACHE_BYTES = 4 << 30  # decoded training images kept in memory when they fit (Carvana needs 37 GB)


class RunMonitor(Protocol):
    """Watches a run's first stage as it trains (``bench tune`` reports to Optuna); raising stops the run.

    While any fold is left to train, ``fold_done`` is called for every fold in order, folds finished
    before a resume included; a run found complete, or with every fold trained, calls nothing.
    """

    def epoch_done(self, fold: int, record: dict[str, float]) -> None: ...
    def fold_done(self, fold: int, folder: Path) -> None: ...


@dataclass(frozen=True)
class RunRequest:
    recipe: Recipe
    results: Path
    name: str | None = None
    resume: bool = False
    device: str | None = None
    estimate_only: bool = False
    monitor: RunMonitor | None = None


def run_id(recipe: Recipe) -> str:
    """``<recipe name>-<hash of the resolved recipe>``: the same recipe finds its own folder again."""
    return f"{recipe.name}-{hashlib.sha256(recipe.to_toml().encode()).hexdigest()[:8]}"


def run(request: RunRequest, plugins: Plugins, console: Console) -> Path:
    """Run (or resume, or find complete) a recipe; return the run folder."""
    # [tune] says how to search, not what to run: the run's folder, hash and recipe.toml leave it out
    recipe = request.recipe.model_copy(update={"tune": None})
    folder = request.results / (request.name or run_id(recipe))
    if _complete(folder, recipe):
        console.print(f"{folder} is already complete; nothing to do", highlight=False)
        return folder
    if folder.exists() and not request.resume and not request.estimate_only:
        raise BenchError(f"{folder} holds an unfinished run; pass --resume to finish it, or remove the folder")
    device = resolve_device(request.device)
    check_precision(device, recipe.train.precision)
    dataset = open_carvana(data_root(recipe, plugins))
    if recipe.pseudo_label is not None and not dataset.test:
        raise BenchError(f"[pseudo_label] needs unlabelled test images, and {dataset.root}/test has none; "
                         "remove the [pseudo_label] table or use data with a test/ folder")
    fit = input_fit(recipe, dataset)
    splits = make_splits(car_mask_areas(dataset), recipe.folds.k, recipe.folds.method, recipe.folds.seed)
    height, width = fit.input_shape(*next(iter(dataset.sizes.values())))
    workload = timing_workload(recipe, plugins, height, width, recipe.train.batch_size)
    compute, decision = choose_compute(recipe, device, workload, console)
    console.print(f"budget: {describe_budget(recipe, splits, dataset, height, width)}", highlight=False)
    if request.estimate_only:
        with tempfile.TemporaryDirectory() as scratch:
            _run_folds(recipe, plugins, compute, dataset, fit, splits, Path(scratch), console, estimate_only=True)
        return folder
    _prepare(folder, recipe, splits, compute, decision, request.resume)
    console.print(f"run {folder} on {compute.describe()}", highlight=False)
    if not (folder / "summary.json").exists():
        models = _run_folds(recipe, plugins, compute, dataset, fit, splits, folder, console,
                            monitor=request.monitor)
        _predict_test(recipe, plugins, compute, dataset, fit, splits, folder, models)
        _summarise(folder, recipe, dataset, splits, compute, plugins)
    if recipe.pseudo_label is not None:
        _pseudo_stage(recipe, plugins, compute, dataset, fit, splits, folder, console)
    return folder


def _complete(folder: Path, recipe: Recipe) -> bool:
    """Every stage the recipe asks for is done (the pseudo stage comes last; see ``_pseudo_stage``)."""
    if not (folder / "summary.json").exists():
        return False
    return recipe.pseudo_label is None or pseudo_stage_trained(folder) or _nothing_selected(folder)


def pseudo_stage_trained(folder: Path) -> bool:
    return (folder / PSEUDO_STAGE / "summary.json").exists()


def _nothing_selected(folder: Path) -> bool:
    path = folder / PSEUDO_STAGE / "selection.json"
    return path.exists() and not json.loads(path.read_text())["images"]


def _pseudo_stage(recipe, plugins, compute, dataset, fit, splits, folder, console) -> None:
    """vladimir's second stage (``harness.engine.pseudo``): the same folds trained again, from scratch, with
    the confident test images added to every fold's training side, into ``<run>/pseudo/``.

    The selection is written before any training and reused on resume, so an interrupted stage
    finishes with the images it started with. When no image qualifies, the stage would only repeat
    the first one: the empty selection is recorded and the stage is skipped, with a warning.
    """
    stage = folder / PSEUDO_STAGE
    selection_path = stage / "selection.json"
    if selection_path.exists():
        selection = Selection.from_json(json.loads(selection_path.read_text()))
    else:
        selection = select_confident(ProbabilityMaps.open(folder / "test_maps"), recipe.pseudo_label,
                                     recipe.predict.threshold)
        stage.mkdir(exist_ok=True)
        atomic_write_json(selection_path, selection.to_json())
    if not selection.images:
        console.print(f"[yellow]warning:[/] pseudo labelling skipped: no test image has at most "
                      f"{recipe.pseudo_label.max_uncertain_share} of its pixels uncertain (recorded in {selection_path})",
                      highlight=False)
        return
    console.print(f"pseudo labelling: {len(selection.images)} of {selection.candidates} test images "
                  f"added to training (rule in {selection_path})", highlight=False)
    preprocess = compose_transforms(recipe, plugins, "preprocess", "preprocessor")
    extra = PseudoLabelled(dataset, selection.images, folder / "test_maps", recipe.predict.threshold, preprocess)
    models = _run_folds(recipe, plugins, compute, dataset, fit, splits, stage, console, extra=extra)
    _predict_test(recipe, plugins, compute, dataset, fit, splits, stage, models)
    _summarise(stage, recipe, dataset, splits, compute, plugins, pseudo_images=len(selection.images))
    first, second = (json.loads((f / "summary.json").read_text())["oof_dice"] for f in (folder, stage))
    console.print(f"pseudo-label stage: out-of-fold Dice {second:.4f} (first stage {first:.4f}) in {stage}",
                  highlight=False)


def choose_compute(recipe: Recipe, device: torch.device, workload: compute_choice.Workload,
                   console: Console) -> tuple[Compute, compute_choice.Decision | None]:
    """The recipe's precision and memory format on this device: as fixed, or the fastest measured.

    Printed before anything trains (the decision with its timings, or a warning for a fixed choice
    known to be far slower), and the decision is what ``environment.json`` records.
    """
    precision, channels_last = recipe.train.precision, recipe.train.channels_last
    if precision != "auto" and channels_last != "auto":
        warning = compute_choice.explicit_warning(device, precision, channels_last, workload)
        if warning:
            console.print(f"[yellow]warning:[/] {warning}", highlight=False)
        return Compute(device, precision, channels_last), None
    decision = compute_choice.choose(device, precision, channels_last, workload)
    console.print(f"compute: {decision.describe()}", highlight=False)
    return Compute(device, decision.chosen.precision, decision.chosen.channels_last), decision


def timing_workload(recipe: Recipe, plugins: Plugins, height: int, width: int,
                    batch_size: int) -> compute_choice.Workload:
    """The recipe's training step as ``harness.engine.compute_choice`` times it: its model without pretrained
    weights (speed does not depend on their values), loss and optimizer, at its input size and batch."""
    model_params = dict(recipe.model.params)
    if "encoder_weights" in model_params:
        model_params["encoder_weights"] = "none"
    model, optimizer = plugins.get("model", recipe.model.name), plugins.get("optimizer", recipe.optimizer.name)
    return compute_choice.Workload(
        build_model=lambda: components.build(model, model_params),
        make_optimizer=lambda parameters: components.build(optimizer, recipe.optimizer.params, parameters),
        loss=components.build(plugins.get("loss", recipe.loss.name), recipe.loss.params),
        batch_size=batch_size, height=height, width=width,
        identity={"model": [recipe.model.name, model_params], "loss": [recipe.loss.name, recipe.loss.params],
                  "optimizer": [recipe.optimizer.name, recipe.optimizer.params]},
    )


def data_root(recipe: Recipe, plugins: Plugins) -> Path:
    if recipe.data.root:
        return Path(recipe.data.root)
    source = recipe.data.source
    return components.build(plugins.get("dataset", source.name), source.params)


def recipe_fit(recipe: Recipe) -> Fit:
    """``input.size``: a fixed [width, height], a short side (one number), or ``original``."""
    size = recipe.input.size
    if isinstance(size, int):
        return Fit(recipe.input.fit, None, recipe.input.pad_mode, short_side=size)
    return Fit(recipe.input.fit, None if size == "original" else tuple(size), recipe.input.pad_mode)


def input_fit(recipe: Recipe, dataset: CarvanaSet) -> Fit:
    fit = recipe_fit(recipe)
    for height, width in set(dataset.sizes.values()):
        problem = fit.check(height, width)
        if problem:
            raise BenchError(f"{problem} (data: {dataset.root})")
    return fit


def _prepare(folder: Path, recipe: Recipe, splits: Splits, compute: Compute,
             decision: compute_choice.Decision | None, resume: bool) -> None:
    """Create the run folder, or check that the one being resumed was made by this very recipe."""
    if resume and folder.exists():
        if (folder / "recipe.toml").read_text() != recipe.to_toml():
            raise BenchError(f"{folder}/recipe.toml differs from this recipe; resume with the same recipe, profiles and --set")
        if read_splits(folder / "splits.json").hash != splits.hash:
            raise BenchError(f"{folder}/splits.json differs from this data's folds; the data changed since the run started")
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_splits(splits, folder / "splits.json")
    atomic_write_json(folder / "environment.json", describe_environment(compute, decision))
    atomic_write_text(folder / "recipe.toml", recipe.to_toml())


def compose_transforms(recipe: Recipe, plugins: Plugins, key: str, kind: str) -> A.Compose | None:
    specs = getattr(recipe, key)
    if not specs:
        return None
    return A.Compose([components.build(plugins.get(kind, s.name), s.params) for s in specs])


def _allocate_maps(folder: Path, dataset: CarvanaSet) -> ProbabilityMaps:
    """Create the out-of-fold store, and the test store with it: both take their disk space now, so
    a disk too small for the test maps stops the run before its first fold rather than after its last."""
    if dataset.test:
        ProbabilityMaps.create(folder / "test_maps", shapes_of_test_images(dataset))
    return ProbabilityMaps.create(folder / "oof_maps", {i: dataset.sizes[i] for i in dataset.train})


def _run_folds(recipe, plugins, compute, dataset, fit, splits, folder, console, estimate_only=False, extra=None,
               monitor=None):
    """Train every unfinished fold; return the paths of every fold's best weights.

    ``extra`` (pseudo-labelled images) joins the training side of every fold, never validation.
    """
    preprocess = compose_transforms(recipe, plugins, "preprocess", "preprocessor")
    augment = compose_transforms(recipe, plugins, "augment", "augmentation")
    pending = [f for f in range(splits.k) if not (folder / f"fold-{f}" / "fold.json").exists()]
    # an estimate stops before the first validation: it needs no store (at Carvana scale, 12 GB of disk)
    oof = None if estimate_only else _allocate_maps(folder, dataset)
    if pending:
        images = Images(dataset, dataset.train, preprocess, CACHE_BYTES)
        position = {image_id: index for index, image_id in enumerate(dataset.train)}
        extra_idx = list(range(len(images), len(images) + len(extra))) if extra is not None else []
        if extra is not None:
            images = Joined(images, extra)
        batch = recipe.train.batch_size
        largest_fold = max(len(splits.training_images(dataset, f)) for f in pending) + len(extra_idx)
        work = Workload(
            folds=len(pending), epochs=recipe.train.epochs,
            steps_per_epoch=-(-_samples_per_epoch(recipe, largest_fold) // batch),
            batch_size=batch, val_images_per_fold=len(dataset.train) // splits.k,
            val_images_per_epoch=min(len(dataset.train) // splits.k, recipe.train.validate_images or len(dataset.train)),
            test_images=len(dataset.test), tta_variants=len(TTA[recipe.predict.tta]), k=splits.k,
        )
        reporter = ConsoleReporter(console, work, estimate_only)
        watched = reporter if monitor is None else _Watched(reporter, monitor)
        try:
            for fold in range(splits.k):
                if fold in pending:
                    setup = _fold_setup(recipe, plugins, compute, dataset, fit, splits, folder, fold,
                                        images, position, augment, oof, extra_idx)
                    summary = train_fold(setup, watched)
                    console.print(f"fold {fold + 1}/{splits.k}: best val Dice {summary['val_dice']:.4f} "
                                  f"(epoch {summary['best_epoch'] + 1})", highlight=False)
                if monitor is not None:
                    monitor.fold_done(fold, folder / f"fold-{fold}")
        finally:
            reporter.close()
    return [folder / f"fold-{f}" / "best.pt" for f in range(splits.k)]


class _Watched:
    """The console reporter, with every finished epoch also shown to the run's monitor."""

    def __init__(self, reporter: ConsoleReporter, monitor: RunMonitor):
        self.reporter, self.monitor = reporter, monitor

    def fold_started(self, fold: int, epochs: int, steps_per_epoch: int, first_epoch: int) -> None:
        self.reporter.fold_started(fold, epochs, steps_per_epoch, first_epoch)

    def step_done(self, loss: float) -> None:
        self.reporter.step_done(loss)

    def epoch_done(self, fold: int, record: dict[str, float]) -> None:
        self.reporter.epoch_done(fold, record)
        self.monitor.epoch_done(fold, record)


def loader_workers(recipe: Recipe, compute: Compute) -> int:
    """``auto``: no workers on a CPU (the model needs every core), up to 8 feeding a GPU."""
    if recipe.train.workers != "auto":
        return recipe.train.workers
    return 0 if compute.device.type == "cpu" else min(8, os.cpu_count() or 1)


def describe_budget(recipe: Recipe, splits: Splits, dataset: CarvanaSet, height: int, width: int) -> str:
    """The training a run buys per fold, in optimizer steps, images and input size."""
    train = recipe.train
    images = train.batch_size * train.accumulate
    step = f"{images} images a step at {width}x{height}"
    if train.steps_per_epoch is None:
        largest = max(len(splits.training_images(dataset, f)) for f in range(splits.k))
        steps = -(-largest // images)
        budget = f"{splits.k} folds x {train.epochs} epochs of one pass (up to {steps} optimizer steps), {step}"
    else:
        total = train.epochs * train.steps_per_epoch
        budget = (f"{splits.k} folds x {train.epochs} epochs of {train.steps_per_epoch} optimizer steps, "
                  f"{total} in all ({total * images} images), {step}")
    if train.validate_images is not None:
        budget += (f"; each epoch validates up to {train.validate_images} held-out images, "
                   "and the whole fold is predicted once with the best epoch's weights")
    return budget


def _samples_per_epoch(recipe: Recipe, training_images: int) -> int:
    """One pass over the fold's training images, or ``steps_per_epoch`` optimizer steps of batches."""
    train = recipe.train
    if train.steps_per_epoch is None:
        return training_images
    return train.steps_per_epoch * train.accumulate * train.batch_size


def _loader(samples, compute: Compute, workers: int, batch_size: int, sampler=None):
    return torch.utils.data.DataLoader(
        samples, batch_size=batch_size, sampler=sampler, num_workers=workers,
        pin_memory=compute.device.type == "cuda", persistent_workers=workers > 0,
    )


def _fold_setup(recipe, plugins, compute, dataset, fit, splits, folder, fold, images, position, augment, oof,
                extra_idx=()):
    train_ids = splits.training_images(dataset, fold)
    val_ids = splits.validation_images(dataset, fold)
    train_idx = [position[i] for i in train_ids] + list(extra_idx)
    workers = loader_workers(recipe, compute)
    samples = TrainingSamples(images, train_idx, augment, fit, seed=recipe.seed)
    sampler = EpochSampler(len(samples), seed=recipe.seed + fold, shuffle=True,
                           samples_per_epoch=_samples_per_epoch(recipe, len(samples)))

    def validation(ids: list[str]) -> Validation:
        idx = [position[i] for i in ids]
        samples = PredictionSamples(CachedImage(images, idx), len(idx), fit)
        return Validation(loader=_loader(samples, compute, workers, recipe.train.batch_size), ids=ids,
                          shapes=[dataset.sizes[i] for i in ids], mask=lambda index: images[idx[index]][1])

    sample = validation_sample(val_ids, recipe.train.validate_images, recipe.seed + fold)
    torch.manual_seed(recipe.seed + fold)  # model initialisation
    model = components.build(plugins.get("model", recipe.model.name), recipe.model.params)
    optimizer = components.build(plugins.get("optimizer", recipe.optimizer.name), recipe.optimizer.params,
                                 model.parameters())
    fold_folder = folder / f"fold-{fold}"
    fold_folder.mkdir(parents=True, exist_ok=True)
    return FoldSetup(
        fold=fold, seed=recipe.seed, epochs=recipe.train.epochs, accumulate=recipe.train.accumulate,
        grad_clip=recipe.train.grad_clip, threshold=recipe.predict.threshold, tta=recipe.predict.tta,
        average=recipe.predict.average, compute=compute, fit=fit, normalise=Normalise(recipe.input.normalize),
        model=model, optimizer=optimizer,
        multiplier=components.build(plugins.get("schedule", recipe.schedule.name), recipe.schedule.params),
        loss=components.build(plugins.get("loss", recipe.loss.name), recipe.loss.params),
        callbacks=[components.build(plugins.get("callback", c.name), c.params) for c in recipe.callbacks],
        train_loader=_loader(samples, compute, workers, recipe.train.batch_size, sampler),
        validation=validation(val_ids), epoch_validation=None if sample is None else validation(sample),
        oof=oof, folder=fold_folder, compile=recipe.train.compile, tiling=recipe.predict.tiling,
    )


def validation_sample(val_ids: list[str], size: int | None, seed: int) -> list[str] | None:
    """The held-out images validated after every epoch (``train.validate_images``), in fold order;
    None when every image is (no cap, or a fold no larger than it)."""
    if size is None or size >= len(val_ids):
        return None
    chosen = np.random.default_rng(seed).choice(len(val_ids), size, replace=False)
    return [val_ids[i] for i in sorted(chosen)]


def _predict_test(recipe, plugins, compute, dataset, fit, splits, folder, model_paths) -> None:
    """Fold-averaged probabilities of every test image (idempotent: a rerun rewrites them)."""
    if (folder / "test.json").exists() or not dataset.test:
        return
    models = []
    for path in model_paths:
        model = components.build(plugins.get("model", recipe.model.name), recipe.model.params)
        model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu")["model"])
        models.append(model.to(compute.device, memory_format=compute.memory_format).eval())
    store = ProbabilityMaps.open(folder / "test_maps", mode="r+")  # allocated by _allocate_maps
    preprocess = compose_transforms(recipe, plugins, "preprocess", "preprocessor")
    samples = PredictionSamples(TestImage(dataset, preprocess), len(dataset.test), fit)
    loader = _loader(samples, compute, loader_workers(recipe, compute), recipe.train.batch_size)
    normalise = Normalise(recipe.input.normalize).to(compute.device)
    ordered_shapes = [store.shapes[i] for i in dataset.test]
    started = time.perf_counter()
    for index, probability in predict_loader(models, loader, ordered_shapes, fit, normalise,
                                             recipe.predict.tta, recipe.predict.average, compute,
                                             recipe.predict.tiling):
        store[dataset.test[index]] = probability.numpy()
    store.flush()
    seconds = time.perf_counter() - started
    atomic_write_json(folder / "test.json", {
        "images": len(dataset.test), "models": len(models), "seconds": round(seconds, 3),
        "images_per_s": round(len(dataset.test) / max(seconds, 1e-9), 2),
    })


def _summarise(folder, recipe, dataset, splits, compute, plugins, pseudo_images=None) -> None:
    """Pool the folds' per-image Dice into per_image.csv and write summary.json (the completion mark).

    A pseudo-label stage (``pseudo_images`` set) is summarised like a run of its own, under the
    recipe name ``<name>+pseudo``, so ``bench compare`` ranks it against the first stage on the same folds.
    """
    rows, folds = [], []
    for fold in range(splits.k):
        fold_folder = folder / f"fold-{fold}"
        folds.append(json.loads((fold_folder / "fold.json").read_text()))
        for line in (fold_folder / "per_image.csv").read_text().splitlines()[1:]:
            image_id, score = line.split(",")
            rows.append((image_id, car_id(image_id), fold, float(score)))
    rows.sort()
    atomic_write_text(folder / "per_image.csv", "image,car,fold,dice\n" + "".join(
        f"{image_id},{car},{fold},{score:.6f}\n" for image_id, car, fold, score in rows))
    scores = np.array([score for *_, score in rows])
    fold_means = np.array([f["val_dice"] for f in folds])
    test = json.loads((folder / "test.json").read_text()) if (folder / "test.json").exists() else {}
    model = components.build(plugins.get("model", recipe.model.name), recipe.model.params)
    train_seconds = sum(f["train_seconds"] for f in folds)
    run_folder = folder if pseudo_images is None else folder.parent
    summary = {
        "complete": True,
        "recipe": recipe.name if pseudo_images is None else f"{recipe.name}+pseudo",
        "run": folder.name if pseudo_images is None else f"{run_folder.name}/{folder.name}",
        "splits_hash": splits.hash,
        "data": str(dataset.root),
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
        "device": compute.describe(),
        "reproduce": f"bench run {run_folder / 'recipe.toml'} --name {run_folder.name}-again",
    }
    if pseudo_images is not None:
        summary.update(stage=folder.name, pseudo_images=pseudo_images)
    atomic_write_json(folder / "summary.json", summary)
