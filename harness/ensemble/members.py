"""The runs an ensemble is made of, and refusing any set that cannot be merged honestly.

Runs are named as ``harness.runs.folder.resolve_runs`` resolves them. They can be merged only
when they are complete (``summary.json``), were scored on the same labelled data (one data hash,
``harness.runs.folder.data_groups``), and hold maps of exactly the same images at the same sizes,
both out-of-fold and test.

Their folds may differ. A member never predicts out of fold a car it trained on, whatever its
splits, so every image's merged out-of-fold map is made of honest predictions only, one per member,
and weights and threshold chosen on those maps see each image once per member, never its label
through a member's own training. Test maps average every fold's model of each member, as with one
set of folds. docs/results.md ("Runs on other folds") says where this stops being exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable

import numpy as np

from harness.errors import BenchError
from harness.runs.folder import Run, RunFolder, data_groups, different_data
from harness.runs.probabilities import ProbabilityMaps


def open_runs(folders: list[Path]) -> list[Run]:
    """Open every run and check that they can be merged; the first problem is one ``BenchError``."""
    if not folders:
        raise BenchError("no runs to ensemble")
    runs = [_open_run(folder) for folder in folders]
    groups = data_groups(runs)
    if len(groups) > 1:
        raise different_data(groups, "merge", "their out-of-fold maps cannot be scored against one truth")
    first = runs[0]
    for run in runs[1:]:
        for kind in ("oof", "test"):
            _check_same_images(kind, first, run)
    return runs


def top_runs(runs: list[Run], k: int) -> list[Run]:
    """The ``k`` runs with the highest out-of-fold Dice (ties keep the given order)."""
    if k < 1:
        raise BenchError(f"--top {k}: expected a positive number of runs")
    return sorted(runs, key=lambda run: -run.oof_dice)[:k]


def _open_run(path: Path) -> Run:
    folder = RunFolder(path)
    run = Run(folder, folder.read_summary())
    run.oof, run.test  # opened now, so a missing or damaged store stops the ensemble before any work
    return run


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


class MeanMaps:
    """The plain mean of several runs' maps of one split, read image by image like one store."""

    def __init__(self, stores: list[ProbabilityMaps]):
        self.stores = stores
        self.shapes, self.ids = stores[0].shapes, stores[0].ids

    def read_float(self, image_id: str) -> np.ndarray:
        return plain_mean(store.read_float(image_id) for store in self.stores)


def plain_mean(maps: Iterable[np.ndarray]) -> np.ndarray:
    """The float32 mean of fresh maps, read one at a time (the first is summed into, so pass copies).

    The one way a group's map is computed: the exact test pass (``harness.ensemble.exact``) runs it on
    gathered pixels and must get the very values ``MeanMaps`` gives.
    """
    maps = iter(maps)
    total, count = next(maps), 1
    for probability in maps:
        total += probability
        count += 1
    return total / count


@dataclass(frozen=True)
class Group:
    """An ensemble member made of several runs merged first by their plain mean, as the winning merge
    used alexander's six configs x 5 folds: one map, one weight. It reads like a run (``name``,
    ``oof``, ``test``) wherever the ensemble reads members."""

    name: str
    runs: tuple[Run, ...]

    @cached_property
    def oof(self) -> MeanMaps:
        return MeanMaps([run.oof for run in self.runs])

    @cached_property
    def test(self) -> MeanMaps:
        return MeanMaps([run.test for run in self.runs])


def runs_of(member: Run | Group) -> tuple[Run, ...]:
    """The runs a member is made of: itself, or a group's."""
    return member.runs if isinstance(member, Group) else (member,)
