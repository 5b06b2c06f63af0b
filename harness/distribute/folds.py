"""A run's folds trained at once: one worker process per device on this host (``--devices``), or one
job per fold on a cluster through submitit (``--launcher slurm``, or ``local`` to try it here).

Every worker is ``bench run RECIPE --folds K --device D`` (``harness.engine.run``): it trains its fold
into the one run folder, and the worker that finishes the last fold of a stage assembles it. So this
module only hands out folds and reports how each ended; the run folder's markers are the only state,
and a second ``bench run`` (with or without workers) goes on from them.

One fold per device rather than one fold over all devices (DistributedDataParallel): at the size of
these networks the folds are independent jobs of equal length, so k folds on k GPUs take one fold's
time with no communication at all (nnU-Net gives the same advice).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console

from harness.engine.run import RunRequest, check_folds, check_joinable, run_folder, run_recipe, stage_to_train
from harness.errors import BenchError
from harness.runs.folder import FoldFolder, RunFolder

@dataclass(frozen=True)
class Worker:
    """How to start one fold's worker: the ``bench`` arguments of the run, less the fold and device."""

    bench_args: list[str]  # e.g. [--plugins-dir D] run RECIPE --profile quick --results R --name N
    env: dict[str, str]

    def command(self, fold: int, device: str | None) -> list[str]:
        device_args = [] if device is None else ["--device", device]
        return [sys.executable, "-m", "harness.cli", *self.bench_args, "--folds", str(fold), *device_args]


@dataclass(frozen=True)
class Ended:
    """How one fold's worker, or one job, ended."""

    fold: int
    where: str  # the device, or the job
    log: Path
    seconds: float
    error: str | None = None  # the worker's last line when it failed

    @property
    def failed(self) -> bool:
        return self.error is not None


def parse_devices(text: str) -> list[str]:
    """``--devices cuda:0,cuda:1`` or ``cpu,cpu``: each device checked here, before anything starts."""
    named = [_device_name(part.strip()) for part in text.split(",") if part.strip()]
    if not named:
        raise BenchError(f"--devices {text!r}: expected devices separated by commas, e.g. cuda:0,cuda:1 or cpu,cpu")
    twice = sorted({d for d in named if d != "cpu" and named.count(d) > 1})
    if twice:
        raise BenchError(f"--devices names {twice[0]} twice: one fold per GPU (two would share its memory and "
                         "compute); only cpu may be named more than once, to share out its cores")
    for device in named:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BenchError(f"--devices {device}: CUDA is not available on this machine (use --devices cpu)")
        if device.startswith("cuda") and int(device[5:]) >= torch.cuda.device_count():
            raise BenchError(f"--devices {device}: this machine has {torch.cuda.device_count()} CUDA devices, "
                             f"numbered 0 to {torch.cuda.device_count() - 1}")
    return named


def _device_name(text: str) -> str:
    """``cuda`` is ``cuda:0``, so that naming a GPU twice is seen whichever way it is written."""
    if text == "cuda":
        return "cuda:0"
    if text == "cpu" or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise BenchError(f"--devices {text}: expected cpu, cuda or cuda:N")


Start = Callable[[RunFolder, list[int]], list[Ended]]  # trains these folds of this stage; how each ended


def train_folds(request: RunRequest, start: Start, console: Console) -> Path:
    """Train the run's folds (``request.folds``, or all) with workers from ``start``, stage by stage,
    until the run is complete or only folds outside ``request.folds`` are left; return the run folder.

    ``start(stage, folds)`` trains the given folds of the stage and says how each ended. A stage
    whose folds are all trained but which is not assembled (its last worker failed after its fold)
    gets one worker on a finished fold, which trains nothing and assembles.
    """
    recipe, folder = run_recipe(request), run_folder(request)
    wanted = list(request.folds) if request.folds is not None else list(range(recipe.folds.k))
    check_folds(tuple(wanted), recipe.folds.k)
    check_joinable(folder, recipe)
    stages_tried: list[Path] = []
    while (stage := stage_to_train(folder, recipe)) is not None:
        if stages_tried.count(stage.path) == 2:
            raise BenchError(f"{stage.path}: every fold is trained but the stage was not assembled; run "
                             f"bench run with --resume to see why")
        stages_tried.append(stage.path)
        todo = [k for k in wanted if not stage.fold(k).done()]
        if not todo and any(not stage.fold(k).done() for k in range(recipe.folds.k)):
            break  # the folds asked for are done; others belong to other processes
        label = "the pseudo-label stage" if stage.path != folder.path else "the run"
        console.print(f"{label}: {len(todo) or 'no'} folds to train ({', '.join(map(str, todo)) or 'assembly only'})",
                      highlight=False)
        ended = start(stage, todo or wanted[:1])
        failed = [e for e in ended if e.failed]
        if failed:
            raise BenchError("; ".join(f"fold {e.fold} failed on {e.where}: {e.error} (log: {e.log})" for e in failed)
                             + ". The other folds are kept: run the same command again to retry")
    return folder.path


def on_devices(worker: Worker, devices: list[str], console: Console) -> Start:
    """``start`` for ``train_folds``: one worker thread per device, each taking the next fold from a
    shared queue and running its worker process to the end. A CPU named n times gives each of its
    workers 1/n of the cores (``OMP_NUM_THREADS``, unless it is set), so they do not fight over them."""
    cpu_workers = devices.count("cpu")
    threads_each = max(1, (os.cpu_count() or 1) // max(cpu_workers, 1))

    def start(stage: RunFolder, folds: list[int]) -> list[Ended]:
        queue, ended, lock = deque(folds), [], threading.Lock()

        def work(device: str) -> None:
            while True:
                with lock:
                    if not queue:
                        return
                    fold = queue.popleft()
                log = stage.fold(fold).log
                log.parent.mkdir(parents=True, exist_ok=True)
                env = {**os.environ, **worker.env}
                if device == "cpu":
                    env.setdefault("OMP_NUM_THREADS", str(threads_each))  # the user's own setting is obeyed
                console.print(f"fold {fold} -> {device} (log: {log})", highlight=False)
                began = time.perf_counter()
                with open(log, "ab") as output:
                    code = subprocess.call(worker.command(fold, device), stdout=output, stderr=subprocess.STDOUT,
                                           env=env)
                error = None if code == 0 else f"exit {code}, {_last_line(log)}"
                done = Ended(fold, device, log, time.perf_counter() - began, error)
                with lock:
                    ended.append(done)
                    console.print(_describe_end(done, stage.fold(fold)), highlight=False)

        threads = [threading.Thread(target=work, args=(device,), daemon=True) for device in devices]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sorted(ended, key=lambda e: e.fold)

    return start


def _describe_end(ended: Ended, fold: FoldFolder) -> str:
    if ended.failed or not fold.done():
        return f"fold {ended.fold} on {ended.where}: failed after {ended.seconds:.0f} s ({ended.error})"
    record = fold.read()
    return (f"fold {ended.fold} on {record.get('device', ended.where)}: val Dice {record['val_dice']:.4f}, "
            f"{ended.seconds:.0f} s")


def _last_line(log: Path) -> str:
    """The worker's own one-line error, which is the last line it wrote."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"
