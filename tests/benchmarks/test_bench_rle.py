"""Throughput of RLE on a full-size car mask: a submission encodes 100,064 of them.

Disabled by default (pyproject passes ``--benchmark-disable``, so each runs once as a test); measure
with ``pytest tests/benchmarks/test_bench_rle.py --benchmark-enable``.
"""

from __future__ import annotations

import numpy as np
import pytest

from harness.data import rle

HEIGHT, WIDTH = 1280, 1918


@pytest.fixture(scope="module")
def car_mask() -> np.ndarray:
    """A car-like silhouette: a filled ellipse (cabin) over a rectangle (body).

    One run per covered row (720 runs), 37% of the image: close to a real Carvana mask.
    """
    rows, cols = np.ogrid[:HEIGHT, :WIDTH]
    cabin = ((rows - 520) / 260) ** 2 + ((cols - 960) / 520) ** 2 <= 1
    body = (rows >= 560) & (rows < 980) & (cols >= 180) & (cols < 1740)
    return (cabin | body).astype(np.uint8)


def test_encode(benchmark, car_mask: np.ndarray) -> None:
    text = benchmark(rle.encode, car_mask)
    assert text.count(" ") + 1 == 2 * np.count_nonzero(np.diff(car_mask.ravel(), prepend=0) == 1)


def test_decode(benchmark, car_mask: np.ndarray) -> None:
    text = rle.encode(car_mask)
    decoded = benchmark(rle.decode, text, (HEIGHT, WIDTH))
    np.testing.assert_array_equal(decoded, car_mask)
