"""Where a run computes, and how: device, autocast precision and memory format.

The device resolves here; a recipe's ``"auto"`` precision and memory format are chosen by timing
its own training step (``harness.engine.compute_choice``), since the fastest differs from CPU to CPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch

from harness.errors import BenchError

Precision = Literal["fp32", "bf16", "fp16"]
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Compute:
    device: torch.device
    precision: Precision
    channels_last: bool

    def autocast(self):
        """The autocast context for forward passes; a no-op in fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def describe(self) -> str:
        """``cuda:0 (NVIDIA H200), bf16, channels_last`` or ``cpu (AVX512), fp32``: a CPU by its capability,
        which decides how fast each precision runs on it."""
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
        else:
            name = torch.backends.cpu.get_cpu_capability()
        layout = ", channels_last" if self.channels_last else ""
        return f"{self.device} ({name}), {self.precision}{layout}"


def set_tf32(device: torch.device, tf32: bool | None) -> None:
    """``train.tf32`` on a CUDA device: fp32 convolutions and matmuls as TF32 (``True``) or true fp32
    (``False``, "ieee" in PyTorch's words); ``None`` leaves PyTorch's defaults. Process-wide flags,
    set before the compute choice times anything, so it times what the run will compute."""
    if device.type != "cuda" or tf32 is None:
        return
    torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = "tf32" if tf32 else "ieee"


def tf32_state(device: torch.device) -> dict[str, str] | None:
    """What fp32 convolutions and matmuls compute in on this CUDA device (``environment.json``); None on a CPU."""
    if device.type != "cuda":
        return None
    return {"convolutions": torch.backends.cudnn.conv.fp32_precision, "matmul": torch.backends.cuda.matmul.fp32_precision}


def resolve_device(device: str | None) -> torch.device:
    """``--device``, or the first GPU when there is one and the CPU when there is not."""
    chosen = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    if chosen.type not in ("cpu", "cuda"):
        raise BenchError(f"--device {device}: expected cpu, cuda or cuda:N")
    return chosen


def check_precision(device: torch.device, precision: str) -> None:
    """A precision the device cannot run at all is a recipe error, found before anything is timed."""
    if precision == "fp16" and device.type == "cpu":
        raise BenchError("train.precision = 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on a CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BenchError(f"train.precision = 'bf16': {torch.cuda.get_device_name(device)} has no bf16; use 'fp16' or 'auto'")
