"""Cross-validation folds over groups of images, saved once and reused by every recipe.

The 16 views of one car are near-duplicates, so a fold is a set of cars, never of images: a car
split across folds would leak into its own validation. A car is the Carvana layout's group; another
set's groups (slides, scenes, patients: ``harness.data.dataset``) are dealt the same way, and the
methods below, written for cars, take any groups. Every run records the splits hash;
``bench compare`` and ``bench ensemble`` take runs on other folds of the same data too (every image
is predicted out of fold once in each run), and mark where the folds differ.

The methods (``[folds] method``), and whose folds each one makes:

- ``rank_by_area``, ``stratified_by_area``: balanced by total mask area, because small and large
  cars are not equally hard; segbench's own seeded deals (``stratified_by_area`` deals artsiom's area
  bins round robin, which does not give his folds).
- ``rank_mod_k``: the originals' fixed folds, cars ranked by mask area, fold = rank % k; by view 05
  they are alexander's "f04a" folds, which vladimir trained on too, by the total area his "fma".
- ``kfold``: a plain seeded random KFold over cars, artsiom's scratch UNet's.
- ``stratified_kfold``: scikit-learn 0.19's StratifiedKFold over artsiom's area classes, his
  VGG11-UNet's folds.
- ``file``: read from a CSV of car id and fold, the originals' own format (``read_folds_csv``);
  ``write_folds_csv`` writes any splits in it.

The seeded area methods shuffle with ``random.Random`` rather than NumPy: its sequence for a given
seed has stayed the same across Python versions, so the same seed gives the same folds on another
machine. ``kfold`` and ``stratified_kfold`` shuffle with NumPy's ``RandomState``, as scikit-learn does,
to give the original's folds; NumPy keeps that generator's stream frozen for the same reason.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from harness.data.carvana import car_id, view_mask_areas
from harness.data.dataset import DataFolder, group_ids, group_mask_areas
from harness.errors import BenchError
from harness.io import atomic_write_json, atomic_write_text

AreaMethod = Literal["rank_by_area", "stratified_by_area"]
SplitMethod = Literal["rank_by_area", "stratified_by_area", "rank_mod_k", "kfold", "stratified_kfold", "file"]
# Methods that draw nothing: their splits record seed None, so the recipe's seed cannot change their hash.
UNSEEDED = ("rank_mod_k", "file")
# The columns of the originals' folds files (ternaus/src/folds_csv.csv, albu/f04a.csv, albu/fma.csv:
# id,square,fold); any other column, such as their square, is ignored.
FOLDS_CSV_COLUMNS = ("id", "fold")
# artsiom's code starts from a 35-bin histogram of car areas and merges sparse neighbours.
HISTOGRAM_BINS = 35


@dataclass(frozen=True)
class FoldsFile:
    """Where ``file`` splits were read from: the path as given and the sha256 of its bytes."""

    path: str
    sha256: str


@dataclass(frozen=True)
class Splits:
    """k disjoint folds of car ids (each fold sorted) and how they were made.

    ``seed`` is None for the methods that draw nothing (``UNSEEDED``); ``view`` is ``rank_mod_k``'s
    view, None for the total over all views. ``source`` is the file of ``file`` splits: recorded in
    ``splits.json`` but not part of the hash, so the same folds in two files (the originals'
    folds_csv.csv and f04a.csv differ only in the digits of an ignored column) are the same splits.
    """

    method: SplitMethod
    k: int
    seed: int | None
    folds: tuple[tuple[str, ...], ...]
    view: str | None = None
    source: FoldsFile | None = field(default=None, compare=False)
    members: str | None = None  # sha256 of the image,group pairs, where groups are not Carvana's car ids

    @cached_property
    def hash(self) -> str:
        """sha256 (hex) of the canonical JSON of the content (method, k, seed, folds, and
        ``rank_mod_k``'s view): equal hashes mean equal folds, made the same way."""
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
                f"group {car!r} is in no fold of splits {self.hash[:16]}; "
                "the splits were made for another data set, make new splits"
            ) from None

    def validation_images(self, dataset: DataFolder, fold: int) -> tuple[str, ...]:
        """Training image ids whose group belongs to ``fold``."""
        self._check_fold(fold)
        return tuple(i for i in dataset.train if self.fold_of(dataset.group_of(i)) == fold)

    def training_images(self, dataset: DataFolder, fold: int) -> tuple[str, ...]:
        """Training image ids whose group belongs to any other fold."""
        self._check_fold(fold)
        return tuple(i for i in dataset.train if self.fold_of(dataset.group_of(i)) != fold)

    def _check_fold(self, fold: int) -> None:
        if not 0 <= fold < self.k:
            raise BenchError(
                f"fold {fold} does not exist: the splits have k={self.k} folds (0..{self.k - 1})"
            )


