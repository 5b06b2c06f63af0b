"""``bench export RUN --format onnx --out DIR``: a run's fold models as ONNX files, checked with onnxruntime.

Each fold's network is exported with the recipe's normalisation and channel order folded into the
graph, so the file takes what any image decoder gives: uint8 RGB, ``(N, 3, H, W)``. It returns the
logits ``(N, 1, H, W)`` at the input's size; the sigmoid, the TTA, the fold merge, the fit back to the
image's size and the threshold stay outside, as the card (``model.json``) says, because they are the
same few lines for every network and differ from recipe to recipe.

Height and width are dynamic (any multiple of 32, the batch too) where the exporter can trace the
network so; otherwise the file is fixed to one shape, the first check image's fitted input (the
recipe's size when ``input.size`` is fixed), with a batch of one, and the card says it. The
exporter is PyTorch's ``torch.export``-based one (``dynamo=True``; the TorchScript exporter is
deprecated) at opset 18, the one its operator library is written for (another would be converted
after export), which onnxruntime has run since 1.14.

After exporting, up to 8 real images of the run's data go through both paths (the fit, then PyTorch
in fp32, then onnxruntime) and the largest difference of probabilities is compared with
``PROBABILITY_BOUND``: an export that does not compute what the run computed is refused, not shipped.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from harness.data.image_files import ImageFile, ImageSamples
from harness.data.loading import Normalise
from harness.engine.assembly import Assembly, recipe_fit, recipe_normalise
from harness.engine.choices import Choices, read_choices
from harness.engine.device import Compute
from harness.engine.inference import Predictor
from harness.engine.predict_run import recipe_file
from harness.errors import BenchError
from harness.evaluate import stats
from harness.evaluate.results import read_per_image
from harness.export.folder import CARD_FILE, FORMAT, ExportFolder
from harness.io import atomic_write_json
from harness.recipe.components import describe_exception
from harness.recipe.plugins import Plugins
from harness.recipe.schema import Recipe, load_recipe
from harness.runs.folder import FoldFolder, Run, RunFolder
from harness.runs.probabilities import binarise_level

OPSET = 18
FORMATS = (FORMAT,)
PROBABILITY_BOUND = 1e-4  # largest |p_onnxruntime - p_pytorch| an export may show on the check images
CHECK_IMAGES = 8
MULTIPLE = 32  # what the harness pads or resizes every input to (hookspecs.bench_models)
SINGLE_FILE_BYTES = 1 << 30  # weights above this go to a .data file beside the graph (protobuf's limit is 2 GiB)


FOLD_AVERAGES = {  # predict.fold_average, in words (harness.engine.predict.merge_folds)
    None: "the mean of the folds' probabilities",
    "uint8_floor": "each fold's map floored to levels floor(p * 255), the integer mean of the levels floored, / 255",
    "uint8_round": "each fold's map rounded to levels round(p * 255), their mean rounded (halves to even), / 255",
}


class Exportable(torch.nn.Module):
    """A fold's network behind the recipe's ``Normalise``: uint8 RGB NCHW in, logits out.

    The same arithmetic as ``Normalise`` (``x * (1 / std) - mean / std`` after the channel flip), so the
    exported graph and ``bench run`` feed the network the same floats."""

    def __init__(self, model: torch.nn.Module, normalise: Normalise):
        super().__init__()
        self.model, self.bgr = model, normalise.bgr
        self.register_buffer("scale", normalise.scale.clone())
        self.register_buffer("shift", normalise.shift.clone())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.float()
        if self.bgr:
            x = x.flip(1)
        return self.model(torch.addcmul(self.shift, x, self.scale))


@dataclass(frozen=True)
class Exported:
    folder: ExportFolder
    card: dict[str, Any]


def export_run(run_folder: RunFolder, out: Path, plugins: Plugins, console: Console,
               check_images: list[ImageFile] | None = None) -> Exported:
    """Export every finished fold of ``run_folder`` into ``out``; check it; write the card last."""
    ort = onnxruntime()
    recipe = load_recipe(recipe_file(run_folder), plugins)
    choices = read_choices(run_folder.choices) or Choices()
    parts = Assembly(recipe, plugins, choices)
    folds = [fold for fold in run_folder.folds() if fold.done() and fold.best.is_file()]
    if not folds:
        raise BenchError(f"{run_folder.path}: no finished fold to export (none has its best weights and its end mark); "
                         "train it with bench run first")
    if len(folds) < recipe.folds.k:
        console.print(f"[yellow]warning:[/] {run_folder.path} is unfinished: exporting {len(folds)} of "
                      f"{recipe.folds.k} folds", highlight=False)
    fit = recipe_fit(recipe, choices)
    images = check_images if check_images is not None else _data_images(parts)
    example = _example(fit, images)
    folder = ExportFolder(out)
    if out.exists() and any(out.iterdir()) and not folder.is_export():
        raise BenchError(f"{out}: exists and holds no export (no {CARD_FILE}); give a new folder")
    out.mkdir(parents=True, exist_ok=True)
    folder.card.unlink(missing_ok=True)  # until the new card is written, the folder is an unfinished export
    # the folds' networks as bench predict loads them, in fp32 on the CPU: what the files must compute
    models = Predictor.from_folds(parts, folds, Compute(torch.device("cpu"), "fp32", False)).models
    modules = [Exportable(model, recipe_normalise(recipe)).eval() for model in models]
    dynamic = None  # the first fold decides for the others
    for fold, module in zip(folds, modules):
        fold_dynamic = _export(module, example, folder.fold_file(fold.index), recipe.model.name, dynamic)
        dynamic = fold_dynamic if dynamic is None else dynamic
    worst, checked = _check(modules, [folder.fold_file(f.index) for f in folds], images, parts, fit, ort,
                            None if dynamic else tuple(example.shape))
    if worst > PROBABILITY_BOUND:
        raise BenchError(f"{out}: onnxruntime's probabilities differ from PyTorch's by up to {worst:.2e} on "
                         f"{checked} images (bound {PROBABILITY_BOUND:g}); not exported")
    shutil.copyfile(recipe_file(run_folder), folder.recipe_toml)
    if run_folder.choices.is_file():
        shutil.copyfile(run_folder.choices, folder.choices)
    card = _card(run_folder, recipe, folds, fit, example.shape[-2:], dynamic, worst, checked, ort.__version__)
    atomic_write_json(folder.card, card)
    return Exported(folder, card)


def onnxruntime():
    """onnxruntime and onnx (the exporter writes with it), or one line naming the extra."""
    try:
        for name in ("onnx", "onnxscript"):  # what torch.onnx.export writes with
            importlib.import_module(name)
        return importlib.import_module("onnxruntime")
    except ImportError as error:
        raise BenchError(f"ONNX export needs {error.name}: pip install 'segbench[onnx]'") from None


def _data_images(parts: Assembly) -> list[ImageFile]:
    """Real images of the run's data for the check: its test images, else its training images."""
    try:
        data = parts.dataset()
    except BenchError as error:
        raise BenchError(f"the check needs real images and the run's data cannot be opened ({error}); "
                         "give some with --check-images DIR") from None
    files = data.test_files or data.image_files
    return [ImageFile(image_id, files[image_id]) for image_id in sorted(files)[:CHECK_IMAGES]]


