"""Applying a run's fold models to images: images in, one output per image out.

``bench predict`` (any images, into a folder) and ``bench run``'s test prediction (its data's test
images, into the run's test store) both go through ``predict_images``, so a map written by one is
the map the other writes: bit for bit when the batches are the same (the recipe's batch size, and
nothing resumed or skipped; a kernel may round differently in another batch shape).

The work is a pipeline with every stage bounded, so memory stays flat over 100,064 images: loader
workers decode, preprocess and fit (``harness.data.image_files``); the main process runs the
batches through every fold model with the recipe's TTA and tiling (``harness.engine.predict``);
maps are quantised there too, and only their uint8 levels come back to the host, where a few writer
threads threshold, encode and write them, at most ``_PENDING_BATCHES`` batches behind. An output
says which images it already holds, and those are never decoded again: a job killed at any moment
is resumed by running it again.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import albumentations as A
import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeRemainingColumn)
from rich.text import Text

from harness.data.geometry import Fit
from harness.data.image_files import ImageFile, ImageSamples, Sample, collate, image_shape
from harness.data.loading import Normalise
from harness.engine.assembly import Assembly, recipe_fit, recipe_normalise
from harness.engine.device import Compute
from harness.engine.predict import combine, quantised, variant_logits
from harness.memory import HEAP_BLOCK, keep_freed_memory
from harness.recipe.schema import PredictSpec
from harness.runs.folder import FoldFolder

_WRITERS = 4  # threads that threshold, encode and write; OpenCV, zstd and file writes release the GIL
_PENDING_BATCHES = 2  # batches of maps waiting for a writer, at most: the bound on memory


class Output(Protocol):
    """Where per-image results go (``harness.engine.outputs``). ``write`` is called from writer threads,
    each image once; ``finish`` once at the end, with every image of the job in input order."""

    def done(self, image_id: str) -> bool: ...
    def write(self, image_id: str, levels: np.ndarray) -> None: ...
    def finish(self, ids: list[str]) -> None: ...


@dataclass(frozen=True)
class Predictor:
    """A run's fold models on the compute device, and how its recipe predicts with them."""

    models: list[torch.nn.Module]
    fit: Fit
    normalise: Normalise
    preprocess: A.Compose | None
    spec: PredictSpec
    compute: Compute

    @classmethod
    def from_folds(cls, parts: Assembly, folds: Sequence[FoldFolder], compute: Compute) -> Predictor:
        """Every fold's best weights, in a model built from the recipe (without pretrained weights:
        the fold's own replace them all)."""
        models = []
        for fold in folds:
            model = parts.model(pretrained=False)
            model.load_state_dict(fold.read_checkpoint(fold.best)["model"])
            models.append(model.to(compute.device, memory_format=compute.memory_format).eval())
        recipe = parts.recipe
        return cls(models, recipe_fit(recipe), recipe_normalise(recipe).to(compute.device),
                   parts.transforms("preprocess"), recipe.predict, compute)

    def batch_size(self, wanted: int, first: ImageFile) -> int:
        """``wanted`` on a GPU. On a CPU, the largest batch up to it whose float32 input stays within one
        heap block (``harness.memory``): a larger batch is mapped afresh from the kernel at every step,
        and at full size costs more per image, not less (1918x1280, a 1x1 convolution with flip TTA
        over 2 folds, AVX512, 2 cores: 155 ms an image in batches of 8, 60 in batches of 1, docs/scale.md)."""
        if self.compute.device.type != "cpu":
            return wanted
        height, width = self.fit.input_shape(*(image_shape(first.path) or (1, 1)))
        return max(1, min(wanted, HEAP_BLOCK // (3 * height * width * 4)))

    def maps(self, samples: list[Sample]) -> Iterator[tuple[Sample, torch.Tensor]]:
        """``(sample, probability map at its own size)``; samples of one input shape are one batch."""
        groups: dict[tuple[int, ...], list[Sample]] = {}
        for sample in samples:
            groups.setdefault(tuple(sample.image.shape), []).append(sample)
        spec, compute = self.spec, self.compute
        for group in groups.values():
            images = torch.stack([sample.image for sample in group]).to(compute.device, non_blocking=True)
            per_model = variant_logits(self.models, self.normalise(images).contiguous(
                memory_format=compute.memory_format), spec.tta, compute, spec.tiling)
            for position, sample in enumerate(group):
                yield sample, combine(per_model, position, *sample.shape, self.fit, spec.average, spec.fold_average)


@dataclass
class Outcome:
    """What one ``predict_images`` call did; ``skipped`` holds ``(image path, reason)``."""

    images: int
    predicted: int = 0
    resumed: int = 0  # already in the output from an earlier, interrupted call
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.predicted / max(self.seconds, 1e-9)

    def line(self) -> str:
        resumed = f", {self.resumed} already done" if self.resumed else ""
        return (f"{self.predicted} images in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s), "
                f"{len(self.skipped)} skipped{resumed}")


def predict_images(images: Sequence[ImageFile], predictor: Predictor, output: Output, batch_size: int,
                   workers: int, console: Console) -> Outcome:
    """Predict every image ``output`` does not hold yet; skip (and report) those that cannot be read.

    ``batch_size`` is what the caller wants; on a CPU it may be lowered (``Predictor.batch_size``).
    """
    pending = [image for image in images if not output.done(image.image_id)]
    outcome = Outcome(len(images), resumed=len(images) - len(pending))
    started = time.perf_counter()
    if pending:
        keep_freed_memory()
        samples = ImageSamples(pending, predictor.preprocess, predictor.fit)
        batches = torch.utils.data.DataLoader(samples, batch_size=predictor.batch_size(batch_size, pending[0]),
                                              num_workers=workers, collate_fn=collate)
        with _progress(console) as progress, ThreadPoolExecutor(_WRITERS) as writers:
            task = progress.add_task("predict", total=len(pending))
            waiting: deque[list[Future]] = deque()
            for batch in batches:
                for sample in batch:
                    if sample.problem is not None:
                        image = pending[sample.index]
                        outcome.skipped.append((str(image.path), sample.problem))
                        console.print(f"[yellow]warning:[/] {escape(str(image.path))}: {escape(sample.problem)}; "
                                      "skipped", highlight=False)
                readable = [sample for sample in batch if sample.problem is None]
                writes = [writers.submit(output.write, pending[sample.index].image_id,
                                         quantised(probability).cpu().numpy())
                          for sample, probability in predictor.maps(readable)]
                waiting.append(writes)
                outcome.predicted += len(writes)
                if len(waiting) > _PENDING_BATCHES:
                    _wait(waiting.popleft())
                progress.advance(task, len(batch))
            while waiting:
                _wait(waiting.popleft())
    output.finish([image.image_id for image in images])
    outcome.seconds = time.perf_counter() - started
    return outcome


def _wait(writes: list[Future]) -> None:
    for write in writes:
        write.result()  # a writer's error (a full disk) stops the job here


def _progress(console: Console) -> Progress:
    """A transient bar with images/s and the time left; nothing when stdout is not a terminal."""
    return Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), _ImagesPerSecond(),
                    TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal)


class _ImagesPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} images/s" if task.speed else "")