def splits_for(dataset: DataFolder, method: SplitMethod, k: int, seed: int, view: str | None = None,
               file: str | Path | None = None) -> Splits:
    """The splits that a recipe's ``[folds]`` asks for, made from ``dataset``'s groups.

    Reads only the masks the method ranks by: none for ``kfold`` and ``file``, one view's for
    ``rank_mod_k`` with a view, every mask for the others.
    """
    if method not in get_args(SplitMethod):
        raise BenchError(f"unknown split method {method!r}; expected one of {', '.join(get_args(SplitMethod))}")
    if method == "file":
        if file is None:
            raise BenchError("folds method 'file' needs the path of a folds CSV (folds.file)")
        splits = read_folds_csv(Path(file), group_ids(dataset), k)
    elif method == "kfold":
        splits = kfold(group_ids(dataset), k, seed)
    elif method == "stratified_kfold":
        splits = stratified_kfold(group_mask_areas(dataset), k, seed)
    elif method == "rank_mod_k":
        areas = view_mask_areas(dataset, view, key="folds.view") if view else group_mask_areas(dataset)
        splits = rank_mod_k(areas, k, view)
    else:
        splits = make_splits(group_mask_areas(dataset), k, method, seed)
    return replace(splits, members=members_hash(dataset))


def members_hash(dataset: DataFolder) -> str | None:
    """sha256 (hex) of the data's ``image,group`` pairs, or None where every group is the car id in the
    image's name (Carvana's rule, which the image ids imply). Folds are lists of groups: with groups
    from a table or a pattern, the same group names over other images are other folds, which the
    splits hash must tell apart; with Carvana's rule they cannot be, and its hashes stay as they were
    (a folders-layout copy of a Carvana set, grouped by car, makes the very same splits)."""
    pairs = sorted(dataset.groups.items())
    if all(_car_or_none(image) == group for image, group in pairs):
        return None
    return hashlib.sha256("".join(f"{image},{group}\n" for image, group in pairs).encode()).hexdigest()


def _car_or_none(image_id: str) -> str | None:
    try:
        return car_id(image_id)
    except BenchError:
        return None


def make_splits(car_areas: Mapping[str, int], k: int, method: AreaMethod, seed: int) -> Splits:
    """Deal cars into ``k`` folds with about equal total mask area per fold.

    ``rank_by_area``: sort cars by area, cut into consecutive groups of k, and give each car of a
    group a different fold (a seeded permutation), so every fold gets one car from each area rank.
    ``stratified_by_area``: bin cars by area as artsiom did, merging sparse bins until each holds >= k
    cars, then shuffle each bin and deal it round-robin (his folds are ``stratified_kfold``'s).
    """
    if method not in get_args(AreaMethod):
        expected = ", ".join(get_args(AreaMethod))
        raise BenchError(f"unknown area split method {method!r}; expected one of {expected}")
    _check_k(k, len(car_areas))
    rng = random.Random(seed)
    if method == "rank_by_area":
        assignment = _rank_by_area(car_areas, k, rng)
    else:
        assignment = _deal_round_robin(area_bins(car_areas, k), k, rng)
    return Splits(method=method, k=k, seed=seed, folds=_folds(assignment, k))


