"""The merge plugin: weighted mean, keep-largest-component and the seed's convex hull, on synthetic maps."""

from __future__ import annotations

import numpy as np
import pytest

from harness.errors import BenchError
from plugins.components import merging as merge


def test_registered_through_the_entry_point(plugins) -> None:
    assert plugins.get("merger", "mean").plugin == "merge"
    assert plugins.get("postprocessor", "keep_largest").plugin == "merge"
    assert plugins.get("postprocessor", "convex_hull").plugin == "merge"


def test_mean_weighs_and_normalises() -> None:
    low, high = np.full((4, 5), 0.2, np.float32), np.full((4, 5), 0.8, np.float32)
    merged = merge.mean()([low, high], [1, 3])
    assert merged.dtype == np.float32
    np.testing.assert_allclose(merged, 0.65, atol=1e-6)


def test_mean_ignores_a_zero_weight_member_entirely() -> None:
    merged = merge.mean()([np.ones((2, 2), np.float32), np.full((2, 2), np.nan, np.float32)], [1.0, 0.0])
    np.testing.assert_array_equal(merged, 1.0)


@pytest.mark.parametrize("weights", [[1.0], [0.0, 0.0], [1.0, -0.5]])
def test_mean_rejects_bad_weights(weights) -> None:
    with pytest.raises(ValueError):
        merge.mean()([np.zeros((2, 2), np.float32)] * 2, weights)


def test_keep_largest_drops_smaller_components() -> None:
    mask = np.zeros((30, 40), bool)
    mask[2:20, 2:20] = True  # the car
    mask[25:28, 30:35] = True  # a speck
    mask[2:4, 35:38] = True  # another
    kept = merge.keep_largest()(np.zeros((30, 40), np.float32), mask)
    expected = np.zeros_like(mask)
    expected[2:20, 2:20] = True
    np.testing.assert_array_equal(kept, expected)


@pytest.mark.parametrize("fill", [False, True])
def test_keep_largest_leaves_empty_and_single_masks(fill: bool) -> None:
    mask = np.zeros((10, 10), bool)
    mask[3:6, 3:6] = fill
    np.testing.assert_array_equal(merge.keep_largest()(np.zeros((10, 10), np.float32), mask), mask)


def test_keep_largest_connectivity_decides_what_touches() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True
    mask[5:7, 5:7] = True  # touches the first only at a corner
    probability = np.zeros((10, 10), np.float32)
    assert merge.keep_largest(connectivity=8)(probability, mask).sum() == 13
    assert merge.keep_largest(connectivity=4)(probability, mask).sum() == 9


def _car(height: int = 100, width: int = 100) -> np.ndarray:
    probability = np.zeros((height, width), np.float32)
    probability[10:90, 10:90] = 0.95
    return probability


def test_convex_hull_fills_an_unsure_region_inside_the_car() -> None:
    """A diamond of p=0.4 (so 0 after thresholding) inside a confident square: the square's confident
    corners in the diamond's box span a hull that covers it, so it is filled."""
    probability = _car()
    for row in range(30, 71):
        half = 20 - abs(row - 50)
        probability[row, 50 - half : 51 + half] = 0.4
    mask = probability >= 0.5
    result = merge.convex_hull()(probability, mask)
    np.testing.assert_array_equal(result, _car() >= 0.5)
    assert not mask[60, 50] and result[60, 50]


def test_convex_hull_cuts_an_unsure_blob_outside_the_car() -> None:
    """A shadow of p=0.6 (so 1 after thresholding) below the car holds no confident pixel in its box."""
    probability = np.zeros((100, 100), np.float32)
    probability[10:50, 10:90] = 0.95
    probability[50:80, 30:60] = 0.6
    result = merge.convex_hull()(probability, probability >= 0.5)
    np.testing.assert_array_equal(result, probability >= 0.9)


def test_convex_hull_leaves_small_regions_and_other_pixels_alone() -> None:
    probability = np.zeros((100, 100), np.float32)
    probability[10:50, 10:90] = 0.95
    probability[60:63, 30:33] = 0.6  # 9 pixels: below min_area (0.2% of 10,000 = 20)
    mask = probability >= 0.5
    mask[95, 95] = True  # a pixel no region covers stays as it was, even if p says otherwise
    np.testing.assert_array_equal(merge.convex_hull()(probability, mask), mask)
    assert not merge.convex_hull(min_area=0.0005)(probability, mask)[61, 31]


def test_convex_hull_parameters_are_checked() -> None:
    with pytest.raises(BenchError, match="low < high"):
        merge.convex_hull(low=0.9, high=0.5)
    with pytest.raises(BenchError, match="min_area"):
        merge.convex_hull(min_area=2.0)
    with pytest.raises(BenchError, match="connectivity"):
        merge.keep_largest(connectivity=6)
