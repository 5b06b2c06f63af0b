"""Folds by car id: whole cars only, reproducible per seed, area-balanced, tamper-evident on disk."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from harness.data.carvana import CarvanaSet
from harness.data.splits import Splits, area_bins, make_splits, read_splits, write_splits
from harness.errors import BenchError

METHODS = ["rank_by_area", "stratified_by_area"]


def _areas(cars: int = 318, seed: int = 0) -> dict[str, int]:
    """Car areas shaped like Carvana's: 16 views x 300k-900k pixels, a few outliers."""
    rng = random.Random(seed)
    areas = {f"car{i:04d}": 16 * rng.randint(300_000, 900_000) for i in range(cars)}
    areas["car0000"] = 16 * 1_500_000
    return areas


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k", [2, 5, 7])
def test_every_car_in_exactly_one_fold(method: str, k: int) -> None:
    areas = _areas()
    splits = make_splits(areas, k, method, seed=1)
    cars = [car for fold in splits.folds for car in fold]
    assert sorted(cars) == sorted(areas)
    assert len(splits.folds) == k
    assert all(list(fold) == sorted(fold) for fold in splits.folds)
    assert max(map(len, splits.folds)) - min(map(len, splits.folds)) <= 1
    for fold, fold_cars in enumerate(splits.folds):
        assert all(splits.fold_of(car) == fold for car in fold_cars)


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_per_seed_and_different_across_seeds(method: str) -> None:
    areas = _areas()
    first = make_splits(areas, 5, method, seed=7)
    assert make_splits(dict(reversed(areas.items())), 5, method, seed=7) == first
    assert make_splits(areas, 5, method, seed=7).hash == first.hash
    other = make_splits(areas, 5, method, seed=8)
    assert other.folds != first.folds and other.hash != first.hash


@pytest.mark.parametrize("method", METHODS)
def test_fold_areas_are_balanced(method: str) -> None:
    areas = _areas()
    splits = make_splits(areas, 5, method, seed=3)
    totals = [sum(areas[car] for car in fold) for fold in splits.folds]
    mean = sum(totals) / len(totals)
    assert max(abs(total - mean) for total in totals) < 0.05 * mean


def test_rank_by_area_takes_one_car_per_rank_group() -> None:
    areas = _areas(cars=100)
    splits = make_splits(areas, 5, "rank_by_area", seed=0)
    ranked = sorted(areas, key=lambda car: (areas[car], car))
    for start in range(0, len(ranked), 5):
        assert sorted(splits.fold_of(car) for car in ranked[start:start + 5]) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("k", [2, 5, 7])
def test_stratified_bins_hold_at_least_k_cars(k: int) -> None:
    areas = _areas()
    bins = area_bins(areas, k)
    assert len(bins) > 1
    assert all(len(cars) >= k for cars in bins)
    assert sorted(car for cars in bins for car in cars) == sorted(areas)
    # Bins are contiguous area ranges: every car of a bin is no larger than any car of the next.
    for left, right in zip(bins, bins[1:]):
        assert max(areas[c] for c in left) <= min(areas[c] for c in right)


def test_stratified_spreads_each_bin_over_the_folds() -> None:
    areas = _areas()
    splits = make_splits(areas, 7, "stratified_by_area", seed=0)
    for cars in area_bins(areas, 7):
        assert len({splits.fold_of(car) for car in cars}) == 7


def test_equal_areas_still_split() -> None:
    areas = {f"car{i}": 100 for i in range(10)}
    splits = make_splits(areas, 3, "stratified_by_area", seed=0)
    assert sorted(map(len, splits.folds)) == [3, 3, 4]


@pytest.mark.parametrize("method", METHODS)
def test_more_folds_than_cars_raises(method: str) -> None:
    with pytest.raises(BenchError, match=r"k=7 folds from 5 cars"):
        make_splits(_areas(cars=5), 7, method, seed=0)


def test_fewer_than_two_folds_raises() -> None:
    with pytest.raises(BenchError, match=r"k=1 folds from 20 cars"):
        make_splits(_areas(cars=20), 1, "rank_by_area", seed=0)


def test_unknown_method_raises() -> None:
    with pytest.raises(BenchError, match="random_kfold"):
        make_splits(_areas(cars=20), 2, "random_kfold", seed=0)  # type: ignore[arg-type]


def _dataset(tmp_path: Path, cars: list[str]) -> CarvanaSet:
    train = tuple(sorted(f"{car}_{view:02d}" for car in cars for view in (1, 2, 3)))
    return CarvanaSet(root=tmp_path, train=train, test=(), mask_source="gif")


def test_validation_and_training_images_keep_cars_whole(tmp_path: Path) -> None:
    areas = _areas(cars=12)
    dataset = _dataset(tmp_path, list(areas))
    splits = make_splits(areas, 3, "rank_by_area", seed=0)
    seen: list[str] = []
    for fold in range(3):
        validation = splits.validation_images(dataset, fold)
        training = splits.training_images(dataset, fold)
        assert sorted(validation + training) == sorted(dataset.train)
        validation_cars = {image.rsplit("_", 1)[0] for image in validation}
        assert validation_cars == set(splits.folds[fold])
        assert not validation_cars & {image.rsplit("_", 1)[0] for image in training}
        seen.extend(validation)
    assert sorted(seen) == sorted(dataset.train)
    with pytest.raises(BenchError, match="fold 3 does not exist"):
        splits.validation_images(dataset, 3)


def test_car_outside_the_splits_raises(tmp_path: Path) -> None:
    areas = _areas(cars=6)
    splits = make_splits(areas, 2, "rank_by_area", seed=0)
    with pytest.raises(BenchError, match="'stranger'"):
        splits.training_images(_dataset(tmp_path, [*areas, "stranger"]), 0)


def test_write_read_round_trip(tmp_path: Path) -> None:
    splits = make_splits(_areas(), 7, "stratified_by_area", seed=11)
    path = tmp_path / "run" / "splits.json"
    write_splits(splits, path)
    stored = json.loads(path.read_text())
    assert stored["hash"] == splits.hash and len(stored["hash"]) == 64
    loaded = read_splits(path)
    assert loaded == splits and loaded.hash == splits.hash
    assert isinstance(loaded, Splits) and loaded.folds == splits.folds


def _tamper(path: Path, edit) -> str:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(BenchError) as caught:
        read_splits(path)
    return str(caught.value)


def _move_a_car(data: dict) -> None:
    data["folds"][1].append(data["folds"][0].pop())


@pytest.mark.parametrize(
    "edit",
    [
        _move_a_car,
        lambda data: data.update(seed=data["seed"] + 1),
        lambda data: data.update(hash="0" * 64),
        lambda data: data.pop("hash"),
        lambda data: data.update(k=3),
        lambda data: data.update(method="by_colour"),
        lambda data: data["folds"][1].append(data["folds"][0][0]),
    ],
    ids=["moved-car", "seed", "hash", "no-hash", "k", "method", "duplicate-car"],
)
def test_tampered_splits_json_raises_naming_the_file(tmp_path: Path, edit) -> None:
    path = tmp_path / "splits.json"
    write_splits(make_splits(_areas(cars=20), 2, "rank_by_area", seed=0), path)
    message = _tamper(path, edit)
    assert str(path) in message and "\n" not in message


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_malformed_splits_json_raises_naming_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "splits.json"
    path.write_text(text)
    with pytest.raises(BenchError, match="splits.json"):
        read_splits(path)


def test_missing_splits_file_raises(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="does not exist"):
        read_splits(tmp_path / "splits.json")