def rank_mod_k(car_areas: Mapping[str, int], k: int, view: str | None = None) -> Splits:
    """The originals' fixed folds: cars sorted by mask area, smallest first, fold = rank % k.

    ``car_areas`` holds the area of ``view`` (alexander's "f04a", and vladimir's folds_csv.csv, which
    is the same folds: ``view="05"``) or, with no view, the total over all views ("fma"). As
    kaggle_carvana_segmentation albu/src/generate_folds.py: the area is view 05's mask (lines 21-22)
    or the sum over the 16 views (line 23), cars are sorted ascending by it (lines 26-27) and the
    i-th car goes to fold ``i % 5`` (lines 28-29). albu/src/train.py:238 trains the configs named
    f04a* on f04a.csv and all others on fma.csv; ternaus/src/prepare_folds.py:21 reads
    ternaus/src/folds_csv.csv, a copy of albu's first folds_csv.csv, whose folds are f04a.csv's.
    Nothing is drawn, so there is no seed.

    Two differences that cannot change the folds on Carvana: the original ranks ``np.mean`` of the
    mask (a share of the image, summed over views as floats), this ranks pixel counts, the same
    order while every mask has one size (Carvana's are all 1918x1280); and equal areas, which the
    original leaves in the iteration order of a Python set (line 13, different per process), are
    ordered by car id here. The published f04a.csv and fma.csv have no two equal areas.
    """
    _check_k(k, len(car_areas))
    ranked = sorted(car_areas, key=lambda car: (car_areas[car], car))
    assignment = {car: rank % k for rank, car in enumerate(ranked)}
    return Splits(method="rank_mod_k", k=k, seed=None, folds=_folds(assignment, k), view=view)


def kfold(cars: Collection[str], k: int, seed: int) -> Splits:
    """scikit-learn's ``KFold(n_splits=k, shuffle=True, random_state=seed)`` over the sorted cars.

    artsiom's scratch UNet: asanakoy/dataset.py:112-116 splits ``np.arange(num_cars)`` with
    ``KFold(n_splits=n_folds, shuffle=True, random_state=self.rs)``, the cars in sorted order (the
    image paths are sorted, lines 155-175), and ``self.rs = np.random.RandomState(seed)`` created
    unused just before (line 98), so it shuffles as ``random_state=seed`` would;
    asanakoy/train_scratch.sh:53 asks for 7 folds (``-nf=7 -fv=1``) with the default seed 1993
    (asanakoy/run_train.py:203).

    KFold's shuffle, written out so that scikit-learn is not a dependency (the same in 0.19, the
    original's version, and today's): ``np.random.RandomState(seed).shuffle(np.arange(n))``, then
    the shuffled indices cut in order into k folds, the first ``n % k`` of them one car larger.
    """
    ordered = sorted(cars)
    _check_k(k, len(ordered))
    if not 0 <= seed < 2**32:
        raise BenchError(f"kfold seed {seed} is out of range: KFold's RandomState takes 0 <= seed < 2**32")
    indices = np.arange(len(ordered))
    np.random.RandomState(seed).shuffle(indices)
    assignment, start = {}, 0
    for fold in range(k):
        size = len(ordered) // k + (1 if fold < len(ordered) % k else 0)
        assignment.update((ordered[i], fold) for i in indices[start:start + size])
        start += size
    return Splits(method="kfold", k=k, seed=seed, folds=_folds(assignment, k))


