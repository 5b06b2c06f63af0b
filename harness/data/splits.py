"""Cross-validation folds over car ids, saved once and reused by every recipe.

The 16 views of one car are near-duplicates, so a fold is a set of cars, never of images: a car
split across folds would leak into its own validation. Folds are balanced by total mask area,
because small and large cars are not equally hard. Every run records the splits hash, and
``bench compare`` ranks only runs that share it.

Shuffles use ``random.Random`` rather than NumPy: its sequence for a given seed has stayed the same
across Python versions, so the same seed gives the same folds on another machine.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, get_args

from harness.data.carvana import CarvanaSet, car_id
from harness.errors import BenchError
from harness.io import atomic_write_json

SplitMethod = Literal["rank_by_area", "stratified_by_area"]
# artsiom's code starts from a 35-bin histogram of car areas and merges sparse neighbours.
HISTOGRAM_BINS = 35


@dataclass(frozen=True)
class Splits:
    """k disjoint folds of car ids (each fold sorted) and how they were made."""

    method: SplitMethod
    k: int
    seed: int
    folds: tuple[tuple[str, ...], ...]

    @cached_property
    def hash(self) -> str:
        """sha256 (hex) of the canonical JSON of the content: equal hashes mean equal folds."""
        return hashlib.sha256(_canonical_json(self).encode("utf-8")).hexdigest()

    @cached_property
    def _fold_index(self) -> dict[str, int]:
        return {car: fold for fold, cars in enumerate(self.folds) for car in cars}

    def fold_of(self, car: str) -> int:
        """The fold that validates ``car``; a car the splits never saw means the data changed."""
        try:
            return self._fold_index[car]
        except KeyError:
            raise BenchError(
                f"car {car!r} is in no fold of splits {self.hash[:16]}; "
                "the splits were made for another data set, make new splits"
            ) from None

    def validation_images(self, dataset: CarvanaSet, fold: int) -> tuple[str, ...]:
        """Training image ids whose car belongs to ``fold``."""
        self._check_fold(fold)
        return tuple(i for i in dataset.train if self.fold_of(car_id(i)) == fold)

    def training_images(self, dataset: CarvanaSet, fold: int) -> tuple[str, ...]:
        """Training image ids whose car belongs to any other fold."""
        self._check_fold(fold)
        return tuple(i for i in dataset.train if self.fold_of(car_id(i)) != fold)

    def _check_fold(self, fold: int) -> None:
        if not 0 <= fold < self.k:
            raise BenchError(
                f"fold {fold} does not exist: the splits have k={self.k} folds (0..{self.k - 1})"
            )


def make_splits(car_areas: Mapping[str, int], k: int, method: SplitMethod, seed: int) -> Splits:
    """Deal cars into ``k`` folds with about equal total mask area per fold.

    ``rank_by_area``: sort cars by area, cut into consecutive groups of k, and give each car of a
    group a different fold (a seeded permutation), so every fold gets one car from each area rank.
    ``stratified_by_area`` (artsiom): bin cars by area, merging sparse bins until each holds >= k
    cars, then shuffle each bin and deal it round-robin.
    """
    if method not in get_args(SplitMethod):
        expected = ", ".join(get_args(SplitMethod))
        raise BenchError(f"unknown split method {method!r}; expected one of {expected}")
    if k < 2 or k > len(car_areas):
        raise BenchError(f"cannot make k={k} folds from {len(car_areas)} cars: need 2 <= k <= number of cars")
    rng = random.Random(seed)
    if method == "rank_by_area":
        assignment = _rank_by_area(car_areas, k, rng)
    else:
        assignment = _deal_round_robin(area_bins(car_areas, k), k, rng)
    folds = tuple(tuple(sorted(c for c, f in assignment.items() if f == fold)) for fold in range(k))
    return Splits(method=method, k=k, seed=seed, folds=folds)


def area_bins(car_areas: Mapping[str, int], min_cars: int) -> list[list[str]]:
    """Cars grouped by area: a histogram of HISTOGRAM_BINS equal-width bins, merged left to right
    until each bin holds >= ``min_cars`` cars; a short last bin joins the one before it.

    Each bin then spreads evenly over the folds, so every fold sees the whole range of car sizes.
    """
    cars = sorted(car_areas, key=lambda c: (car_areas[c], c))
    low, high = car_areas[cars[0]], car_areas[cars[-1]]
    width = (high - low) / HISTOGRAM_BINS
    histogram: list[list[str]] = [[] for _ in range(HISTOGRAM_BINS)]
    for car in cars:
        index = int((car_areas[car] - low) / width) if width else 0
        histogram[min(index, HISTOGRAM_BINS - 1)].append(car)
    merged: list[list[str]] = [[]]
    for bin_cars in histogram:
        if len(merged[-1]) >= min_cars:
            merged.append([])
        merged[-1].extend(bin_cars)
    if len(merged) > 1 and len(merged[-1]) < min_cars:
        merged[-2].extend(merged.pop())
    return merged


def write_splits(splits: Splits, path: Path) -> None:
    """Save as ``splits.json`` (content plus its hash), atomically."""
    atomic_write_json(Path(path), {**_content(splits), "hash": splits.hash})


def read_splits(path: Path) -> Splits:
    """Load a ``splits.json``; a hand-edited or corrupted file is refused, not silently used."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"splits file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BenchError(f"splits file {path} is not valid JSON: {error}") from None
    splits = _splits_from_json(path, data)
    if data.get("hash") != splits.hash:
        raise BenchError(
            f"splits file {path} does not match its hash (stored {str(data.get('hash'))[:16]}, "
            f"content {splits.hash[:16]}): it was edited or corrupted; make new splits"
        )
    return splits


