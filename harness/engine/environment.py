"""What a result was produced with: versions, device, machine, git revision, the command line.

A number without its environment cannot be compared honestly; ``bench compare`` shows these.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from harness.engine.compute_choice import Decision
from harness.engine.device import Compute, tf32_state

PACKAGES = ("segbench", "torch", "torchvision", "segmentation-models-pytorch", "timm",
            "albumentations", "numpy", "opencv-python-headless", "pydantic", "optuna")


def describe_environment(compute: Compute, decision: Decision | None = None) -> dict[str, Any]:
    """``decision``: how ``auto`` chose the precision and memory format, with every candidate's timing."""
    return {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["bench", *sys.argv[1:]]),
        "device": compute.describe(),
        "precision": compute.precision,
        "channels_last": compute.channels_last,
        "tf32": tf32_state(compute.device),  # null on a CPU; "ieee" is true fp32
        "compute_choice": None if decision is None else asdict(decision),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "git_revision": _git_revision(),
    }


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git_revision() -> str | None:
    """The segbench checkout's revision, with ``-dirty`` when it has uncommitted changes."""
    source = Path(__file__).resolve().parent.parent
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True,
                                  text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return revision + ("-dirty" if dirty else "")