def stratified_kfold(car_areas: Mapping[str, int], k: int, seed: int) -> Splits:
    """artsiom's VGG11-UNet folds: scikit-learn 0.19's ``StratifiedKFold(n_splits=k, shuffle=True,
    random_state=np.random.RandomState(seed))`` over the sorted cars, the class of a car its area bin.

    kaggle_carvana_segmentation asanakoy/dataset.py:18-62 (``get_stratified_by_area_folds``), called at
    lines 119-124 over ``np.unique`` of the car ids (sorted) with ``random_state=self.rs``, a
    ``np.random.RandomState(seed)`` made fresh at line 98 and drawn from by nothing else (the training
    and the validation set each make their own, so both get the same folds);
    asanakoy/train_vgg11v1.sh:50 asks for ``-nf=7 -fv=2`` with the default seed 1993
    (asanakoy/run_train.py:203,328,350). ``car_areas`` is his ``df['sum']``: the car's mask
    pixels summed over its views (asanakoy/calc_car_area.py:15-31, ``mask.sum() / 255`` of each view's
    mask as 8-bit grey, then line 56, ``df['sum'] = df.values.sum(axis=1)``), which ``car_mask_areas``
    counts.

    The classes (``_area_classes``): ``np.histogram(areas, bins=35)``, neighbouring bins merged left to
    right until each holds >= k cars, a short last one joined to the one before, the first edge lowered
    by 1, and ``pd.cut(areas, edges, labels=False)``, whose bins are closed on the right: a car on a
    merged edge is in the lower class, although the histogram counted it in the upper one (so the
    classes are not quite ``area_bins``, whose bins are closed on the left). NumPy 1.13's histogram,
    his era's, bins as today's does: 36 edges ``linspace(min, max)``, bin i holding
    ``edges[i] <= area < edges[i + 1]``, the last one closed (numpy/lib/function_base.py:671-770).

    The folds (``_stratified_test_folds``), as scikit-learn 0.18.2 to 0.19.2 (one and the same code)
    make them: sklearn/model_selection/_split.py of 0.19.2, ``StratifiedKFold._make_test_folds``
    (lines 581-631) gives each class, in sorted order, a ``KFold(k, shuffle=True, random_state=rng)``
    over ``np.zeros(max(count, k))`` with the one shared ``rng``; ``KFold._iter_test_indices`` (lines
    421-434) shuffles ``np.arange(max(count, k))`` with it and cuts the result in order into k
    chunks, the first ``max(count, k) % k`` one larger. The generators are zipped, so every class
    shuffles, in class order, before any fold is assigned; fold i's chunk of a class (indices past
    its count dropped) names the class members, in car order, whose test fold is i; ``split`` then
    yields fold i's test indices as ``test_folds == i`` (lines 633-636). scikit-learn 0.22 changed
    this shuffle, so a later scikit-learn does not give his folds; nor does ``stratified_by_area``,
    which deals the same bins round robin with its own shuffle.

    Two differences, neither of which touches his folds: his minimum bin size is a fixed 7
    (``min_bin_size=7``), here it is k, the same for his k = 7 (with k, every class has >= k cars, as
    StratifiedKFold wants); and he asserted at least 7 bins (line 55), which a small data set need not
    have, so it is not checked here.
    """
    cars = sorted(car_areas)
    _check_k(k, len(cars))
    if not 0 <= seed < 2**32:
        raise BenchError(f"stratified_kfold seed {seed} is out of range: "
                         "StratifiedKFold's RandomState takes 0 <= seed < 2**32")
    classes = _area_classes(np.array([car_areas[car] for car in cars], dtype=np.float64), k)
    test_folds = _stratified_test_folds(classes, k, np.random.RandomState(seed))
    assignment = dict(zip(cars, test_folds.tolist()))
    return Splits(method="stratified_kfold", k=k, seed=seed, folds=_folds(assignment, k))


def read_folds_csv(path: Path, cars: Collection[str], k: int) -> Splits:
    """Folds from a CSV with a header and columns ``id`` (a car id) and ``fold`` (0..k-1), other
    columns ignored: the originals' own files (ternaus/src/folds_csv.csv, albu/f04a.csv,
    albu/fma.csv, all ``id,square,fold``) are read as they are.

    Every car of ``cars`` must have exactly one row and every row must name one of them; ``k`` must be
    the file's number of folds, and no fold may be empty. Each defect is one line naming the file.
    """
    path = Path(path)
    where = f"folds.file {path}"
    try:
        data = path.read_bytes()
        text = data.decode("utf-8-sig")
    except FileNotFoundError:
        raise BenchError(f"{where}: no such file (a relative path is read from the current directory, "
                         f"{Path.cwd()})") from None
    except UnicodeDecodeError:
        raise BenchError(f"{where}: not a CSV text file (not UTF-8); expected a header 'id,fold'") from None
    except OSError as error:
        raise BenchError(f"{where}: cannot read it: {error.strerror or error}") from None
    rows = _folds_csv_rows(where, text)
    known = set(cars)
    assignment = {}
    for line, car, fold_text in rows:
        if car not in known:
            hint = (f", an image id: ids are car ids, e.g. {car_id(car)}" if _looks_like_image_of(car, known)
                    else f"; the data has {len(known)} cars")
            raise BenchError(f"{where}: line {line} names car {car!r}, which is not in the data{hint}")
        if car in assignment:
            raise BenchError(f"{where}: line {line} names car {car!r} a second time")
        if not re.fullmatch(r"\d+", fold_text):
            raise BenchError(f"{where}: line {line} (car {car}) has fold {fold_text!r}; "
                             f"expected a fold number 0..{k - 1}")
        assignment[car] = int(fold_text)
    missing = sorted(known - set(assignment))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise BenchError(f"{where}: car {missing[0]} of the data has no row{more}; every training car needs a fold")
    _check_fold_numbers(where, assignment, k)
    source = FoldsFile(path=str(path), sha256=hashlib.sha256(data).hexdigest())
    return Splits(method="file", k=k, seed=None, folds=_folds(assignment, k), source=source)