def _example(fit, images: list[ImageFile]) -> torch.Tensor:
    """A uint8 input of the first check image's fitted shape: what the exporter traces with."""
    if not images:
        raise BenchError("the check needs real images: none found")
    sample = ImageSamples(images[:1], None, fit)[0]
    if sample.problem:
        raise BenchError(f"{images[0].path}: {sample.problem}")
    return sample.image[None]


def _export(module: Exportable, example: torch.Tensor, path: Path, model_name: str, dynamic: bool | None) -> bool:
    """Write ``module`` to ``path``; True when height, width and batch are dynamic. ``dynamic`` None: try
    dynamic first, then fixed (the first fold decides for the others)."""
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    errors = []
    for shapes_dynamic in ([True, False] if dynamic is None else [dynamic]):
        batch, height, width = (torch.export.Dim("batch"), torch.export.Dim("height32"), torch.export.Dim("width32"))
        dynamic_shapes = ({0: batch, 2: MULTIPLE * height, 3: MULTIPLE * width},) if shapes_dynamic else None
        try:
            # the exporter prints its progress, and a failing graph whole, to stdout and stderr
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (example,), str(path), dynamo=True, opset_version=OPSET,
                                  input_names=["image"], output_names=["logits"], dynamic_shapes=dynamic_shapes,
                                  external_data=weight_bytes > SINGLE_FILE_BYTES, optimize=True, verify=False)
            return shapes_dynamic
        except Exception as error:  # the exporter raises its own errors and any the network's code raises
            errors.append(_root_cause(error))
    raise BenchError(f"model '{model_name}': the ONNX exporter cannot trace it ({errors[-1]})")


