"""What a ``bench tune`` trial tells Optuna's pruner while its run trains, and when the run stops.

The pruner (``[tune] pruner``) decides what is reported: ``median`` judges every epoch, so it is
told the validation Dice of each epoch at step ``fold x epochs + epoch``; ``wilcoxon`` judges a
trial against the best one instance by instance, so after each fold it is told each validation
car's (group's) mean Dice, at a step fixed per car so that cars pair up across trials.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from harness.runs.folder import FoldFolder, RunFolder


class PruningMonitor:
    """Reports a trial's progress to Optuna as its run trains, and stops the run when told to prune.

    ``reports`` is what the pruner judges: ``epoch`` (validation Dice at step fold x epochs + epoch),
    ``fold`` (each finished fold's cars' mean Dice, the step a number fixed per car), or nothing.
    Folds finished before (a resumed run) are reported too, so a retried trial is judged on
    everything it has done. Once the last fold has trained, pruning would save nothing.
    """

    def __init__(self, trial: optuna.Trial, reports: str | None, folds: int, epochs: int):
        self.trial, self.reports, self.folds, self.epochs = trial, reports, folds, epochs
        self.reported_folds: set[int] = set()
        self.car_scores: dict[str, float] = {}

    def epoch_done(self, fold: int, record: dict[str, float]) -> None:
        if self.reports != "epoch":
            return
        self.trial.report(record["val_dice"], fold * self.epochs + int(record["epoch"]))
        self.trial.set_user_attr("partial_dice", record["val_dice"])
        last = fold == self.folds - 1 and int(record["epoch"]) == self.epochs - 1
        if not last and self.trial.should_prune():
            raise optuna.TrialPruned(f"at fold {fold + 1}, epoch {int(record['epoch']) + 1}")

    def estimated(self, seconds: float) -> None:
        pass

    def fold_done(self, fold: int, folder: FoldFolder) -> None:
        self._report_fold(fold, folder)
        if self.reports == "fold" and fold < self.folds - 1 and self.trial.should_prune():
            raise optuna.TrialPruned(f"after fold {fold + 1}")

    def finish(self, run_folder: Path) -> None:
        """Report folds the run did not show (a finished run found again): the best trial needs all."""
        for fold in RunFolder(run_folder).folds():
            self._report_fold(fold.index, fold)

    def _report_fold(self, fold: int, folder: FoldFolder) -> None:
        if self.reports != "fold" or fold in self.reported_folds:
            return
        self.reported_folds.add(fold)
        scores = pd.read_csv(folder.per_image, dtype={"image": str, "car": str})
        if "car" not in scores:  # a fold written before per-image groups: each image its own
            scores = scores.assign(car=scores["image"])
        cars = scores.groupby("car")["dice"].mean()
        for car, score in cars.items():
            self.trial.report(float(score), _car_step(car))
        self.car_scores.update(cars.to_dict())
        self.trial.set_user_attr("partial_dice", float(np.mean(list(self.car_scores.values()))))


def _car_step(car: str) -> int:
    """A car's step number, the same in every trial: a stable hash of its id."""
    return zlib.crc32(car.encode()) & 0x7FFFFFFF