def write_folds_csv(splits: Splits, path: Path) -> None:
    """Save the folds as a CSV that ``read_folds_csv`` (and the originals' readers) take: ``id,fold``,
    one row per car, in car order; atomically."""
    rows = sorted((car, fold) for fold, cars in enumerate(splits.folds) for car in cars)
    atomic_write_text(Path(path), "".join(f"{car},{fold}\n" for car, fold in [FOLDS_CSV_COLUMNS, *rows]))


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
    """Save as ``splits.json`` (content plus its hash, and the source file of ``file`` splits), atomically."""
    source = {"file": {"path": splits.source.path, "sha256": splits.source.sha256}} if splits.source else {}
    atomic_write_json(Path(path), {**_content(splits), "hash": splits.hash, **source})


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


def _check_k(k: int, cars: int) -> None:
    if k < 2 or k > cars:
        raise BenchError(f"cannot make k={k} folds from {cars} cars (groups): need 2 <= k <= number of groups")


def _folds(assignment: Mapping[str, int], k: int) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(sorted(c for c, f in assignment.items() if f == fold)) for fold in range(k))


def _folds_csv_rows(where: str, text: str) -> list[tuple[int, str, str]]:
    """``(line, id, fold)`` of every data row; a file without the two columns is one line."""
    try:
        reader = csv.reader(text.splitlines(), strict=True)
        header = next(reader, None)
        if not header:
            raise BenchError(f"{where}: the file is empty; expected a header 'id,fold' and one row per car")
        header = [name.strip() for name in header]
        missing = [name for name in FOLDS_CSV_COLUMNS if name not in header]
        if missing:
            raise BenchError(f"{where}: no column {' or '.join(missing)}; expected a header 'id,fold' "
                             f"(other columns are ignored), found {','.join(header)!r}")
        id_at, fold_at = header.index("id"), header.index("fold")
        rows = []
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise BenchError(f"{where}: line {reader.line_num} has {len(row)} fields, the header {len(header)}")
            rows.append((reader.line_num, row[id_at].strip(), row[fold_at].strip()))
    except csv.Error as error:
        raise BenchError(f"{where}: not a valid CSV: line {reader.line_num}: {error}") from None
    return rows


def _looks_like_image_of(name: str, cars: Collection[str]) -> bool:
    try:
        return car_id(name) in cars
    except BenchError:
        return False


def _check_fold_numbers(where: str, assignment: Mapping[str, int], k: int) -> None:
    """The file's folds must be exactly 0..k-1: a file of another k says so, a stray number is named."""
    used = sorted(set(assignment.values()))
    if used != list(range(k)) and used == list(range(len(used))):
        raise BenchError(f"{where} has {len(used)} folds (0..{len(used) - 1}) but folds.k = {k}; "
                         f"set folds.k = {len(used)}")
    for car, fold in assignment.items():
        if fold >= k:
            raise BenchError(f"{where}: car {car} has fold {fold}; with folds.k = {k} a fold is 0..{k - 1}")
    empty = [fold for fold in range(k) if fold not in used]
    if empty:
        raise BenchError(f"{where}: no car is in fold {empty[0]}; with folds.k = {k} every fold 0..{k - 1} needs cars")


