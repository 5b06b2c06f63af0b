"""Carvana RLE: the competition's test vector, exact round trips at full size, loud failures."""

from __future__ import annotations

import numpy as np
import pytest

from harness.data import rle

HEIGHT, WIDTH = 1280, 1918


def test_seed_vector() -> None:
    mask = np.array([[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]], dtype=np.uint8)
    assert rle.encode(mask) == "7 2 11 2"
    np.testing.assert_array_equal(rle.decode("7 2 11 2", (4, 4)), mask)


def test_runs_cross_row_ends_in_c_order() -> None:
    mask = np.zeros((2, 3), dtype=np.uint8)
    mask[0, 2] = mask[1, 0] = 1  # one run wrapping from row 0 into row 1
    assert rle.encode(mask) == "3 2"


def _blobs(rng: np.random.Generator) -> np.ndarray:
    """A few random filled ellipses: long runs, like car masks."""
    rows, cols = np.ogrid[:HEIGHT, :WIDTH]
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    for _ in range(rng.integers(1, 6)):
        cy, cx = rng.integers(0, HEIGHT), rng.integers(0, WIDTH)
        ry, rx = rng.integers(5, HEIGHT // 2), rng.integers(5, WIDTH // 2)
        mask |= ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
    return mask.astype(np.uint8)


def _noise(rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper: the worst case, about a million runs."""
    return (rng.random((HEIGHT, WIDTH)) < rng.uniform(0.05, 0.95)).astype(np.uint8)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("make", [_blobs, _noise], ids=["blobs", "noise"])
def test_round_trip_full_size(seed: int, make) -> None:
    mask = make(np.random.default_rng(seed))
    decoded = rle.decode(rle.encode(mask), (HEIGHT, WIDTH))
    assert decoded.dtype == np.uint8 and decoded.shape == (HEIGHT, WIDTH)
    np.testing.assert_array_equal(decoded, mask)


def test_borders_round_trip() -> None:
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[0, 0] = mask[-1, -1] = 1
    assert rle.encode(mask) == f"1 1 {HEIGHT * WIDTH} 1"
    np.testing.assert_array_equal(rle.decode(rle.encode(mask), (HEIGHT, WIDTH)), mask)


def test_non_binary_values_count_as_one() -> None:
    mask = np.array([[0, 255], [7, 0]], dtype=np.uint8)
    assert rle.encode(mask) == "2 2"


def test_empty_and_full_masks() -> None:
    empty = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    assert rle.encode(empty) == ""
    np.testing.assert_array_equal(rle.decode("", (HEIGHT, WIDTH)), empty)
    full = np.ones((HEIGHT, WIDTH), dtype=np.uint8)
    assert rle.encode(full) == f"1 {HEIGHT * WIDTH}"
    np.testing.assert_array_equal(rle.decode(rle.encode(full), (HEIGHT, WIDTH)), full)


@pytest.mark.parametrize(
    "text",
    ["1 2 3", "a b", "1.5 2", "0 2", "1 0", "1 -2", "15 3", "5 2 6 2", "9 2 1 2"],
    ids=["odd", "letters", "float", "start-0", "zero-length", "negative", "past-end", "overlap", "unsorted"],
)
def test_malformed_strings_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        rle.decode(text, (4, 4))
