"""The results index: which run folders exist, which are complete, and which may be ranked together.

The run folders are the truth; there is no database to fall out of step with them. Scanning reads
one small file per run (``summary.json``, written last, so its presence is the completion mark) and
nothing else, which keeps a thousand runs well under a second; the per-image scores that the
statistics need are read later, and only for the runs being compared.

Runs are grouped by (data root, splits hash): two runs may be ranked against each other only when
they scored the same images in the same folds, because out-of-fold Dice depends on the folds.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import BenchError

# A folder is a run folder when bench run has written one of these into it (recipe.toml comes first).
_RUN_MARKERS = ("summary.json", "recipe.toml")


@dataclass(frozen=True)
class Run:
    """A complete run: its folder and its ``summary.json``."""

    path: Path
    summary: dict[str, Any]

    @property
    def name(self) -> str:
        """The folder's name; a stage inside a run (``RUN/pseudo``) is named by both, so the pseudo
        stages of two runs stay apart in one leaderboard."""
        if self.summary.get("stage"):
            return f"{self.path.parent.name}/{self.path.name}"
        return self.path.name

    @property
    def recipe(self) -> str:
        return str(self.summary.get("recipe", "?"))

    @property
    def group(self) -> tuple[str, str]:
        """(data root, splits hash): runs in one group scored the same images in the same folds."""
        return str(self.summary.get("data", "?")), str(self.summary.get("splits_hash", "?"))


@dataclass(frozen=True)
class UnfinishedRun:
    """A run folder without a readable ``summary.json``: listed, never ranked."""

    path: Path
    folds_done: int
    reason: str


@dataclass(frozen=True)
class ResultsIndex:
    complete: list[Run]
    unfinished: list[UnfinishedRun]


def scan(targets: list[str], default: Path) -> ResultsIndex:
    """Index the runs named by ``targets`` (run folders, folders of runs, or globs of either).

    With no targets, every run folder directly inside ``default`` (normally ``results/``).
    """
    folders = _run_folders(targets or [str(default)])
    complete, unfinished = [], []
    for folder in folders:
        entry = _read(folder)
        (complete if isinstance(entry, Run) else unfinished).append(entry)
    return ResultsIndex(complete, unfinished)


def group_runs(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs by (data root, splits hash), in the order given."""
    grouped: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        grouped.setdefault(run.group, []).append(run)
    return grouped


def read_software(run: Run) -> str:
    """torch (and CUDA) versions the run used, from its environment.json."""
    try:
        environment = json.loads((run.path / "environment.json").read_text())
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
    path = run.path / "per_image.csv"
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
    for fold, _ in enumerate(run.summary.get("folds", [])):
        path = run.path / f"fold-{fold}" / "history.csv"
        if path.exists():
            frames.append(pd.read_csv(path).assign(fold=fold))
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


def _run_folders(targets: list[str]) -> list[Path]:
    """Expand targets into distinct run folders, sorted by path for a stable order."""
    found: dict[str, Path] = {}
    for target in targets:
        matches = sorted(glob.glob(target)) if glob.has_magic(target) else [target]
        if not matches or not any(os.path.isdir(m) for m in matches):
            raise BenchError(f"{target}: no such run folder or folder of runs")
        for match in matches:
            for folder in _expand(Path(match)):
                found.setdefault(str(folder.resolve()), folder)
    return sorted(found.values(), key=str)


def _expand(path: Path) -> list[Path]:
    """A run folder is itself; any other folder stands for the run folders directly inside it."""
    if not path.is_dir():
        return []
    if _is_run(path):
        return [path]
    with os.scandir(path) as entries:
        return [Path(e.path) for e in entries if e.is_dir() and not e.name.startswith(".") and _is_run(Path(e.path))]


def _is_run(path: Path) -> bool:
    return any((path / marker).is_file() for marker in _RUN_MARKERS)


def _read(folder: Path) -> Run | UnfinishedRun:
    try:
        summary = json.loads((folder / "summary.json").read_bytes())
    except FileNotFoundError:
        return UnfinishedRun(folder, _folds_done(folder), "no summary.json")
    except (OSError, ValueError) as error:
        return UnfinishedRun(folder, _folds_done(folder), f"unreadable summary.json ({error})")
    if not isinstance(summary, dict) or "oof_dice" not in summary:
        return UnfinishedRun(folder, _folds_done(folder), "summary.json has no oof_dice")
    return Run(folder, summary)


def _folds_done(folder: Path) -> int:
    return sum(1 for _ in folder.glob("fold-*/fold.json"))
