"""The results index: which run folders exist, which are complete, and which may be ranked together.

The run folders are the truth; there is no database to fall out of step with them. Scanning reads
one small file per run (``summary.json``, written last, so its presence is the completion mark) and
nothing else, which keeps a thousand runs well under a second; the per-image scores that the
statistics need are read later, and only for the runs being compared.

Which runs may be ranked against each other is ``harness.runs.folder.data_groups``: those scored on
the same images and masks (one data hash), whatever their folds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import BenchError
from harness.runs.folder import Run, UnfinishedRun, open_run, resolve_targets

@dataclass(frozen=True)
class ResultsIndex:
    complete: list[Run]
    unfinished: list[UnfinishedRun]
    skipped: list[str]  # targets that name no run, "PATH (why)", said once under the output


def scan(targets: list[str], default: Path) -> ResultsIndex:
    """Index the runs named by ``targets`` (``harness.runs.folder.RUNS_HELP``); with no targets, every
    run folder directly inside ``default`` (normally ``results/``)."""
    complete, unfinished = [], []
    found = resolve_targets(targets, default)
    for folder in found.folders:
        entry = open_run(folder)
        (complete if isinstance(entry, Run) else unfinished).append(entry)
    return ResultsIndex(complete, unfinished, found.skipped)


def read_software(run: Run) -> str:
    """torch (and CUDA) versions the run used, from its environment.json."""
    try:
        environment = json.loads(run.folder.environment.read_text())
    except (OSError, ValueError):
        return "?"
    torch = environment.get("packages", {}).get("torch") or "?"
    return f"torch {torch}" + (f", CUDA {environment['cuda']}" if environment.get("cuda") else "")


def latest_benchmark(run: Run) -> dict[str, Any] | None:
    """The newest ``bench benchmark`` result of this run's recipe on the same device, if any.

    Benchmarks live beside the runs, in ``<results>/benchmarks/``; the device string must match,
    since a throughput measured elsewhere says nothing about this run's cost.
    """
    found = []
    for path in (run.path.parent / "benchmarks").glob(f"{run.recipe}-*.json"):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if result.get("recipe") == run.recipe and result.get("environment", {}).get("device") == run.summary.get("device"):
            found.append(result)
    return max(found, key=lambda result: result.get("measured_at", ""), default=None)


def read_per_image(run: Run) -> pd.DataFrame:
    """``image,car,fold,dice`` of every training image of a complete run."""
    path = run.folder.per_image
    try:
        table = pd.read_csv(path, dtype={"image": str, "car": str, "fold": int, "dice": float})
    except (OSError, ValueError) as error:
        raise BenchError(f"{path}: cannot read per-image scores ({error})") from None
    missing = {"image", "car", "fold", "dice"} - set(table.columns)
    if missing:
        raise BenchError(f"{path}: missing columns {', '.join(sorted(missing))} (expected image,car,fold,dice)")
    return table


def read_history(run: Run) -> pd.DataFrame:
    """Every fold's ``history.csv`` stacked, with a ``fold`` column (empty when none was written)."""
    frames = []
    for fold, _ in enumerate(run.summary.folds):
        path = run.folder.fold(fold).history
        if path.exists():
            try:
                frames.append(pd.read_csv(path).assign(fold=fold))
            except (OSError, ValueError) as error:  # pandas' parser errors are ValueErrors
                raise BenchError(f"{path}: cannot read the learning curve ({error})") from None
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# Validation Dice (mean of folds) this much above every earlier epoch's, at the last epoch: the run
# stopped while still improving, so its rank measures its budget more than its recipe.
STILL_RISING = 0.002


def still_rising(history: pd.DataFrame) -> bool | None:
    """Whether the folds' mean validation Dice gained more than ``STILL_RISING`` at the last epoch
    over the best epoch before it; ``None`` when there is no curve to judge (fewer than two epochs)."""
    if history.empty or "val_dice" not in history:
        return None
    mean = history.groupby("epoch")["val_dice"].mean().sort_index()
    if len(mean) < 2:
        return None
    return bool(mean.iloc[-1] - mean.iloc[:-1].max() > STILL_RISING)


def shortest_fold_seconds(history: pd.DataFrame) -> float | None:
    """Training seconds of the run's shortest fold (``None`` for runs older than the column): within
    it, every fold of the run can be scored."""
    if history.empty or "train_seconds" not in history:
        return None
    return float(history.groupby("fold")["train_seconds"].max().min())


def dice_within(history: pd.DataFrame, seconds: float) -> float | None:
    """Mean over folds of the best validation Dice each fold reached within ``seconds`` of training:
    what the run would score had every fold been stopped at that budget (``None`` when unknown)."""
    if history.empty or "train_seconds" not in history:
        return None
    best = [fold.loc[fold["train_seconds"] <= seconds * (1 + 1e-9), "val_dice"].max()
            for _, fold in history.groupby("fold")]
    return None if any(pd.isna(b) for b in best) else float(sum(best) / len(best))
