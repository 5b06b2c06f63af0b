"""``bench predict EXPORT IMAGES --out DIR``: an export's ONNX files applied through onnxruntime.

Everything around the networks is the run's own prediction (``harness.engine.inference``): the
export's ``recipe.toml`` and ``choices.json`` give the fit, the preprocessing, the TTA, the fold merge
and the threshold, and the same pipeline decodes, predicts in one loader worker per core, and writes
masks, a submission or maps. Only the forward pass is onnxruntime's (``OnnxFold``), on the CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from harness.engine.assembly import Assembly, recipe_fit
from harness.engine.choices import Choices, read_choices
from harness.engine.device import Compute
from harness.engine.inference import Outcome, Predictor, predict_images
from harness.engine.predict_run import PredictRequest, listed_images, output_for, write_report
from harness.errors import BenchError
from harness.export.folder import ExportFolder
from harness.export.onnx import onnxruntime
from harness.recipe.components import describe_exception
from harness.recipe.plugins import Plugins
from harness.recipe.schema import load_recipe


class OnnxFold(torch.nn.Module):
    """One exported fold as a module: uint8 NCHW in, float32 logits out.

    The session opens in the process that first calls it, on as many threads as torch has there: a
    loader worker that predicts (one thread each) opens its own after the fork instead of sharing the
    parent's thread pool."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self._session, self._pid = None, None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self._pid != os.getpid():
            ort = onnxruntime()
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            self._pid = os.getpid()
        try:
            logits = self._session.run(None, {"image": np.ascontiguousarray(image.numpy())})[0]
        except Exception as error:  # onnxruntime's errors: a shape the file was not exported for, say
            raise BenchError(f"{self.path}: onnxruntime cannot run it on a {tuple(image.shape)} input "
                             f"({describe_exception(error)})") from None
        return torch.from_numpy(logits)


class Uint8Input(torch.nn.Module):
    """The export's input stage: the images as they are (the normalisation is inside each file)."""

    def forward(self, images: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        return images.contiguous()


def export_predictor(folder: ExportFolder, plugins: Plugins) -> tuple[Predictor, int]:
    """The export's folds behind the run's prediction, and the batch they take: the recipe's, or 1 for
    files exported at a fixed shape (which is also a batch of one)."""
    card = folder.read_card()
    recipe = load_recipe(folder.recipe_toml, plugins)
    choices = read_choices(folder.choices) or Choices()
    parts = Assembly(recipe, plugins, choices)
    models = [OnnxFold(folder.path / name) for name in card["folds"]]
    predictor = Predictor(models, recipe_fit(recipe, choices), Uint8Input(), parts.transforms("preprocess"),
                          recipe.predict.model_copy(update={"compile": False}), Compute(torch.device("cpu"), "fp32", False), 0)
    return predictor, recipe.train.batch_size if card["input"].get("dynamic", True) else 1


def predict_export(request: PredictRequest, folder: ExportFolder, plugins: Plugins, console: Console) -> Outcome:
    """Predict the images into ``request.out`` with the export's files; the summary is ``out/predict.json``."""
    if request.device not in (None, "cpu"):
        raise BenchError(f"--device {request.device}: an ONNX export predicts on the CPU with onnxruntime; "
                         "give the run folder to predict on a GPU")
    predictor, batch_size = export_predictor(folder, plugins)
    if request.batch_size not in (None, batch_size) and batch_size == 1:
        raise BenchError(f"--batch-size {request.batch_size}: {folder.path}'s files take one image at a time "
                         "(exported at a fixed shape)")
    images = listed_images(request.images)
    output = output_for(request.format, request.out, predictor.spec.threshold, images)
    runtime = f"onnxruntime {onnxruntime().__version__}"
    console.print(f"predict {len(images)} images with the {len(predictor.models)} ONNX folds of {folder.path} "
                  f"on the CPU ({runtime}) into {request.out} ({request.format})", highlight=False)
    outcome = predict_images(images, predictor, output, request.batch_size or batch_size, request.workers, console)
    write_report(request, outcome, {"export": str(folder.path), "device": f"cpu, {runtime}"})
    console.print(outcome.line(), highlight=False)
    return outcome
