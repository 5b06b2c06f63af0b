"""Finding the runs an ensemble is made of, and refusing any set that cannot be merged honestly.

Runs are named as folders, as names under the results folder, or as globs. They can be merged only
when they are complete (``summary.json``), were scored on the same folds (same splits hash: out-of-fold
maps of different folds would let one run's training images leak into the other's validation), and
hold maps of exactly the same images at the same sizes, both out-of-fold and test.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path

from harness.errors import BenchError
from harness.runs.probabilities import ProbabilityMaps

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Run:
    """One complete run folder, with its out-of-fold and test map stores opened (nothing read yet)."""

    folder: Path
    summary: dict
    oof: ProbabilityMaps
    test: ProbabilityMaps

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def oof_dice(self) -> float:
        return float(self.summary["oof_dice"])


def resolve_runs(patterns: list[str], results: Path) -> list[Path]:
    """Folders for each pattern (a folder, a run name under ``results``, or a glob), in order, once each."""
    folders: list[Path] = []
    for pattern in patterns:
        if _GLOB_CHARS & set(pattern):
            matches = sorted(glob.glob(pattern)) or sorted(glob.glob(str(results / pattern)))
            found = [Path(match) for match in matches if Path(match).is_dir()]
            if not found:
                raise BenchError(f"{pattern!r} matches no run folder (also tried under {results})")
        elif Path(pattern).is_dir():
            found = [Path(pattern)]
        elif (results / pattern).is_dir():
            found = [results / pattern]
        else:
            raise BenchError(f"run {pattern!r} not found: no folder {pattern} nor {results / pattern}")
        folders += [folder for folder in found if folder.resolve() not in {f.resolve() for f in folders}]
    return folders


def open_runs(folders: list[Path]) -> list[Run]:
    """Open every run and check that they can be merged; the first problem is one ``BenchError``."""
    if not folders:
        raise BenchError("no runs to ensemble")
    runs = [_open_run(folder) for folder in folders]
    first = runs[0]
    for run in runs[1:]:
        if run.summary.get("splits_hash") != first.summary.get("splits_hash"):
            raise BenchError(
                f"runs do not share splits: {run.name} (splits {str(run.summary.get('splits_hash'))[:12]}) vs "
                f"{first.name} (splits {str(first.summary.get('splits_hash'))[:12]}); "
                "out-of-fold maps of different folds cannot be merged"
            )
        for kind in ("oof", "test"):
            _check_same_images(kind, first, run)
    return runs


def top_runs(runs: list[Run], k: int) -> list[Run]:
    """The ``k`` runs with the highest out-of-fold Dice (ties keep the given order)."""
    if k < 1:
        raise BenchError(f"--top {k}: expected a positive number of runs")
    return sorted(runs, key=lambda run: -run.oof_dice)[:k]


def _open_run(folder: Path) -> Run:
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise BenchError(f"run {folder} is unfinished (no summary.json); finish it with bench run --resume")
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as error:
        raise BenchError(f"{summary_path}: cannot read ({error})") from None
    for key in ("splits_hash", "data", "oof_dice"):
        if key not in summary:
            raise BenchError(f"{summary_path}: no {key!r}; is this a segbench run folder?")
    for store in ("oof_maps", "test_maps"):
        if not (folder / f"{store}.json").is_file() or not (folder / f"{store}.u8").is_file():
            raise BenchError(f"run {folder} has no {store}.json/.u8: nothing to merge")
    return Run(folder, summary, ProbabilityMaps.open(folder / "oof_maps"), ProbabilityMaps.open(folder / "test_maps"))


def _check_same_images(kind: str, first: Run, run: Run) -> None:
    a, b = getattr(first, kind), getattr(run, kind)
    if a.shapes == b.shapes:
        return
    only_a = [image_id for image_id in a.ids if image_id not in b]
    only_b = [image_id for image_id in b.ids if image_id not in a]
    label = "out-of-fold" if kind == "oof" else "test"
    if only_a or only_b:
        example = f"{only_a[0]} only in {first.name}" if only_a else f"{only_b[0]} only in {run.name}"
        raise BenchError(f"runs {first.name} and {run.name} cover different {label} images "
                         f"({len(only_a)} + {len(only_b)} differ, e.g. {example})")
    differ = next(image_id for image_id in a.ids if a.shapes[image_id] != b.shapes[image_id])
    raise BenchError(f"runs {first.name} and {run.name} hold {label} maps of different sizes for {differ}: "
                     f"{a.shapes[differ]} vs {b.shapes[differ]}")