def _rank_by_area(car_areas: Mapping[str, int], k: int, rng: random.Random) -> dict[str, int]:
    cars = sorted(car_areas, key=lambda c: (car_areas[c], c))
    assignment: dict[str, int] = {}
    for start in range(0, len(cars), k):
        order = list(range(k))
        rng.shuffle(order)
        assignment.update(zip(cars[start:start + k], order))
    return assignment


def _area_classes(areas: np.ndarray, min_cars: int) -> np.ndarray:
    """artsiom's area class of each car (asanakoy/dataset.py:31-56): 0, 1, ... from the smallest."""
    counts, edges = np.histogram(areas, bins=HISTOGRAM_BINS)
    merged = [edges[0]]  # the edges of the merged bins
    held = last_held = 0
    for index, count in enumerate(counts):
        held += count
        if held >= min_cars or index == len(counts) - 1:
            merged.append(edges[index + 1])
            held, last_held = 0, held
    if last_held < min_cars and len(merged) > 2:
        del merged[-2]  # the short last bin joins the one before
    merged[0] -= 1
    # pd.cut(areas, merged, labels=False): bin i is (merged[i], merged[i + 1]], closed on the right
    return np.searchsorted(np.asarray(merged), areas, side="left") - 1


def _stratified_test_folds(classes: np.ndarray, k: int, rng: np.random.RandomState) -> np.ndarray:
    """scikit-learn 0.19's ``StratifiedKFold._make_test_folds``: each car's test fold."""
    labels, inverse = np.unique(classes, return_inverse=True)
    counts = np.bincount(inverse)
    test_folds = np.zeros(len(classes), dtype=np.int64)
    for label, count in zip(labels, counts):  # every class shuffles, in class order, before any fold is dealt
        order = np.arange(max(count, k))
        rng.shuffle(order)
        members = np.flatnonzero(classes == label)
        start = 0
        for fold in range(k):
            stop = start + len(order) // k + (1 if fold < len(order) % k else 0)
            chunk = order[start:stop]
            test_folds[members[chunk[chunk < count]]] = fold
            start = stop
    return test_folds


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
    """What the hash covers. ``view`` only for ``rank_mod_k`` and ``members`` only for groups that are not
    car ids, so the splits of the older methods and of Carvana's cars keep the hashes they always had."""
    content = {
        "method": splits.method,
        "k": splits.k,
        "seed": splits.seed,
        "folds": [list(fold) for fold in splits.folds],
    }
    if splits.method == "rank_mod_k":
        content["view"] = splits.view
    if splits.members is not None:
        content["members"] = splits.members
    return content


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
    if not (type(k) is int and (type(seed) is int or (seed is None and method in UNSEEDED))):
        raise BenchError(f"splits file {path}: k and seed must be integers (seed null for {', '.join(UNSEEDED)}), "
                         f"got k={k!r}, seed={seed!r}")
    if not (isinstance(folds, list) and len(folds) == k
            and all(isinstance(f, list) and all(isinstance(c, str) for c in f) for f in folds)):
        raise BenchError(f"splits file {path}: folds must be a list of k={k} lists of car ids")
    cars = [car for fold in folds for car in fold]
    if len(cars) != len(set(cars)):
        raise BenchError(f"splits file {path}: a car appears in more than one fold")
    view = data.get("view")
    if method == "rank_mod_k" and not ("view" in data and (view is None or isinstance(view, str))):
        raise BenchError(f"splits file {path}: rank_mod_k splits need a view (a string, or null for all views)")
    members = data.get("members")
    if not (members is None or isinstance(members, str)):
        raise BenchError(f"splits file {path}: members must be a string (the hash of the image,group pairs)")
    return Splits(method=method, k=k, seed=seed, folds=tuple(tuple(fold) for fold in folds),
                  view=view if method == "rank_mod_k" else None, source=_source_from_json(path, data.get("file")),
                  members=members)


def _source_from_json(path: Path, file: Any) -> FoldsFile | None:
    if file is None:
        return None
    if not (isinstance(file, dict) and isinstance(file.get("path"), str) and isinstance(file.get("sha256"), str)):
        raise BenchError(f"splits file {path}: 'file' must be an object with path and sha256 strings")
    return FoldsFile(path=file["path"], sha256=file["sha256"])
