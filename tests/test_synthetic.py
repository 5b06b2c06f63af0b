"""The synthetic data set must be indistinguishable, by layout, from Kaggle's Carvana data.

One small generation per module keeps this file fast; the sizes are deliberately not multiples of 32.
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data import rle
from harness.data.synthetic import cached_synthetic_carvana, write_synthetic_carvana
from harness.errors import BenchError

SIZE = (120, 80)  # W, H; neither is a multiple of 32
CARS, TEST_CARS = 2, 1


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_synthetic_carvana(tmp_path_factory.mktemp("syn") / "data", cars=CARS, test_cars=TEST_CARS,
                                   size=SIZE, seed=7, workers=1)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _digest(root: Path, names: list[str]) -> dict[str, str]:
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in names}


def test_layout_and_names_are_carvanas(data: Path) -> None:
    assert sorted(p.name for p in data.iterdir()) == ["metadata.csv", "test", "test_hq", "train", "train_hq",
                                                      "train_masks", "train_masks.csv"]
    # one image quality: the high-quality folders a faithful recipe reads are links to the others
    assert all((data / f"{split}_hq").readlink() == Path(split) for split in ("train", "test"))
    train = sorted(p.name for p in (data / "train").iterdir())
    assert all(re.fullmatch(r"[0-9a-f]{12}_(0[1-9]|1[0-6])\.jpg", name) for name in train)
    masks = sorted(p.name for p in (data / "train_masks").iterdir())
    assert masks == [name.replace(".jpg", "_mask.gif") for name in train]
    assert [row["img"] for row in _rows(data / "train_masks.csv")] == train


def test_sixteen_views_per_car(data: Path) -> None:
    for folder, count in (("train", CARS), ("test", TEST_CARS)):
        names = [p.stem for p in (data / folder).iterdir()]
        cars = {name[:12] for name in names}
        assert len(cars) == count
        for car in cars:
            assert sorted(n for n in names if n.startswith(car)) == [f"{car}_{v:02d}" for v in range(1, 17)]


def test_images_and_masks_have_the_requested_size_and_modes(data: Path) -> None:
    image = Image.open(next((data / "train").iterdir()))
    mask = Image.open(next((data / "train_masks").iterdir()))
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", SIZE)
    assert (mask.format, mask.mode, mask.size) == ("GIF", "P", SIZE)


def test_masks_are_binary_and_cover_part_of_the_image(data: Path) -> None:
    for path in (data / "train_masks").iterdir():
        mask = np.array(Image.open(path))
        assert set(np.unique(mask)) == {0, 1}
        assert 0.1 <= mask.mean() <= 0.6, path.name


def test_csv_decodes_to_exactly_the_gifs(data: Path) -> None:
    for row in _rows(data / "train_masks.csv"):
        gif = np.array(Image.open(data / "train_masks" / row["img"].replace(".jpg", "_mask.gif")))
        np.testing.assert_array_equal(rle.decode(row["rle_mask"], (SIZE[1], SIZE[0])), gif)


def test_metadata_has_one_row_per_car(data: Path) -> None:
    rows = _rows(data / "metadata.csv")
    assert list(rows[0]) == ["id", "year", "make", "model", "trim1", "trim2"]
    cars = {p.stem[:12] for folder in ("train", "test") for p in (data / folder).iterdir()}
    assert sorted(row["id"] for row in rows) == sorted(cars)
    assert all(2000 <= int(row["year"]) <= 2020 and row["make"] and row["model"] for row in rows)


def test_test_images_exist_and_have_no_masks(data: Path) -> None:
    test = {p.stem for p in (data / "test").iterdir()}
    assert len(test) == 16 * TEST_CARS
    masked = {p.name[: -len("_mask.gif")] for p in (data / "train_masks").iterdir()}
    assert not test & masked
    assert not test & {row["img"][:-4] for row in _rows(data / "train_masks.csv")}


def test_same_parameters_give_identical_files_and_seeds_differ(data: Path, tmp_path: Path) -> None:
    names = sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file())
    again = write_synthetic_carvana(tmp_path / "again", cars=CARS, test_cars=TEST_CARS, size=SIZE, seed=7,
                                    workers=2)
    assert _digest(again, names) == _digest(data, names)
    other = write_synthetic_carvana(tmp_path / "other", cars=1, test_cars=0, size=SIZE, seed=8, workers=1)
    assert not {p.name for p in (other / "train").iterdir()} & {p.name for p in (data / "train").iterdir()}


def test_odd_size_works(tmp_path: Path) -> None:
    out = write_synthetic_carvana(tmp_path / "odd", cars=1, test_cars=0, size=(97, 65), seed=0, workers=1)
    mask = np.array(Image.open(next((out / "train_masks").iterdir())))
    assert mask.shape == (65, 97) and mask.any()


def test_refuses_a_non_empty_folder_and_bad_parameters(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(BenchError, match="not empty"):
        write_synthetic_carvana(tmp_path / "full", cars=1, test_cars=0, size=SIZE, seed=0)
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    with pytest.raises(BenchError, match="cars"):
        write_synthetic_carvana(tmp_path / "none", cars=0, test_cars=0, size=SIZE, seed=0)
    with pytest.raises(BenchError, match="too small"):
        write_synthetic_carvana(tmp_path / "tiny", cars=1, test_cars=0, size=(16, 16), seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no temporary folders left behind


def test_cache_generates_once_and_reuses(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "env-cache"))
    first = cached_synthetic_carvana(cars=1, test_cars=0, size=(64, 48), seed=3, workers=1)
    assert first == tmp_path / "env-cache" / "synthetic" / "v1" / "c1-t0-64x48-s3"
    marker = first / "train_masks.csv"
    stamp = marker.stat().st_mtime_ns
    assert cached_synthetic_carvana(cars=1, test_cars=0, size=(64, 48), seed=3) == first
    assert marker.stat().st_mtime_ns == stamp
    explicit = cached_synthetic_carvana(cars=1, test_cars=0, size=(64, 48), seed=3, cache_root=tmp_path / "c")
    assert explicit.parent.parent.parent == tmp_path / "c"


def test_cache_race_loser_uses_the_winners_folder(tmp_path: Path, monkeypatch) -> None:
    import harness.data.synthetic as synthetic

    generate = synthetic._generate
    out = tmp_path / "synthetic" / "v1" / "c1-t0-64x48-s0"

    def generate_then_lose(root: Path, *args) -> None:
        generate(root, *args)
        out.mkdir(parents=True)
        (out / "winner.txt").write_text("first")  # another process renamed its copy in meanwhile

    monkeypatch.setattr(synthetic, "_generate", generate_then_lose)
    assert cached_synthetic_carvana(cars=1, test_cars=0, size=(64, 48), seed=0, cache_root=tmp_path) == out
    assert [p.name for p in out.iterdir()] == ["winner.txt"]
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # the loser's copy is gone
