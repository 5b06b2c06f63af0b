"""Folds by car id: whole cars only, reproducible per seed, area-balanced, tamper-evident on disk."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.data.carvana import car_id, open_carvana
from harness.data.dataset import DataFolder, group_ids
from harness.data.splits import (Splits, area_bins, kfold, make_splits, rank_mod_k, read_folds_csv, read_splits,
                                 splits_for, stratified_kfold, write_folds_csv, write_splits)
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


def _dataset(tmp_path: Path, cars: list[str]) -> DataFolder:
    train = tuple(sorted(f"{car}_{view:02d}" for car in cars for view in (1, 2, 3)))
    return DataFolder(root=tmp_path, layout="carvana", train=train, test=(), image_files={}, test_files={},
                      test_dir=tmp_path / "test", mask_source="gif", groups={i: car_id(i) for i in train})


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



# ---------------------------------------------------------------------------------------------------
# The originals' folds: rank % k by one view or the total area, KFold, and folds files


def _carvana_with_areas(root: Path, areas: dict[str, list[int]], size: tuple[int, int] = (16, 12)) -> Path:
    """A Carvana-layout folder whose mask ``<car>_<NN>`` has ``areas[car][NN - 1]`` car pixels
    (the first ones in raster order), as Carvana-style palette GIFs; images are blank JPEGs."""
    width, height = size
    (root / "train").mkdir(parents=True)
    (root / "train_masks").mkdir()
    blank = root / "blank.jpg"
    Image.new("RGB", size).save(blank, "JPEG")
    for car, views in areas.items():
        for view, area in enumerate(views, start=1):
            shutil.copy(blank, root / "train" / f"{car}_{view:02d}.jpg")
            mask = Image.frombytes("P", size, bytes([1] * area + [0] * (width * height - area)))
            mask.putpalette([0, 0, 0, 255, 255, 255])
            mask.save(root / "train_masks" / f"{car}_{view:02d}_mask.gif", "GIF")
    blank.unlink()
    return root


def _distinct_areas(cars: int, seed: int) -> dict[str, list[int]]:
    """16 view areas per car, with no two cars equal in view 05 or in total (the original leaves ties
    in set order, so a tie could not be compared)."""
    rng = random.Random(seed)
    while True:
        areas = {f"{rng.getrandbits(48):012x}": [rng.randint(20, 180) for _ in range(16)] for _ in range(cars)}
        if len({a[4] for a in areas.values()}) == len({sum(a) for a in areas.values()}) == cars:
            return areas


def _original_generate_folds(input_data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """kaggle_carvana_segmentation albu/src/generate_folds.py:11-32, line for line (the config file
    replaced by the argument): the fma (all views) and f04a (view 05) tables, id,square,fold."""
    TRAIN_DATA = os.path.join(input_data_dir, 'train_masks')
    train_files = os.listdir(TRAIN_DATA)
    train_ids = {s[:-12] for s in train_files}

    squares_fma = {}
    squares_f04a = {}
    for car_idx in train_ids:
        fma = 0
        for view_idx in range(1, 17, 1):
            im = np.asarray(Image.open(os.path.join(TRAIN_DATA, car_idx + "_" + str(view_idx).zfill(2) + "_mask.gif")))
            if view_idx == 5:
                squares_f04a[car_idx] = np.mean(im)
            fma += np.mean(im)
        squares_fma[car_idx] = fma

    squares_fma = OrderedDict(sorted(squares_fma.items(), key=lambda x: x[1]))
    squares_f04a = OrderedDict(sorted(squares_f04a.items(), key=lambda x: x[1]))
    fma_rows = [(i, square * 100, fold % 5) for fold, (i, square) in enumerate(squares_fma.items())]
    f04a_rows = [(i, square * 100, fold % 5) for fold, (i, square) in enumerate(squares_f04a.items())]

    fma_df = pd.DataFrame(fma_rows, columns=['id', 'square', 'fold'])
    f04a_df = pd.DataFrame(f04a_rows, columns=['id', 'square', 'fold'])
    return fma_df, f04a_df


@pytest.fixture(scope="module")
def ranked_set(tmp_path_factory) -> Path:
    """23 cars of 16 views (16x12): enough for several rounds of rank % 5."""
    return _carvana_with_areas(tmp_path_factory.mktemp("ranked") / "carvana", _distinct_areas(23, seed=5))


def _as_table(splits: Splits) -> dict[str, int]:
    return {car: fold for fold, cars in enumerate(splits.folds) for car in cars}


def test_rank_mod_k_by_view_05_is_the_originals_f04a(ranked_set: Path) -> None:
    _, f04a = _original_generate_folds(ranked_set)
    splits = splits_for(open_carvana(ranked_set), "rank_mod_k", 5, seed=0, view="05")
    assert _as_table(splits) == dict(zip(f04a["id"], f04a["fold"]))
    assert (splits.method, splits.view, splits.seed) == ("rank_mod_k", "05", None)


def test_rank_mod_k_by_total_area_is_the_originals_fma(ranked_set: Path) -> None:
    fma, f04a = _original_generate_folds(ranked_set)
    splits = splits_for(open_carvana(ranked_set), "rank_mod_k", 5, seed=0)
    assert _as_table(splits) == dict(zip(fma["id"], fma["fold"]))
    assert splits.view is None
    assert _as_table(splits) != dict(zip(f04a["id"], f04a["fold"])), "the two rankings must differ to test anything"


def test_rank_mod_k_reads_masks_from_the_rle_csv_alike(ranked_set: Path, tmp_path: Path) -> None:
    from harness.data.rle import encode
    from harness.data.dataset import read_mask

    gif_set = open_carvana(ranked_set)
    copy = Path(shutil.copytree(ranked_set, tmp_path / "carvana"))
    rows = [f"{i}.jpg,{encode(read_mask(gif_set, i))}" for i in gif_set.train]
    (copy / "train_masks.csv").write_text("img,rle_mask\n" + "\n".join(rows) + "\n")
    shutil.rmtree(copy / "train_masks")
    csv_set = open_carvana(copy)
    assert csv_set.mask_source == "csv"
    for view in ("05", None):
        assert splits_for(csv_set, "rank_mod_k", 5, 0, view=view) == splits_for(gif_set, "rank_mod_k", 5, 0, view=view)


def test_rank_mod_k_is_rank_modulo_k_with_ties_by_car_id() -> None:
    areas = {"d": 5, "a": 3, "c": 3, "b": 1, "e": 9}
    splits = rank_mod_k(areas, 2)
    assert splits.folds == (("b", "c", "e"), ("a", "d"))  # ranked b, a, c, d, e (a before c: equal areas)
    assert rank_mod_k(dict(reversed(areas.items())), 2) == splits
    assert splits.seed is None and splits.hash == rank_mod_k(areas, 2).hash
    assert rank_mod_k(areas, 2, view="05").hash != splits.hash, "the view is part of how the folds were made"


# sklearn.model_selection.KFold(n_splits=k, shuffle=True, random_state=seed).split(np.arange(n)), test
# indices, recorded with scikit-learn 1.9.1 (not a dependency): the same with random_state=
# np.random.RandomState(seed), as artsiom passed it
SKLEARN_KFOLD = {
    (23, 7, 1993): [[8, 13, 20, 21], [5, 6, 11, 14], [2, 15, 18], [4, 10, 19], [0, 9, 12], [3, 7, 16], [1, 17, 22]],
    (10, 3, 0): [[2, 4, 8, 9], [1, 6, 7], [0, 3, 5]],
}
# sha256 of the compact JSON of those lists for 318 cars (Carvana's), 7 folds, seed 1993 (artsiom's UNet)
SKLEARN_KFOLD_CARVANA = "5f62796f88a68f01c59ad589b515df4169c57252835fc948e4d3840a35746cf6"


def _kfold_indices(n: int, k: int, seed: int) -> list[list[int]]:
    cars = [f"car{i:03d}" for i in range(n)]
    splits = kfold(list(reversed(cars)), k, seed)  # the order given does not matter: sorted first
    return [[cars.index(car) for car in fold] for fold in splits.folds]


@pytest.mark.parametrize("n, k, seed", list(SKLEARN_KFOLD))
def test_kfold_is_sklearns_kfold(n: int, k: int, seed: int) -> None:
    assert _kfold_indices(n, k, seed) == SKLEARN_KFOLD[(n, k, seed)]


def test_kfold_on_carvanas_318_cars_is_sklearns() -> None:
    folds = json.dumps(_kfold_indices(318, 7, 1993), separators=(",", ":"))
    assert hashlib.sha256(folds.encode()).hexdigest() == SKLEARN_KFOLD_CARVANA


def test_kfold_against_installed_sklearn() -> None:
    model_selection = pytest.importorskip("sklearn.model_selection")
    for n, k, seed in [(23, 7, 1993), (318, 7, 1993), (40, 5, 7), (5, 5, 0)]:
        expected = [sorted(test.tolist()) for _, test in
                    model_selection.KFold(n_splits=k, shuffle=True, random_state=seed).split(np.arange(n))]
        assert _kfold_indices(n, k, seed) == expected


def test_kfold_is_seeded_over_the_sorted_cars_of_a_data_set(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, [f"car{i}" for i in range(9)])
    splits = splits_for(dataset, "kfold", 3, seed=4)
    assert splits == kfold(group_ids(dataset), 3, 4) and (splits.method, splits.seed) == ("kfold", 4)
    assert splits.hash != kfold(group_ids(dataset), 3, 5).hash
    with pytest.raises(BenchError, match="seed -1"):
        kfold(group_ids(dataset), 3, -1)


def test_folds_file_round_trips(tmp_path: Path) -> None:
    cars = [f"car{i:02d}" for i in range(11)]
    made = kfold(cars, 4, seed=0)
    write_folds_csv(made, tmp_path / "a.csv")
    assert (tmp_path / "a.csv").read_text().splitlines()[:2] == ["id,fold", f"car00,{made.fold_of('car00')}"]
    first = read_folds_csv(tmp_path / "a.csv", cars, 4)
    assert first.folds == made.folds and (first.method, first.k, first.seed) == ("file", 4, None)
    write_folds_csv(first, tmp_path / "b.csv")
    second = read_folds_csv(tmp_path / "b.csv", cars, 4)
    assert second == first and second.hash == first.hash
    assert second.source.path == str(tmp_path / "b.csv")
    assert second.source.sha256 == hashlib.sha256((tmp_path / "b.csv").read_bytes()).hexdigest()
    write_splits(second, tmp_path / "splits.json")
    stored = json.loads((tmp_path / "splits.json").read_text())
    assert stored["file"] == {"path": str(tmp_path / "b.csv"), "sha256": second.source.sha256}
    assert stored["seed"] is None and stored["hash"] == second.hash
    loaded = read_splits(tmp_path / "splits.json")
    assert loaded == second and loaded.source == second.source


def test_folds_file_in_the_originals_format_is_read(ranked_set: Path, tmp_path: Path) -> None:
    """The table generate_folds.py writes (to_csv, index=False) is the file a recipe names."""
    fma, f04a = _original_generate_folds(ranked_set)
    cars = group_ids(open_carvana(ranked_set))
    for table in (fma, f04a):
        table.to_csv(tmp_path / "folds.csv", index=False)
        assert (tmp_path / "folds.csv").read_text().startswith("id,square,fold\n")
        splits = read_folds_csv(tmp_path / "folds.csv", cars, 5)
        assert _as_table(splits) == dict(zip(table["id"], table["fold"]))
    # the same folds with other digits in the ignored column: the same splits, the same hash
    f04a.assign(square=f04a["square"].round(3)).to_csv(tmp_path / "other.csv", index=False)
    assert read_folds_csv(tmp_path / "other.csv", cars, 5).hash == splits.hash


# ---------------------------------------------------------------------------------------------------
# artsiom's VGG11-UNet folds: his area classes, then scikit-learn 0.19's StratifiedKFold


def _original_areas_df(input_data_dir: Path, car_ids: np.ndarray) -> pd.DataFrame:
    """kaggle_carvana_segmentation asanakoy/calc_car_area.py:15-31 and 56, line for line (Python 3, no
    progress bar): each view's mask as 8-bit grey, summed and divided by 255, and 'sum' over the views."""
    masks_dir = os.path.join(input_data_dir, 'train_masks')
    areas = np.zeros((len(car_ids), 16))
    for i, car_id in enumerate(car_ids):
        for j in range(1, 17):
            p = os.path.join(masks_dir, '{}_{:02d}_mask.gif'.format(car_id, j))
            mask = Image.open(p)
            mask = np.asarray(mask.convert('L'))
            assert mask is not None, p
            assert len(mask.shape) == 2
            assert mask.max() == 255
            areas[i, j - 1] = mask.sum() // 255  # Python 2's / of two integers

    df = pd.DataFrame(index=car_ids, data=areas, columns=['view_{:02d}'.format(x) for x in range(1, 17)])
    df['sum'] = df.values.sum(axis=1)
    return df


