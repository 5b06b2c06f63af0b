"""Telling the user what training is doing, and how long the whole run will take.

The estimate comes from the run's own first steps (after one warm-up step, which pays for memory
allocation and kernel selection), so it costs nothing extra and includes the real data loading. It
is printed once, a few steps into the first fold: a faithful Carvana recipe on a CPU would take
weeks, and the user should learn that in seconds, not days. The run's monitor hears of it too; with
``--estimate``, that monitor stops the run there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeRemainingColumn)
from rich.text import Text

WARMUP_STEPS = 1
MEASURED_STEPS = 3


@dataclass
class WorkLeft:
    """How much work the run has left, to turn seconds per step into a duration."""

    folds: int  # left to train
    epochs: int
    steps_per_epoch: int
    batch_size: int
    val_images_per_fold: int
    val_images_per_epoch: int  # the whole fold, or the sample of ``train.validate_images``
    test_images: int
    tta_variants: int
    k: int  # the run's folds, for "fold 2/3" (a resumed run has fewer left)


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def estimate_seconds(step_seconds: float, work: WorkLeft) -> float:
    """Training steps, plus forward passes for validation every epoch (and of the whole fold once more
    when epochs validate a sample of it) and for the test set.

    A forward pass costs about a third of a training step (forward + backward + update).
    """
    image_forward = step_seconds / work.batch_size / 3
    train = work.folds * work.epochs * work.steps_per_epoch * step_seconds
    validated = work.epochs * work.val_images_per_epoch
    if work.val_images_per_epoch < work.val_images_per_fold:
        validated += work.val_images_per_fold
    validation = work.folds * validated * work.tta_variants * image_forward
    test = work.test_images * work.folds * work.tta_variants * image_forward
    return train + validation + test


class SpeedColumn(ProgressColumn):
    """Training steps per second, as rich measures them over its recent window."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.2f} it/s" if task.speed else "")


class ConsoleReporter:
    """A rich progress bar on a terminal, one line per epoch otherwise (logs, CI)."""

    def __init__(self, console: Console, work: WorkLeft, on_estimate: Callable[[float], None] | None = None):
        self.console, self.work, self.on_estimate = console, work, on_estimate
        self.live = console.is_terminal
        self.progress: Progress | None = None
        self.task = None
        self.steps_seen = 0
        self.measure_started: float | None = None
        self.estimated = False
        self.last_val = ""

    def fold_started(self, fold: int, epochs: int, steps_per_epoch: int, first_epoch: int) -> None:
        self.last_val = ""
        if first_epoch:
            self.console.print(f"fold {fold + 1}/{self.work.k}: resumed from its checkpoint after epoch {first_epoch} "
                               f"of {epochs}", highlight=False)
        if not self.live:
            return
        self.close()
        self.progress = Progress(
            TextColumn(f"fold {fold + 1}/{self.work.k}"), BarColumn(), MofNCompleteColumn(),
            SpeedColumn(), TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=epochs * steps_per_epoch,
                                           completed=first_epoch * steps_per_epoch, status="")

    def step_done(self, loss: float) -> None:
        self.steps_seen += 1
        if self.steps_seen == WARMUP_STEPS:
            self.measure_started = time.perf_counter()
        elif not self.estimated and self.steps_seen == WARMUP_STEPS + MEASURED_STEPS:
            self._estimate((time.perf_counter() - self.measure_started) / MEASURED_STEPS)
        if self.progress is not None:
            self.progress.update(self.task, advance=1, status=f"loss {loss:.4f}{self.last_val}")

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {message}", highlight=False)

    def epoch_done(self, fold: int, record: dict[str, float]) -> None:
        line = (f"fold {fold + 1}/{self.work.k} epoch {record['epoch'] + 1}/{self.work.epochs}: "
                f"loss {record['train_loss']:.4f}, val Dice {record['val_dice']:.4f}, {record['seconds']:.0f} s")
        self.console.print(line, highlight=False)
        self.last_val = f", val Dice {record['val_dice']:.4f}"

    def _estimate(self, step_seconds: float) -> None:
        self.estimated = True
        total = estimate_seconds(step_seconds, self.work)
        work = self.work
        self.console.print(
            f"estimate: about {format_duration(total)} for {work.folds} folds x {work.epochs} epochs x "
            f"{work.steps_per_epoch} steps at {step_seconds:.2f} s/step, plus validation and "
            f"{work.test_images} test images", highlight=False,
        )
        if self.on_estimate is not None:
            self.on_estimate(total)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
