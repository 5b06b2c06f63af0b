"""Timing a model: the primitives behind ``bench benchmark`` (``harness.speed``) and the compute
choice (``harness.engine.compute_choice``), and what a full Carvana run would cost at a measured speed.

Measured the way timm's benchmark.py does it: random inputs of the recipe's size already in memory,
warm-up steps first (allocation, kernel selection, compilation), the device synchronised around
every timed step, several steps so the spread can be reported as p50/p95. Peak memory is CUDA's
max allocated on a GPU and the process's peak resident set on a CPU (reset before each variant).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.data.loading import Normalise
from harness.engine.device import Compute
from harness.engine.predict import variant_logits

# The full Carvana run, for the cost estimate (SEED.md): 5088 labelled images, 100,064 test images,
# 1918x1280 padded to 1920x1280.
CARVANA_TRAIN_IMAGES = 5088
CARVANA_TEST_IMAGES = 100_064
CARVANA_PIXELS = 1920 * 1280


@dataclass
class Timing:
    """One variant's throughput: images/s and the per-step spread."""

    variant: str
    batch_size: int
    train_images_per_s: float
    train_step_ms_p50: float
    train_step_ms_p95: float
    infer_images_per_s: float
    infer_tta_images_per_s: float
    peak_memory_mb: float
    compile_seconds: float | None = None
    note: str = ""
    train_peak_fraction: float | None = None  # achieved FLOP/s over this device's matmul peak in this precision
    infer_peak_fraction: float | None = None
    auto: bool = False  # the variant ``auto`` chooses for this recipe here


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """CUDA: reset the allocator's peak. CPU: reset the kernel's peak RSS (Linux ``clear_refs``)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not allowed: the peak then covers the whole process
        pass


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(step: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``step``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    synchronise(device)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        synchronise(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def gflops_per_image(model: torch.nn.Module, height: int, width: int) -> float:
    """Forward-pass GFLOPs of one image, counted by torch's own FlopCounterMode (fp32, on the CPU)."""
    counted = copy.deepcopy(model).float().cpu().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        counted(torch.zeros(1, 3, height, width))
    return counter.get_total_flops() / 1e9


def train_gflops_per_image(model: torch.nn.Module, loss, height: int, width: int) -> float:
    """GFLOPs of one image's training step, forward and backward, counted as ``gflops_per_image`` does."""
    counted = copy.deepcopy(model).float().cpu().train()
    image, mask = torch.zeros(1, 3, height, width), torch.zeros(1, 1, height, width)
    with FlopCounterMode(display=False) as counter:
        loss(counted(image).float(), mask).backward()
    return counter.get_total_flops() / 1e9


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_gflops(device: torch.device, precision: str, max_size: int = 4096) -> float:
    """This device's peak: GFLOP/s of a square matmul in ``precision``, the size grown until it fills the device.

    Sizes double from 256 until one product takes 50 ms (or ``max_size``), so a precision the
    device only emulates (bf16 on an AVX2 CPU: under 1 GFLOP/s) is measured in about a second.
    """
    size, best = 256, 0.0
    while True:
        a = torch.randn(size, size, device=device).to(DTYPES[precision])
        b = torch.randn(size, size, device=device).to(DTYPES[precision])
        seconds = min(time_steps(lambda: torch.mm(a, b), device, warmup=1, repeats=3))
        best = max(best, 2 * size**3 / seconds / 1e9)
        if seconds > 0.05 or size >= max_size:
            return best
        size *= 2


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def measure_variant(
    variant: str,
    model: torch.nn.Module,
    make_optimizer: Callable[[Any], torch.optim.Optimizer],
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    compute: Compute,
    batch_size: int,
    height: int,
    width: int,
    tta: str,
    warmup: int,
    repeats: int,
    compile_model: bool = False,
) -> Timing:
    """Train and inference throughput of one variant; on out-of-memory, halve the batch and retry."""
    note = ""
    while True:
        try:
            return _measure(variant, model, make_optimizer, loss, compute, batch_size, height, width,
                            tta, warmup, repeats, compile_model, note)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
            if not is_out_of_memory(error) or batch_size == 1:
                raise
            if compute.device.type == "cuda":
                torch.cuda.empty_cache()
            note = f"out of memory at batch {batch_size}; measured at batch {batch_size // 2}"
            batch_size //= 2