def _rank_by_area(car_areas: Mapping[str, int], k: int, rng: random.Random) -> dict[str, int]:
    cars = sorted(car_areas, key=lambda c: (car_areas[c], c))
    assignment: dict[str, int] = {}
    for start in range(0, len(cars), k):
        order = list(range(k))
        rng.shuffle(order)
        assignment.update(zip(cars[start:start + k], order))
    return assignment


def _deal_round_robin(bins: list[list[str]], k: int, rng: random.Random) -> dict[str, int]:
    """The deal continues across bins, so fold sizes differ by at most one car."""
    assignment: dict[str, int] = {}
    position = 0
    for bin_cars in bins:
        shuffled = list(bin_cars)
        rng.shuffle(shuffled)
        for car in shuffled:
            assignment[car] = position % k
            position += 1
    return assignment


def _content(splits: Splits) -> dict[str, Any]:
    return {
        "method": splits.method,
        "k": splits.k,
        "seed": splits.seed,
        "folds": [list(fold) for fold in splits.folds],
    }


def _canonical_json(splits: Splits) -> str:
    return json.dumps(_content(splits), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _splits_from_json(path: Path, data: Any) -> Splits:
    """Check the shape of a parsed ``splits.json`` so that every defect names the file."""
    if not isinstance(data, dict):
        raise BenchError(f"splits file {path} must hold a JSON object with method, k, seed, folds, hash")
    missing = [key for key in ("method", "k", "seed", "folds", "hash") if key not in data]
    if missing:
        raise BenchError(f"splits file {path} lacks key(s) {', '.join(missing)}")
    method, k, seed, folds = data["method"], data["k"], data["seed"], data["folds"]
    if method not in get_args(SplitMethod):
        raise BenchError(f"splits file {path}: unknown method {method!r}")
    if not (type(k) is int and type(seed) is int):
        raise BenchError(f"splits file {path}: k and seed must be integers, got k={k!r}, seed={seed!r}")
    if not (isinstance(folds, list) and len(folds) == k
            and all(isinstance(f, list) and all(isinstance(c, str) for c in f) for f in folds)):
        raise BenchError(f"splits file {path}: folds must be a list of k={k} lists of car ids")
    cars = [car for fold in folds for car in fold]
    if len(cars) != len(set(cars)):
        raise BenchError(f"splits file {path}: a car appears in more than one fold")
    return Splits(method=method, k=k, seed=seed, folds=tuple(tuple(fold) for fold in folds))