def _check(modules: list[Exportable], files: list[Path], images: list[ImageFile], parts: Assembly, fit, ort,
           fixed: tuple[int, ...] | None) -> tuple[float, int]:
    """The largest |p_onnxruntime - p_pytorch| over the check images and every fold (fp32 on the CPU), and
    on how many images: those whose input has the ``fixed`` shape, for files exported at one."""
    samples = ImageSamples(images[:CHECK_IMAGES], parts.transforms("preprocess"), fit)
    inputs = []
    for index in range(len(samples)):
        sample = samples[index]
        if sample.problem:
            raise BenchError(f"{images[index].path}: {sample.problem}")
        if fixed is None or tuple(sample.image[None].shape) == fixed:
            inputs.append(sample.image[None])
    worst = 0.0
    for module, path in zip(modules, files):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for image in inputs:
            with torch.no_grad():
                expected = torch.sigmoid(module(image)).numpy()
            got = 1 / (1 + np.exp(-session.run(None, {"image": image.numpy()})[0].astype(np.float64)))
            worst = max(worst, float(np.abs(got - expected).max()))
    return worst, len(inputs)


def _card(run_folder: RunFolder, recipe: Recipe, folds: list[FoldFolder], fit, traced: tuple[int, int],
          dynamic: bool, worst: float, checked: int, ort_version: str) -> dict[str, Any]:
    """``model.json``: everything needed to use the files without segbench."""
    spec = recipe.predict
    return {
        "format": FORMAT,
        "opset": OPSET,
        "segbench": importlib.metadata.version("segbench"),
        "torch": torch.__version__,
        "run": run_folder.name,
        "recipe": recipe.name,
        **_scores(run_folder),
        "folds": [ExportFolder(run_folder.path).fold_file(fold.index).name for fold in folds],
        "input": {
            "name": "image", "dtype": "uint8", "layout": "NCHW", "channels": "RGB", "dynamic": dynamic,
            "height_width": (f"any multiples of {MULTIPLE} (dynamic), batch dynamic" if dynamic
                             else f"fixed at {traced[0]}x{traced[1]} (height x width), batch 1"),
            "normalisation": f"inside the graph: input.normalize = {recipe.input.normalize!r}, "
                             f"channels {recipe.input.channels or 'rgb'!r}",
            "preprocess": [spec_.name for spec_ in recipe.preprocess] or None,
            "fit": _describe_fit(fit),
        },
        "output": {"name": "logits", "shape": "(N, 1, H, W) at the input's size", "sigmoid": "not applied"},
        "predict": {
            "tta": spec.tta, "tta_average": spec.average,
            "fold_average": FOLD_AVERAGES[spec.fold_average],
            "threshold": spec.threshold,
            "steps": "fit each image as 'fit' says; per fold, run every TTA variant, undo it, restore its logits to "
                     "the image's size and average them ('tta_average': the logits, then the sigmoid; or the "
                     "sigmoid of each, then the probabilities); merge the folds' maps ('fold_average'); quantise to "
                     f"levels round(p * 255); mask = levels >= {binarise_level(spec.threshold)} "
                     "(ceil(threshold * 255 + 0.5))",
        },
        "check": {"runtime": f"onnxruntime {ort_version}", "images": checked,
                  "max_abs_probability_difference": worst, "bound": PROBABILITY_BOUND},
    }


def _scores(run_folder: RunFolder) -> dict[str, Any]:
    """Out-of-fold Dice with its 95% bootstrap interval over groups, for a finished run."""
    if not run_folder.complete():
        return {"oof_dice": None}
    run = Run(run_folder, run_folder.read_summary())
    interval = stats.pooled_interval(stats.car_sums(read_per_image(run)))
    return {"oof_dice": round(interval.estimate, 5), "oof_dice_95": [round(interval.low, 5), round(interval.high, 5)],
            "data_hash": run.summary.data_hash}


def _describe_fit(fit) -> str:
    if fit.mode == "pad":
        border = {"reflect": "OpenCV's BORDER_REFLECT_101", "constant": "zeros"}[fit.pad_mode]
        where = "evenly on both sides, the odd pixel bottom and right" if fit.pad_side == "centre" else "right and bottom"
        return (f"pad with {border}, {where}, to " + (f"{fit.size[0]}x{fit.size[1]} (width x height)"
                if fit.size else f"the next multiple of {MULTIPLE}") + "; crop the same pixels off the logits")
    if fit.size:
        target = f"{fit.size[0]}x{fit.size[1]} (width x height)"
    elif fit.scale is not None:
        target = f"scale {fit.scale:g}, rounded to multiples of {MULTIPLE}"
    else:
        target = f"short side {fit.short_side}, rounded to multiples of {MULTIPLE}"
    return (f"resize (OpenCV INTER_LINEAR) to {target}; resize the logits back bilinearly "
            f"(align_corners={fit.align_corners})")


def _root_cause(error: BaseException) -> str:
    """The innermost error in one line: the exporter wraps what the network's code did in errors of its
    own whose first lines say only which step of the export failed."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return describe_exception(error)
