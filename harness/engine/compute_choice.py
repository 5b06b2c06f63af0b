"""``train.precision = "auto"`` and ``train.channels_last = "auto"``, chosen by measurement.

Which precision and memory format train fastest depends on the device far more than on the model:
on a CPU with native bf16 (avx512_bf16, AMX), bf16 autocast trains these networks 2.5-3x faster
than fp32; on one with AVX2 only, bf16 is emulated and trains 10x *slower* (LinkNet-34 at 128 px,
batch 8: fp32 1.03 s/step, bf16 9.93 s/step). Neither can be hard-coded, so ``auto`` times a few
training steps of the recipe's own model, loss and optimizer, at its input size and batch, in each
candidate the device supports natively, and takes the fastest.

The decision is cached per (device and CPU flags, threads, torch version, model, loss, optimizer,
input size, batch) under ``$SEGBENCH_CACHE/compute/``, so a run pays for it once; ``bench
benchmark`` reads the same cache to mark the variant ``auto`` picks, and an explicit recipe value
that the cache shows to be far slower than the best is warned about.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from harness.data.loading import Normalise
from harness.engine.device import Compute
from harness.engine.timing import time_steps, train_step
from harness.errors import BenchError
from harness.io import atomic_write_json

# Set to 0 or 1 to override the CPU's bf16 detection: rehearses an AVX2-only machine on one with
# avx512_bf16 (0), or lets a CPU whose flags torch cannot read try bf16 (1).
NATIVE_BF16_ENV = "SEGBENCH_CPU_BF16"
WARMUP_STEPS = 1  # the first step allocates and picks kernels (oneDNN, cuDNN): never timed
CONTENDER = 1.25  # candidates within this factor of the fastest first timing are timed once more
TIE = 0.03  # within 3% of the fastest, the simpler candidate wins: fp32 before bf16, contiguous first
FAR_SLOWER = 1.5  # an explicit recipe value this much slower than the best is warned about
CACHE_VERSION = 1


@dataclass(frozen=True)
class Variant:
    """One way to run a training step: an autocast precision and a memory format."""

    precision: str
    channels_last: bool

    @property
    def name(self) -> str:
        return self.precision + ("+cl" if self.channels_last else "")


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (x86 avx512_bf16 or AMX; aarch64 bf16).

    Without it, oneDNN emulates bf16 through fp32 conversions, and autocast is far slower than fp32.
    """
    forced = os.environ.get(NATIVE_BF16_ENV)
    if forced is not None:
        if forced not in ("0", "1"):
            raise BenchError(f"${NATIVE_BF16_ENV}={forced!r}: expected 0 or 1")
        return forced == "1"
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(check is not None and check() for check in checks):
        return True
    return "bf16" in _aarch64_features()


