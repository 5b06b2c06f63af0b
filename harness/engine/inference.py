"""Applying a run's fold models to images: images in, one output per image out.

``bench predict`` (any images, into a folder) and ``bench run``'s test prediction (its data's test
images, into the run's test store) both go through ``predict_images``, so a map written by one is
the map the other writes: bit for bit when the batches and workers are the same (the recipe's batch
size, and nothing resumed or skipped; a kernel may round differently in another batch shape or on
another number of threads).

The work is a pipeline with every stage bounded, so memory stays flat over 100,064 images. Loader
workers decode, preprocess and fit (``harness.data.image_files``). A batch is then run through
every fold model with the recipe's TTA and tiling (``harness.engine.predict``) and its maps
quantised to uint8 levels (``Predictor.predicted``; ``predict.compile`` compiles that step):
- on a GPU, in the main process, batch after batch, while the workers decode the next ones; a few
  writer threads encode the levels (``harness.engine.outputs``) and write them;
- on a CPU, in the workers themselves, one per core, each on one thread: they predict and encode
  whole batches side by side, and only the encoded bytes cross to the main process's writer
  threads. (The main process decoding and predicting on both cores' threads managed 18 full-size
  images/s on 2 cores; docs/scale.md has the figures of both.)
The writers lag at most ``_PENDING_BATCHES`` batches behind. An output says which images it already
holds, and those are never decoded again: a job killed at any moment is resumed by running it again.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator, Protocol, Sequence

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
from harness.errors import BenchError
from harness.memory import HEAP_BLOCK, keep_freed_memory
from harness.recipe.schema import PredictSpec
from harness.runs.folder import FoldFolder

_WRITERS = 4  # threads that threshold, encode and write; OpenCV, zstd and file writes release the GIL
_PENDING_BATCHES = 2  # batches of maps waiting for a writer, at most: the bound on memory
_FUSED_READS = 64  # values per pixel one compiled pass may read (``Predictor._levels``): 8 TTA variants of 8 folds


class Output(Protocol):
    """Where per-image results go (``harness.engine.outputs``). ``encode`` is a pure function, called in
    loader workers or writer threads; ``write`` is called from writer threads, each image once, with
    what ``encode`` made of it; ``finish`` once at the end, with every image of the job in input order."""

    encode: Callable[[np.ndarray], bytes]

    def done(self, image_id: str) -> bool: ...
    def write(self, image_id: str, encoded: bytes) -> None: ...
    def finish(self, images: list[ImageFile]) -> None: ...


@dataclass(frozen=True)
class Predictor:
    """A run's fold models on the compute device, and how its recipe predicts with them."""

    models: list[torch.nn.Module]
    fit: Fit
    normalise: Normalise
    preprocess: A.Compose | None
    spec: PredictSpec
    compute: Compute
    loader_workers: int  # the recipe's (``Assembly.loader_workers``): what decodes for a GPU

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
        return cls(models, recipe_fit(recipe, parts.choices), recipe_normalise(recipe).to(compute.device),
                   parts.transforms("preprocess"), recipe.predict, compute, parts.loader_workers(compute))

    def batch_size(self, wanted: int, first: ImageFile) -> int:
        """``wanted`` on a GPU. On a CPU, the largest batch up to it whose float32 input stays within one
        heap block (``harness.memory``): a larger batch is mapped afresh from the kernel at every step,
        and at full size costs more per image, not less (1918x1280, a 1x1 convolution with flip TTA
        over 2 folds, AVX512, 2 cores: 155 ms an image in batches of 8, 60 in batches of 1, docs/scale.md)."""
        if self.compute.device.type != "cpu":
            return wanted
        height, width = self.fit.input_shape(*(image_shape(first.path) or (1, 1)))
        return max(1, min(wanted, HEAP_BLOCK // (3 * height * width * 4)))

    def levels(self, images: torch.Tensor, shapes: tuple[tuple[int, int], ...]) -> list[torch.Tensor]:
        """A batch of one input shape (uint8 NCHW, on the device) through every fold model with the recipe's
        TTA, each map restored to its original ``shapes[i]``, merged and quantised to uint8 levels: the
        full-size float work of prediction, which ``predict.compile`` compiles as one graph."""
        spec, compute = self.spec, self.compute
        inputs = self.normalise(images, compute.memory_format)
        per_model = variant_logits(self.models, inputs, spec.tta, compute, spec.tiling)
        return [quantised(combine(per_model, position, *shape, self.fit, spec.average, spec.fold_average))
                for position, shape in enumerate(shapes)]

    @functools.cached_property
    def _levels(self) -> Callable[[torch.Tensor, tuple[tuple[int, int], ...]], list[torch.Tensor]]:
        """``levels``, compiled with ``predict.compile``. The compiler may fuse a pass that reads up to
        ``_FUSED_READS`` values per pixel (its CPU default is 12) instead of storing what feeds it. With the
        floor model every fold's logits of every flip are then computed where they are merged, not
        written out as four full-size float32 maps and read back: 4.9-5.7 ms a 1920x1280 image against
        11.1-11.3 (2 folds x 2 flips, AVX512, one thread, ``tools/scale/profile_predict.py``). Around a
        real network, whose convolutions stay library calls, it lets the merging of many folds and TTA
        variants be one pass (LinkNet-34, d4 TTA over 2 folds, 480x320, 2 threads: 2.2-2.5 s either way).
        """
        if not self.spec.compile:
            return self.levels
        # compile_threads 1: compile in the calling thread. A loader worker inherits the parent's pool of
        # compile threads without its threads (a fork copies only the calling thread) and waited on it forever.
        try:
            return torch.compile(self.levels, options={"realize_cpu_acc_reads_threshold": _FUSED_READS,
                                                       "compile_threads": 1})
        except RuntimeError as error:  # an option another PyTorch does not know; its message lists every one it does
            raise BenchError(f"predict.compile: torch.compile refused its options ({str(error).split(',')[0]}); "
                             "set predict.compile = false in the run's recipe.toml") from None

    @torch.no_grad()
    def predicted(self, samples: list[Sample], encode: Callable[[np.ndarray], bytes] | None = None) -> list[Sample]:
        """The batch with each readable image replaced by its map's uint8 levels, on the host, or by what
        ``encode`` makes of them. On a CPU, the loader's ``collate_fn``: the workers predict and encode, and
        only the encoded bytes (tens of kB for a full-size mask) cross to the main process. On a GPU, called
        on each batch in the main process, whose writer threads encode."""
        groups: dict[tuple[int, ...], list[Sample]] = {}
        for sample in samples:
            if sample.problem is None:
                groups.setdefault(tuple(sample.image.shape), []).append(sample)
        done: dict[int, Sample] = {}
        for group in groups.values():
            images = group[0].image[None] if len(group) == 1 else torch.stack([sample.image for sample in group])
            maps = self._levels(images.to(self.compute.device, non_blocking=True), tuple(s.shape for s in group))
            for sample, levels in zip(group, maps):
                levels = levels.cpu().numpy()
                done[sample.index] = replace(sample, image=None, levels=None if encode else levels,
                                             encoded=encode(levels) if encode else None)
        return [done.get(sample.index, sample) for sample in samples]

    def compiled(self, first: ImageFile, batch_size: int, in_workers: bool) -> None:
        """With ``predict.compile``, compile for ``first``'s shape before any image is read, so that a failure
        (no C++ compiler, an operation the compiler cannot take) is one line. Loader workers that predict
        compile again, each on its own, from the compiler's caches (3 s here): a graph compiled before
        the fork ran five times slower in the forked workers (55 ms a full-size image against 11,
        AVX512)."""
        if not self.spec.compile:
            return
        # A CUDA build of PyTorch compiling for the CPU warns "No CUDA runtime is found": noise to the user
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        height, width = image_shape(first.path) or (1, 1)
        images = torch.zeros((batch_size, 3, *self.fit.input_shape(height, width)), dtype=torch.uint8,
                             device=self.compute.device)
        try:
            with torch.no_grad():
                self._levels(images, ((height, width),) * batch_size)
        except torch._dynamo.exc.TorchDynamoException as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise BenchError(f"predict.compile: torch.compile failed ({reason}); set predict.compile = false "
                             "in the run's recipe.toml") from None
        if in_workers:
            torch.compiler.reset()

    def workers(self, requested: int | None, batches: int) -> int:
        """Loader processes for ``batches`` batches: ``requested``, or by default one per core on a CPU (each
        predicts) and the recipe's loader workers on a GPU (they decode); none for a single batch,
        which the main process predicts sooner than it starts a worker."""
        if requested is None:
            requested = len(os.sched_getaffinity(0)) if self.compute.device.type == "cpu" else self.loader_workers
        return min(requested, batches) if batches > 1 else 0


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
                   workers: int | None, console: Console) -> Outcome:
    """Predict every image ``output`` does not hold yet; skip (and report) those that cannot be read.

    ``batch_size`` is what the caller wants; on a CPU it may be lowered (``Predictor.batch_size``).
    ``workers``: loader processes, or None for ``Predictor.workers``' default.
    """
    pending = [image for image in images if not output.done(image.image_id)]
    outcome = Outcome(len(images), resumed=len(images) - len(pending))
    started = time.perf_counter()
    if pending:
        keep_freed_memory()  # before the workers start: they inherit it
        batch_size = predictor.batch_size(batch_size, pending[0])
        in_workers = predictor.compute.device.type == "cpu"
        workers = predictor.workers(workers, -(-len(pending) // batch_size))
        predictor.compiled(pending[0], batch_size, in_workers and workers > 0)
        batches = torch.utils.data.DataLoader(
            ImageSamples(pending, predictor.preprocess, predictor.fit), batch_size=batch_size, num_workers=workers,
            collate_fn=functools.partial(predictor.predicted, encode=output.encode) if in_workers else collate)
        with _progress(console) as progress, ThreadPoolExecutor(_WRITERS) as writers:
            task = progress.add_task("predict", total=len(pending))
            waiting: deque[list[Future]] = deque()
            for batch in _one_line_errors(batches):
                writes = []
                for sample in batch if in_workers else predictor.predicted(batch):
                    image = pending[sample.index]
                    if sample.problem is None:
                        writes.append(writers.submit(_write, output, image.image_id, sample))
                        continue
                    outcome.skipped.append((str(image.path), sample.problem))
                    console.print(f"[yellow]warning:[/] {escape(str(image.path))}: {escape(sample.problem)}; "
                                  "skipped", highlight=False)
                waiting.append(writes)
                outcome.predicted += len(writes)
                if len(waiting) > _PENDING_BATCHES:
                    _wait(waiting.popleft())
                progress.advance(task, len(batch))
            while waiting:
                _wait(waiting.popleft())
    output.finish(list(images))
    outcome.seconds = time.perf_counter() - started
    return outcome


def _one_line_errors(batches: Iterable) -> Iterator:
    """The loader's batches; a ``BenchError`` a worker raised (a model that refuses an input shape, say),
    which the loader re-raises wrapped in the worker's traceback, back to its own one line."""
    try:
        yield from batches
    except BenchError as error:
        text = str(error).strip()
        if not text.startswith("Caught BenchError"):
            raise
        last = text.splitlines()[-1]
        raise BenchError(last.split(": ", 1)[1] if ": " in last else last) from None


def _write(output: Output, image_id: str, sample: Sample) -> None:
    output.write(image_id, sample.encoded if sample.encoded is not None else output.encode(sample.levels))


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
