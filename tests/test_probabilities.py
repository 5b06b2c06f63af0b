"""The compressed probability store: exact, one file per image, resumable, old raw stores still read."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from harness.errors import BenchError
from harness.runs.probabilities import ProbabilityMaps, binarise, estimated_bytes, quantise

SHAPES = {"car_01": (6, 9), "car_02": (4, 5)}


def _car_map(height: int = 1280, width: int = 1918) -> np.ndarray:
    """A full-size car silhouette upsampled from 144x96: its soft band is wider than a trained model's."""
    small = np.zeros((96, 144), np.float32)
    cv2.ellipse(small, (72, 55), (55, 22), 0, 0, 360, 1.0, -1)
    small = cv2.GaussianBlur(small, (5, 5), 1.2)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def test_maps_come_back_exactly_and_the_threshold_survives(tmp_path):
    rng = np.random.default_rng(0)
    store = ProbabilityMaps.create(tmp_path / "maps", SHAPES)
    written = {image_id: rng.random(shape, dtype=np.float32) for image_id, shape in SHAPES.items()}
    for image_id, probability in written.items():
        store[image_id] = probability
    again = ProbabilityMaps.open(tmp_path / "maps")
    for image_id, probability in written.items():
        assert np.array_equal(again.quantised(image_id), quantise(probability))
        assert np.array_equal(binarise(again.quantised(image_id)), probability >= 0.5)
        assert again.read_float(image_id).dtype == np.float32


def test_a_car_map_takes_a_twentieth_of_its_raw_size(tmp_path):
    store = ProbabilityMaps.create(tmp_path / "maps", {"car_01": (1280, 1918)})
    store["car_01"] = _car_map()
    taken = store.file("car_01").stat().st_size
    assert taken * 20 < 1280 * 1918
    assert estimated_bytes(store.shapes) >= taken, "the disk check reserves at least what it takes"


def test_what_is_written_is_known_and_a_reopened_store_keeps_it(tmp_path):
    store = ProbabilityMaps.create(tmp_path / "maps", SHAPES)
    store.put("car_02", np.full((4, 5), 7, np.uint8))
    leftover = tmp_path / "maps" / ".car_01.zst.123-4.tmp"  # what a killed writer leaves
    leftover.write_bytes(b"half")
    os.utime(leftover, (time.time() - 7200,) * 2)
    in_flight = tmp_path / "maps" / ".car_03.zst.456-7.tmp"  # another process of the run, writing now
    in_flight.write_bytes(b"half")
    again = ProbabilityMaps.create(tmp_path / "maps", SHAPES)  # a resumed run, or another fold's process
    assert again.written_ids() == {"car_02"}
    assert not leftover.exists()
    assert in_flight.exists(), "a temporary file of a live writer is left alone"
    assert again.quantised("car_02").max() == 7


def test_a_store_of_other_images_is_not_reused(tmp_path):
    ProbabilityMaps.create(tmp_path / "maps", SHAPES)
    with pytest.raises(BenchError, match="holds other images than this run predicts"):
        ProbabilityMaps.create(tmp_path / "maps", {"car_01": (6, 9)})


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_bytes(b""), "cannot be read back"),
    (lambda path: path.unlink(), "its prediction did not finish"),
])
def test_a_damaged_or_missing_map_is_one_line_naming_its_file(tmp_path, damage, message):
    store = ProbabilityMaps.create(tmp_path / "maps", SHAPES)
    store.put("car_01", np.zeros((6, 9), np.uint8))
    damage(store.file("car_01"))
    with pytest.raises(BenchError, match=message) as error:
        store.quantised("car_01")
    assert str(store.file("car_01")) in str(error.value) and "\n" not in str(error.value)


def _raw_store(path: Path) -> dict[str, np.ndarray]:
    """A store as segbench wrote it before compression: the levels end to end, and an index."""
    levels = {image_id: np.arange(h * w, dtype=np.uint8).reshape(h, w) for image_id, (h, w) in SHAPES.items()}
    path.with_suffix(".u8").write_bytes(b"".join(level.tobytes() for level in levels.values()))
    path.with_suffix(".json").write_text(json.dumps({"ids": list(SHAPES), "shapes": list(SHAPES.values())}))
    return levels


def test_an_old_raw_store_is_read_and_resuming_into_it_is_refused(tmp_path):
    levels = _raw_store(tmp_path / "test_maps")
    old = ProbabilityMaps.open(tmp_path / "test_maps")
    assert all(np.array_equal(old.quantised(i), levels[i]) for i in SHAPES)
    assert np.allclose(old.read_float("car_02"), levels["car_02"] / 255)
    with pytest.raises(BenchError, match="uncompressed store, written by an older segbench"):
        ProbabilityMaps.create(tmp_path / "test_maps", SHAPES)