def _aarch64_features() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("Features"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def candidates(device: torch.device) -> list[Variant]:
    """What ``auto`` may choose on this device: only what it computes natively, simplest first.

    CPU: fp32, and bf16 where the CPU has it, each with and without channels_last. CUDA, each with
    channels_last (what cuDNN's tensor-core kernels want): fp32 (TF32 convolutions), bf16 where the
    card has it, and fp16 (trained with a GradScaler).
    """
    if device.type == "cuda":
        halves = ["bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp16"]
        return [Variant(p, True) for p in ["fp32", *halves]]
    precisions = ["fp32", "bf16"] if native_bf16_cpu() else ["fp32"]
    return [Variant(p, cl) for p in precisions for cl in (False, True)]


@dataclass
class Decision:
    """The chosen variant, the seconds per training step of every candidate, and where they came from."""

    chosen: Variant
    step_seconds: dict[str, float]
    measured_on: str
    cached: bool = False
    setting: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        timings = ", ".join(f"{name} {seconds:.3f}" for name, seconds in self.step_seconds.items())
        source = "cached measurement" if self.cached else "measured now"
        return f"{self.chosen.name} chosen by timing a training step ({source}, s/step: {timings}; {self.measured_on})"


def device_description(device: torch.device) -> str:
    """What a timing depends on besides the model: the device, its flags, threads and torch version."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        where = f"cuda {name} (sm_{major}{minor})"
    else:
        bf16 = "native bf16" if native_bf16_cpu() else "no native bf16"
        threads = torch.get_num_threads()
        where = f"cpu {torch.backends.cpu.get_cpu_capability()} ({bf16}), {threads} thread{'s' if threads > 1 else ''}"
    return f"{where}, torch {torch.__version__}"


class StepTimer:
    """Times one training step of a candidate; a test replaces it to make each candidate win once."""

    def seconds_per_step(self, variant: Variant, step: Callable[[], None], device: torch.device,
                         warmup: int) -> float:
        return time_steps(step, device, warmup, repeats=1)[0]


@dataclass(frozen=True)
class Workload:
    """The training step being timed: the recipe's model, loss and optimizer at its input and batch."""

    build_model: Callable[[], torch.nn.Module]
    make_optimizer: Callable[[Any], torch.optim.Optimizer]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    batch_size: int
    height: int
    width: int
    identity: dict[str, Any]  # what makes two workloads time alike: model, loss, optimizer tables


def choose(device: torch.device, precision: str, channels_last: bool | str, workload: Workload, *,
           timer: StepTimer | None = None, cache: Path | None = None) -> Decision:
    """The fastest candidate that agrees with the recipe's fixed values; ``auto`` leaves a choice open.

    Read from the cache when this workload was timed on this device before; else timed and cached.
    """
    allowed = [v for v in candidates(device)
               if precision in ("auto", v.precision) and channels_last in ("auto", v.channels_last)]
    if not allowed:  # a fixed precision auto does not consider here (fp16 on a CPU): nothing to choose
        allowed = [Variant(precision, bool(channels_last))]
    setting = {"precision": precision, "channels_last": channels_last}
    path = _cache_path(cache, device, workload)
    known = read_cached(path)
    missing = [v for v in allowed if v.name not in known]
    cached = not missing
    if missing:
        known.update(_measure(missing, device, workload, timer or StepTimer()))
        write_cache_file(path, {"measured_on": device_description(device), "workload": workload.identity,
                                "step_seconds": known})
    timings = {v.name: known[v.name] for v in allowed}
    chosen = fastest(allowed, timings)
    return Decision(chosen, timings, device_description(device), cached, setting)


def fastest(allowed: list[Variant], timings: dict[str, float]) -> Variant:
    """The quickest; one within ``TIE`` of it that comes earlier (simpler) in ``allowed`` wins instead."""
    best = min(timings[v.name] for v in allowed)
    return next(v for v in allowed if timings[v.name] <= best * (1 + TIE))


def explicit_warning(device: torch.device, precision: str, channels_last: bool, workload: Workload,
                     cache: Path | None = None) -> str | None:
    """A line for a recipe that fixes both values to a variant known to be far slower than the best.

    Known from the cache (an earlier ``auto`` run or ``bench benchmark`` of this workload), or, for
    bf16 on a CPU that emulates it, from the device alone; nothing is timed for an explicit recipe.
    """
    name = Variant(precision, channels_last).name
    if device.type == "cpu" and precision == "bf16" and not native_bf16_cpu():
        return (f"train.precision = 'bf16' on a CPU without native bf16 ({torch.backends.cpu.get_cpu_capability()}): "
                "autocast emulates it, often 10x slower than fp32; 'auto' measures which is faster")
    known = read_cached(_cache_path(cache, device, workload))
    others = {v.name: known[v.name] for v in candidates(device) if v.name in known}
    if name not in known or not others:
        return None
    best = min(others, key=others.get)
    if known[name] > FAR_SLOWER * others[best]:
        return (f"train.precision/channels_last fix {name}, measured {known[name] / others[best]:.1f}x slower "
                f"per step than {best} here; 'auto' would choose by measurement")
    return None


def _measure(variants: list[Variant], device: torch.device, workload: Workload, timer: StepTimer) -> dict[str, float]:
    """Seconds per step of each variant: one timed step after the warm-up, and the faster of two for
    the contenders (within ``CONTENDER`` of the best), so clear losers cost two steps, not three."""
    model = workload.build_model()  # built once: initialising a large net takes longer than copying it
    steps = {v.name: _training_step(v, copy.deepcopy(model), device, workload) for v in variants}
    seconds = {v.name: timer.seconds_per_step(v, steps[v.name], device, WARMUP_STEPS) for v in variants}
    best = min(seconds.values())
    for variant in variants:
        if seconds[variant.name] <= CONTENDER * best:
            again = timer.seconds_per_step(variant, steps[variant.name], device, warmup=0)
            seconds[variant.name] = min(seconds[variant.name], again)
    return {name: round(value, 4) for name, value in seconds.items()}


def _training_step(variant: Variant, model: torch.nn.Module, device: torch.device,
                   workload: Workload) -> Callable[[], None]:
    """One optimisation step of ``model`` in this variant, on a fixed random batch of the workload's shape."""
    compute = Compute(device, variant.precision, variant.channels_last)
    model = model.to(device, memory_format=compute.memory_format).train()
    optimizer = workload.make_optimizer(model.parameters())
    generator = torch.Generator().manual_seed(0)
    shape = (workload.batch_size, 3, workload.height, workload.width)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    images = Normalise("imagenet").to(device)(images.to(device)).contiguous(memory_format=compute.memory_format)
    masks = (torch.rand(shape[0], 1, *shape[2:], generator=generator) > 0.5).float().to(device)
    return lambda: train_step(model, optimizer, workload.loss, images, masks, compute)


def cache_file(kind: str, key: str, root: Path | None = None) -> Path:
    """Where a measurement of this kind and key is kept: ``$SEGBENCH_CACHE/<kind>/<hash of key>.json``."""
    from harness.data.synthetic import default_cache_root

    folder = (root if root is not None else default_cache_root()) / kind
    return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def write_cache_file(path: Path, value: dict[str, Any]) -> None:
    """Keep a measurement; a cache that cannot be written costs the next run the measurement, nothing else."""
    try:
        atomic_write_json(path, value)
    except BenchError:
        pass


def _cache_path(cache: Path | None, device: torch.device, workload: Workload) -> Path:
    key = json.dumps({"version": CACHE_VERSION, "device": device_description(device), **workload.identity,
                      "batch": workload.batch_size, "input": [workload.width, workload.height]},
                     sort_keys=True, default=str)
    return cache_file("compute", key, cache)


def read_cached(path: Path) -> dict[str, float]:
    """Seconds per step by variant name; empty when never measured (or the file is unreadable)."""
    try:
        return {str(k): float(v) for k, v in json.loads(path.read_text())["step_seconds"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