def _kfold_019(n_samples: int, n_splits: int, rng: np.random.RandomState):
    """scikit-learn 0.19's KFold(n_splits, shuffle=True, random_state=rng).split(np.zeros(n_samples)),
    test indices only (sklearn/model_selection/_split.py:421-434): a generator, so it shuffles with the
    shared rng only when first advanced."""
    indices = np.arange(n_samples)
    rng.shuffle(indices)  # check_random_state(rng) is rng itself
    fold_sizes = (n_samples // n_splits) * np.ones(n_splits, dtype=int)
    fold_sizes[:n_samples % n_splits] += 1
    current = 0
    for fold_size in fold_sizes:
        start, stop = current, current + fold_size
        yield indices[start:stop]
        current = stop


class _StratifiedKFold019:
    """scikit-learn 0.19's StratifiedKFold with shuffle=True (the same in 0.18.2 to 0.19.2), transcribed
    step by step from sklearn/model_selection/_split.py:581-636 as the reference for ``stratified_kfold``;
    only the target-type checks and the warning are left out."""

    def __init__(self, n_splits: int, shuffle: bool, random_state: np.random.RandomState) -> None:
        assert shuffle
        self.n_splits, self.random_state = n_splits, random_state

    def _make_test_folds(self, X, y):
        rng = self.random_state
        y = np.asarray(y)
        n_samples = y.shape[0]
        unique_y, y_inversed = np.unique(y, return_inverse=True)
        y_counts = np.bincount(y_inversed)
        if np.all(self.n_splits > y_counts):
            raise ValueError("n_splits=%d cannot be greater than the number of members in each class." % self.n_splits)
        per_cls_cvs = [_kfold_019(max(count, self.n_splits), self.n_splits, rng) for count in y_counts]
        test_folds = np.zeros(n_samples, dtype=int)
        for test_fold_indices, per_cls_splits in enumerate(zip(*per_cls_cvs)):
            for cls, test_split in zip(unique_y, per_cls_splits):
                cls_test_folds = test_folds[y == cls]
                test_split = test_split[test_split < len(cls_test_folds)]
                cls_test_folds[test_split] = test_fold_indices
                test_folds[y == cls] = cls_test_folds
        return test_folds

    def split(self, X, y):
        indices = np.arange(len(X))
        test_folds = self._make_test_folds(X, y)
        for i in range(self.n_splits):
            test_index = indices[test_folds == i]
            yield np.setdiff1d(indices, test_index), test_index


def _original_area_class(df: pd.DataFrame, min_bin_size: int = 7) -> pd.Series:
    """asanakoy/dataset.py:31-56, line for line (print left out): the area class of each car of df."""
    freq, bins = np.histogram(df['sum'], bins=35)
    new_bins = [bins[0]]
    new_bin_hs = []
    pos = 0
    cur_bin_right = 0
    cur_bin_h = 0
    while pos < len(freq):
        cur_bin_right = max(cur_bin_right, bins[pos + 1])
        cur_bin_h += freq[pos]
        if cur_bin_h >= min_bin_size or pos == len(freq) - 1:
            new_bin_hs.append(cur_bin_h)
            cur_bin_h = 0
            new_bins.append(cur_bin_right)
        pos += 1
    if new_bin_hs[-1] < min_bin_size:
        new_bin_hs[-2] += new_bin_hs[-1]
        del new_bin_hs[-1]
        new_bins[-2] = new_bins[-1]
        del new_bins[-1]

    new_bins[0] -= 1
    assert max(new_bins) == max(bins)
    assert freq.sum() == np.sum(new_bin_hs) == len(df)
    assert len(new_bin_hs) >= min_bin_size, len(new_bin_hs)
    return pd.cut(df['sum'], new_bins, labels=False)


def _original_stratified_by_area_folds(areas_df: pd.DataFrame, car_ids, n_splits, fold_id, random_state,
                                       min_bin_size=7):
    """asanakoy/dataset.py:18-62 (get_stratified_by_area_folds): the areas table given instead of read
    from areas_df.hdf5, lines 31-56 in _original_area_class, scikit-learn 0.19's StratifiedKFold as above."""
    df = areas_df
    assert len(car_ids) == len(df)
    df = df.loc[car_ids]
    df['area_class'] = _original_area_class(df, min_bin_size)

    kf = _StratifiedKFold019(n_splits=n_splits, shuffle=True, random_state=random_state)
    folds = list(kf.split(X=np.arange(len(df)), y=df['area_class'].values))[fold_id]
    car_indices = {'train': folds[0], 'val': folds[1]}
    return car_indices


def _original_classes(car_areas: dict[str, int], min_bin_size: int = 7) -> list[list[str]]:
    """The cars of each of artsiom's area classes, smallest areas first."""
    cars = np.unique(list(car_areas))
    classes = _original_area_class(pd.DataFrame({'sum': [float(car_areas[car]) for car in cars]}, index=cars),
                                   min_bin_size)
    return [sorted(cars[classes.values == label].tolist()) for label in sorted(set(classes))]


def _original_vgg_folds(car_areas: dict[str, int], n_splits: int, seed: int, min_bin_size: int = 7) -> dict[str, int]:
    """Each car's fold as artsiom's CARVANA dataset (asanakoy/dataset.py:98,119-124) got it: cars
    sorted by np.unique, a fresh RandomState(seed) for every fold's dataset, the validation cars."""
    car_ids = np.unique(list(car_areas))
    areas_df = pd.DataFrame({'sum': [float(car_areas[car]) for car in car_ids]}, index=car_ids)
    table = {}
    for fold_id in range(n_splits):
        car_indices = _original_stratified_by_area_folds(areas_df.copy(), car_ids, n_splits, fold_id,
                                                         np.random.RandomState(seed), min_bin_size)
        table.update((car_ids[i], fold_id) for i in car_indices['val'])
    return table


# 70 cars, car00..car69, of area 1,000,000 + 10,000 * V[i] pixels: a 35-bin histogram of width 20,000,
# so every car of even V lies on a bin edge, some on an edge of the merged bins, where pd.cut's
# right-closed bins put it in the lower class and the histogram counted it in the upper one.
V = [32, 24, 31, 16, 19, 53, 18, 36, 29, 24, 0, 55, 39, 4, 44, 22, 38, 43, 55, 8, 20, 49, 23, 34, 28, 32, 32, 6, 42,
     70, 27, 16, 11, 27, 46, 32, 25, 33, 40, 45, 51, 20, 35, 59, 36, 34, 30, 47, 48, 30, 36, 19, 37, 51, 18, 48, 32,
     17, 28, 22, 25, 34, 50, 27, 31, 32, 42, 27, 67, 43]
VGG_AREAS = {f"car{i:02d}": 1_000_000 + 10_000 * v for i, v in enumerate(V)}
# The fold of car00..car69, k = 7, seed 1993, recorded by running scikit-learn 0.19.2's own
# sklearn/model_selection/_split.py (StratifiedKFold with random_state=np.random.RandomState(1993)) on
# the classes of pandas.cut over artsiom's merged bins; scikit-learn is not a dependency.
VGG_FOLDS_1993 = "0622106614014223556052060423001110055114514424353102124635306514063236"
# sha256 of the compact JSON of the 7 folds (sorted car ids) of _areas(318, seed=0), Carvana's number of
# cars, for seeds 1993 and 7, recorded the same way.
VGG_FOLDS_318 = {1993: "747f4f8d77352b0bda94074d3353f0ab5ac35900d83b5a440e2d13c3e9513b24",
                 7: "14512f2fd7aa4c5c2d54f1d5561277528cb568d24cb94a50a23e06dc071acce1"}


def test_stratified_kfold_is_artsioms_pipeline() -> None:
    for areas, seeds in [(VGG_AREAS, (1993, 0, 12345)), (_areas(318, seed=0), (1993, 2**32 - 1)),
                         (_areas(120, seed=4), (1993,))]:
        for seed in seeds:
            assert _as_table(stratified_kfold(areas, 7, seed)) == _original_vgg_folds(areas, 7, seed), seed


@pytest.mark.parametrize("k", [2, 3, 5])
def test_stratified_kfold_with_other_k_bins_to_k_cars(k: int) -> None:
    """His minimum bin size was a fixed 7; segbench's is k: the original with min_bin_size=k."""
    areas = _areas(200, seed=k)
    assert _as_table(stratified_kfold(areas, k, 1993)) == _original_vgg_folds(areas, k, 1993, min_bin_size=k)


def test_stratified_kfold_pinned_folds() -> None:
    splits = stratified_kfold(VGG_AREAS, 7, 1993)
    assert "".join(str(splits.fold_of(f"car{i:02d}")) for i in range(70)) == VGG_FOLDS_1993
    for seed, digest in VGG_FOLDS_318.items():
        folds = json.dumps([list(fold) for fold in stratified_kfold(_areas(318, seed=0), 7, seed).folds],
                           separators=(",", ":"))
        assert hashlib.sha256(folds.encode()).hexdigest() == digest, seed


def test_the_pinned_set_has_cars_on_merged_edges() -> None:
    """The right-closed pd.cut bins put some car in another class than the histogram counted it in,
    so the pinned folds test that rule (and segbench's left-closed area_bins are not his classes there)."""
    classes = _original_classes(VGG_AREAS)
    assert classes != area_bins(VGG_AREAS, 7)
    assert min(map(len, classes)) < 7  # a class lost a car on its upper edge to the class below


def test_stratified_kfold_fold_sizes_are_stratifiedkfolds() -> None:
    """Each class gives every fold count // k cars and the first count % k folds one more."""
    areas = _areas(318, seed=0)
    splits = stratified_kfold(dict(reversed(areas.items())), 7, 1993)
    assert sorted(car for fold in splits.folds for car in fold) == sorted(areas)
    assert all(list(fold) == sorted(fold) for fold in splits.folds)
    shares = [[len(cars) // 7 + (fold < len(cars) % 7) for fold in range(7)] for cars in _original_classes(areas)]
    assert [len(fold) for fold in splits.folds] == [sum(share[fold] for share in shares) for fold in range(7)]
    assert [len(fold) for fold in splits.folds] == [52, 50, 48, 47, 43, 40, 38]
    for cars, share in zip(_original_classes(areas), shares):
        assert sorted(sum(splits.fold_of(car) == fold for car in cars) for fold in range(7)) == sorted(share)


def test_stratified_kfold_is_not_stratified_by_area() -> None:
    """The same bins, dealt differently: the older method does not give his folds."""
    areas = _areas(318, seed=0)
    assert stratified_kfold(areas, 7, 1993).folds != make_splits(areas, 7, "stratified_by_area", 1993).folds


def test_stratified_kfold_of_a_data_set_uses_his_area_sum(ranked_set: Path) -> None:
    """splits_for reads the masks as calc_car_area.py did: the total of the 16 views' car pixels."""
    dataset = open_carvana(ranked_set)
    cars = np.unique(group_ids(dataset))
    areas_df = _original_areas_df(ranked_set, cars)
    areas = dict(zip(cars, areas_df['sum']))
    splits = splits_for(dataset, "stratified_kfold", 3, 1993)
    assert _as_table(splits) == _original_vgg_folds(areas, 3, 1993, min_bin_size=3)
    assert (splits.method, splits.k, splits.seed, splits.view) == ("stratified_kfold", 3, 1993, None)


def test_stratified_kfold_splits_json_and_seed(tmp_path: Path) -> None:
    splits = stratified_kfold(VGG_AREAS, 7, 1993)
    assert splits.hash != stratified_kfold(VGG_AREAS, 7, 1994).hash
    write_splits(splits, tmp_path / "splits.json")
    stored = json.loads((tmp_path / "splits.json").read_text())
    assert sorted(stored) == ["folds", "hash", "k", "method", "seed"]
    assert (stored["method"], stored["seed"]) == ("stratified_kfold", 1993)
    assert read_splits(tmp_path / "splits.json") == splits
    for seed in (-1, 2**32):
        with pytest.raises(BenchError, match=f"stratified_kfold seed {seed} is out of range"):
            stratified_kfold(VGG_AREAS, 7, seed)
    with pytest.raises(BenchError, match=r"k=7 folds from 5 cars"):
        stratified_kfold(_areas(cars=5), 7, 0)


def test_splits_of_the_older_methods_keep_their_json(tmp_path: Path) -> None:
    """splits.json of rank_by_area and stratified_by_area has no new key, so old hashes still hold."""
    splits = make_splits(_areas(cars=20), 2, "rank_by_area", seed=0)
    write_splits(splits, tmp_path / "splits.json")
    assert sorted(json.loads((tmp_path / "splits.json").read_text())) == ["folds", "hash", "k", "method", "seed"]


CARS = ["car0", "car1", "car2", "car3"]


@pytest.mark.parametrize("text, needle", [
    ("id,fold\ncar0,0\ncar1,1\ncar2,0\n", "car car3 of the data has no row"),
    ("id,fold\ncar0,0\ncar1,1\ncar2,0\ncar3,1\ncar9,0\n", "line 6 names car 'car9', which is not in the data"),
    ("id,fold\ncar0_05,0\n", "an image id: ids are car ids, e.g. car0"),
    ("id,fold\ncar0,0\ncar1,1\ncar0,0\n", "line 4 names car 'car0' a second time"),
    ("id,fold\ncar0,0\ncar1,x\n", "line 3 (car car1) has fold 'x'; expected a fold number 0..1"),
    ("id,fold\ncar0,0\ncar1,-1\n", "has fold '-1'"),
    ("id,fold\ncar0,0\ncar1,1\ncar2,5\ncar3,0\n", "car car2 has fold 5; with folds.k = 2 a fold is 0..1"),
    ("id,fold\ncar0,0\ncar1,1\ncar2,2\ncar3,0\n", "has 3 folds (0..2) but folds.k = 2; set folds.k = 3"),
    ("id,fold\ncar0,1\ncar1,1\ncar2,1\ncar3,1\n", "no car is in fold 0"),
    ("car,fold\ncar0,0\n", "no column id; expected a header 'id,fold'"),
    ("{\"folds\": [[\"car0\"]]}\n", "no column id or fold"),
    ("id,fold\ncar0,0,9\n", "line 2 has 3 fields, the header 2"),
    ("", "the file is empty"),
    ("id,fold\n\"car0,0\n", "not a valid CSV"),
])
def test_bad_folds_file_is_one_line_naming_the_file(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "folds.csv"
    path.write_text(text)
    with pytest.raises(BenchError) as caught:
        read_folds_csv(path, CARS, 2)
    message = str(caught.value)
    assert message.startswith(f"folds.file {path}") and needle in message and "\n" not in message, message


def test_unreadable_folds_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    for path, needle in [(tmp_path / "nowhere.csv", "no such file (a relative path is read from the current directory"),
                         (tmp_path / "binary.csv", "not a CSV text file"),
                         (tmp_path, "cannot read it")]:
        with pytest.raises(BenchError) as caught:
            read_folds_csv(path, CARS, 2)
        assert str(caught.value).startswith(f"folds.file {path}") and needle in str(caught.value), str(caught.value)


def test_a_view_no_car_has_or_one_car_lacks(ranked_set: Path, tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"^folds.view = '17': no training image in .* is view 17 .*views there are 01, 02"):
        splits_for(open_carvana(ranked_set), "rank_mod_k", 5, 0, view="17")
    copy = Path(shutil.copytree(ranked_set, tmp_path / "carvana"))
    lacking = sorted(copy.glob("train/*_05.jpg"))[3]
    lacking.unlink()
    (copy / "train_masks" / f"{lacking.stem}_mask.gif").unlink()
    with pytest.raises(BenchError, match=rf"^folds.view = '05': car {lacking.stem[:-3]} has no view 05, .*is missing"):
        splits_for(open_carvana(copy), "rank_mod_k", 5, 0, view="05")


@pytest.fixture
def tiny_run_recipe(tmp_path, synthetic_set, tiny_recipe) -> Path:
    return tiny_recipe(tmp_path / "tiny.toml", synthetic_set, epochs=1)


def _no_run_folder(results: Path) -> bool:
    return not results.exists() or not any(results.iterdir())


@pytest.mark.parametrize("folds_file, needle", [
    ("missing", "car {car} of the data has no row"),
    ("unknown", "names car 'stranger', which is not in the data"),
    ("bad_fold", "has fold 'two'"),
    ("not_csv", "no column id or fold"),
    ("nowhere", "no such file"),
])
def test_bench_run_with_a_bad_folds_file_writes_nothing(bench, synthetic_set, tiny_run_recipe, tmp_path,
                                                        folds_file, needle):
    cars = group_ids(open_carvana(synthetic_set))
    rows = {"missing": [f"{car},{i % 2}" for i, car in enumerate(cars[1:])],
            "unknown": [f"{car},{i % 2}" for i, car in enumerate(cars)] + ["stranger,0"],
            "bad_fold": [f"{car},{'two' if i else 0}" for i, car in enumerate(cars)]}
    path = tmp_path / "folds.csv"
    if folds_file in rows:
        path.write_text("id,square,fold\n" + "".join(f"{row.split(',')[0]},1.5,{row.split(',')[1]}\n"
                                                     for row in rows[folds_file]))
    elif folds_file == "not_csv":
        path.write_bytes(b"just some words\n")
    results = tmp_path / "results"
    result = bench("run", tiny_run_recipe, "--results", results, "--set", "folds.method=file",
                   "--set", f"folds.file={path}")
    lines = result.err.strip().splitlines()
    assert result.code == 2 and len(lines) == 1, result.err
    assert f"folds.file {path}" in lines[0] and needle.format(car=cars[0]) in lines[0], lines[0]
    assert _no_run_folder(results)


def test_bench_run_with_a_view_no_car_has_writes_nothing(bench, tiny_run_recipe, tmp_path):
    results = tmp_path / "results"
    result = bench("run", tiny_run_recipe, "--results", results, "--set", "folds.method=rank_mod_k",
                   "--set", "folds.view=17")
    lines = result.err.strip().splitlines()
    assert result.code == 2 and len(lines) == 1, result.err
    assert "folds.view = '17': no training image in" in lines[0]
    assert _no_run_folder(results)


def test_bench_run_with_k_other_than_the_files(bench, synthetic_set, tiny_run_recipe, tmp_path):
    path = tmp_path / "folds.csv"
    write_folds_csv(splits_for(open_carvana(synthetic_set), "kfold", 4, 0), path)
    results = tmp_path / "results"
    result = bench("run", tiny_run_recipe, "--results", results, "--set", "folds.method=file",
                   "--set", f"folds.file={path}")
    assert result.code == 2 and f"folds.file {path} has 4 folds (0..3) but folds.k = 2; set folds.k = 4" in result.err
    assert _no_run_folder(results)


@pytest.mark.slow
def test_bench_run_records_the_folds_file(bench, synthetic_set, tiny_run_recipe, tmp_path):
    """A run on a folds file keeps the file's path and sha256 in splits.json, beside the folds' hash."""
    from harness.runs.folder import RunFolder

    path = tmp_path / "folds.csv"
    made = splits_for(open_carvana(synthetic_set), "rank_mod_k", 2, 0, view="05")
    write_folds_csv(made, path)
    result = bench("run", tiny_run_recipe, "--results", tmp_path / "results", "--name", "from-file",
                   "--set", "folds.method=file", "--set", f"folds.file={path}")
    assert result.code == 0, result.err
    folder = RunFolder(tmp_path / "results" / "from-file")
    stored = json.loads(folder.splits.read_text())
    assert stored["method"] == "file" and stored["folds"] == [list(fold) for fold in made.folds]
    assert stored["file"] == {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert folder.read_summary()["splits_hash"] == stored["hash"] == read_splits(folder.splits).hash