def _measure(variant, model, make_optimizer, loss, compute, batch_size, height, width, tta, warmup,
             repeats, compile_model, note) -> Timing:
    device = compute.device
    model = copy.deepcopy(model).to(device, memory_format=compute.memory_format)
    optimizer = make_optimizer(model.parameters())
    normalise = Normalise("imagenet").to(device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 3, height, width), dtype=torch.uint8, generator=generator)
    images = normalise(images.to(device), compute.memory_format)
    masks = (torch.rand(batch_size, 1, height, width, generator=generator) > 0.5).float().to(device)
    reset_peak_memory(device)

    compile_seconds = None
    trained = model
    if compile_model:
        started = time.perf_counter()
        trained = torch.compile(model)
        train_step(trained, optimizer, loss, images, masks, compute)
        synchronise(device)
        compile_seconds = time.perf_counter() - started

    model.train()
    train = time_steps(lambda: train_step(trained, optimizer, loss, images, masks, compute), device, warmup, repeats)
    model.eval()
    plain = time_steps(lambda: variant_logits([trained], images, "none", compute), device, warmup, repeats)
    with_tta = time_steps(lambda: variant_logits([trained], images, tta, compute), device, 1, repeats)
    return Timing(
        variant=variant, batch_size=batch_size,
        train_images_per_s=_significant(batch_size / float(np.median(train))),
        train_step_ms_p50=round(1000 * float(np.percentile(train, 50)), 1),
        train_step_ms_p95=round(1000 * float(np.percentile(train, 95)), 1),
        infer_images_per_s=_significant(batch_size / float(np.median(plain))),
        infer_tta_images_per_s=_significant(batch_size / float(np.median(with_tta))),
        peak_memory_mb=round(peak_memory_mb(device), 1),
        compile_seconds=None if compile_seconds is None else round(compile_seconds, 1),
        note=note,
    )


def _significant(value: float) -> float:
    """Four significant digits: full-size CPU rates are small (0.04 images/s), GPU ones large."""
    return float(f"{value:.4g}")


def train_step(model, optimizer, loss, images, masks, compute: Compute) -> None:
    """One bare optimisation step: what both the model timing and the overhead baseline measure."""
    with compute.autocast():
        logits = model(images)
    value = loss(logits.float(), masks)
    value.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@dataclass
class Cost:
    """The faithful recipe on the full Carvana set, from measured throughput (see ``carvana_cost``)."""

    train_hours: float
    test_hours: float
    total_hours: float
    assumption: str


def carvana_cost(train_images_per_s: float, infer_tta_images_per_s: float, measured_pixels: int,
                 folds: int, epochs: int, carvana_pixels: int = CARVANA_PIXELS) -> Cost:
    """Hours for the faithful recipe on one device of this kind, over the full Carvana set.

    Training: ``folds`` models, each ``epochs`` passes over (folds - 1)/folds of 5088 images, plus
    every epoch's validation of the held-out share, with the recipe's TTA as the engine does it. Test:
    100,064 images through every fold's model, with TTA. Throughput measured at a smaller input is
    scaled by the pixel ratio: a fully convolutional network's work grows linearly with the pixels,
    which holds once the device is saturated (small inputs can underfill a GPU, so small-input
    figures flatter it). ``carvana_pixels`` is what the recipe feeds its network per Carvana image:
    1920x1280 when it pads, its fixed input size when it resizes (artsiom's 1024x1024).
    """
    scale = carvana_pixels / measured_pixels
    train_images = CARVANA_TRAIN_IMAGES * (folds - 1) * epochs
    validation_images = CARVANA_TRAIN_IMAGES * epochs
    train_seconds = (train_images / train_images_per_s + validation_images / infer_tta_images_per_s) * scale
    test_seconds = CARVANA_TEST_IMAGES * folds / infer_tta_images_per_s * scale
    return Cost(
        train_hours=round(train_seconds / 3600, 1), test_hours=round(test_seconds / 3600, 1),
        total_hours=round((train_seconds + test_seconds) / 3600, 1),
        assumption=f"measured at {measured_pixels} px per image, scaled x{scale:.1f} to the {carvana_pixels} px "
                   "a Carvana image is at this recipe's input",
    )
