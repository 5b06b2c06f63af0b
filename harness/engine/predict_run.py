"""``bench predict RUN IMAGES... --out DIR``: a finished run's fold models applied to any images.

The run's own ``recipe.toml`` rebuilds its models, input fit, normalisation and preprocessing, and
says how to predict (TTA, tiling, how the folds merge, the threshold), so the masks are those the run
would have written for its own test images (``harness.engine.inference``). ``DIR/predict.json``
records the job: how many images, which were skipped and why, the speed, device and decoder.
Running the same command again after an interruption predicts only what is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from harness.data.image_files import DECODER, SUFFIXES, ImageFile, image_shape, list_images
from harness.engine.assembly import Assembly
from harness.engine.choices import Choices, read_choices
from harness.engine.device import Compute, check_precision, resolve_device
from harness.engine.inference import Outcome, Output, Predictor, predict_images
from harness.engine.outputs import FORMATS, MapStore, MaskFiles, RleJournal
from harness.errors import BenchError
from harness.io import atomic_write_json
from harness.recipe.plugins import Plugins
from harness.recipe.schema import Recipe, load_recipe
from harness.runs.folder import FoldFolder, RunFolder, resolve_runs

@dataclass(frozen=True)
class PredictRequest:
    run: str  # a run folder, or a run name under ``results``
    images: list[Path]
    out: Path
    results: Path = Path("results")
    format: str = "rle"
    device: str | None = None
    batch_size: int | None = None  # default: the recipe's train.batch_size
    workers: int | None = None  # default: ``Predictor.workers``


def predict(request: PredictRequest, plugins: Plugins, console: Console) -> Outcome:
    """Predict the images into ``request.out``; the summary is ``out/predict.json``."""
    if request.format not in FORMATS:
        raise BenchError(f"--format {request.format}: expected one of {', '.join(FORMATS)}")
    folder = run_folder(request.run, request.results)
    images = listed_images(request.images)
    job = RunPrediction.of(folder, plugins, request)
    output = output_for(request.format, request.out, job.recipe.predict.threshold, images)
    console.print(f"predict {len(images)} images with the {len(job.predictor.models)} fold models of {folder.path} "
                  f"on {job.predictor.compute.describe()} into {request.out} ({request.format})", highlight=False)
    outcome = job.predict(images, output, console)
    write_report(request, outcome, {"run": str(folder.path), "device": job.predictor.compute.describe()})
    console.print(outcome.line(), highlight=False)
    return outcome


def listed_images(inputs: list[Path]) -> list[ImageFile]:
    """The images of the command line; none is one line."""
    images = list_images(inputs)
    if not images:
        raise BenchError(f"no {', '.join(SUFFIXES)} image in {', '.join(map(str, inputs))}")
    return images


@dataclass(frozen=True)
class RunPrediction:
    """A run's fold models, ready to predict, with the batch and loader workers the request asks for."""

    recipe: Recipe
    predictor: Predictor
    batch_size: int
    workers: int | None

    @classmethod
    def of(cls, folder: RunFolder, plugins: Plugins, request: PredictRequest) -> RunPrediction:
        recipe = load_recipe(recipe_file(folder), plugins)
        parts = Assembly(recipe, plugins, read_choices(folder.choices) or Choices())  # the input scale it trained at
        folds = _fold_checkpoints(folder, recipe)
        compute = _compute(recipe, folder, resolve_device(request.device))
        return cls(recipe, Predictor.from_folds(parts, folds, compute), request.batch_size or recipe.train.batch_size,
                   request.workers)

    def predict(self, images: list[ImageFile], output: Output, console: Console) -> Outcome:
        return predict_images(images, self.predictor, output, self.batch_size, self.workers, console)


def write_report(request: PredictRequest, outcome: Outcome, what: dict) -> None:
    """``out/predict.json``: what was applied (``what``), to how many images, which were skipped, how fast."""
    atomic_write_json(request.out / "predict.json", {
        **what, "format": request.format, "decoder": DECODER,
        "images": outcome.images, "predicted": outcome.predicted, "resumed": outcome.resumed,
        "skipped": [{"image": path, "reason": reason} for path, reason in outcome.skipped],
        "seconds": round(outcome.seconds, 3), "images_per_s": round(outcome.images_per_s, 2),
    })


def run_folder(run: str, results: Path) -> RunFolder:
    """The one run ``run`` names."""
    found = resolve_runs([run], results)
    if len(found) != 1:
        raise BenchError(f"{run}: holds {len(found)} runs; give the folder of one")
    return RunFolder(found[0])


def recipe_file(folder: RunFolder) -> Path:
    """The run's recipe; a pseudo-label stage (``RUN/pseudo``) trains with its run's."""
    if folder.recipe_toml.is_file():
        return folder.recipe_toml
    return RunFolder(folder.path.parent).recipe_toml


def _fold_checkpoints(folder: RunFolder, recipe: Recipe) -> list[FoldFolder]:
    folds = [folder.fold(k) for k in range(recipe.folds.k)]
    missing = [fold.best for fold in folds if not fold.best.is_file()]
    if missing:
        raise BenchError(f"{missing[0]}: missing ({len(missing)} of {len(folds)} folds have no best weights); "
                         "finish the run with bench run --resume first")
    return folds


def _compute(recipe: Recipe, folder: RunFolder, device: torch.device) -> Compute:
    """The recipe's precision and memory format; for ``auto``, what the run chose when it trained on
    this kind of device (``environment.json``), else fp32 in the default layout. A run trained in fp16,
    a CUDA precision, predicts on a CPU in fp32: its weights are fp32 all the same."""
    precision, channels_last = recipe.train.precision, recipe.train.channels_last
    trained = _read_environment(folder)
    same_kind = str(trained.get("device", "")).startswith(device.type)
    if precision == "auto":
        precision = trained.get("precision", "fp32") if same_kind else "fp32"
    if precision == "fp16" and device.type == "cpu":
        precision = "fp32"
    if channels_last == "auto":
        channels_last = bool(trained.get("channels_last", False)) if same_kind else False
    check_precision(device, precision)
    return Compute(device, precision, channels_last)


def _read_environment(folder: RunFolder) -> dict:
    try:
        return json.loads(folder.environment.read_text())
    except (OSError, ValueError):
        return {}


def output_for(format: str, out: Path, threshold: float, images: list[ImageFile]) -> Output:
    """Where ``--format`` puts each image's result: PNG masks, the submission's journal, or a map store."""
    if format == "png":
        return MaskFiles(out, threshold)
    if format == "rle":
        return RleJournal(out, threshold)
    return MapStore.create(out / "maps", readable_shapes(images))


def readable_shapes(images: list[ImageFile]) -> dict[str, tuple[int, int]]:
    """(height, width) of every image whose header reads: a file without one is left out of a store,
    and decoding it fails and skips it."""
    shapes = {image.image_id: image_shape(image.path) for image in images}
    return {image_id: shape for image_id, shape in shapes.items() if shape}
