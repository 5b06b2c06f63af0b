"""The merge plugin: weighted mean, keep-largest-component and the seed's convex hulls, on synthetic maps."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from harness.errors import BenchError
from harness.runs.probabilities import quantise
from plugins.components import merging as merge


def test_registered_through_the_entry_point(plugins) -> None:
    assert plugins.get("merger", "mean").plugin == "merge"
    assert plugins.get("postprocessor", "keep_largest").plugin == "merge"
    assert plugins.get("postprocessor", "convex_hull").plugin == "merge"
    assert plugins.get("postprocessor", "seed_hull").plugin == "merge"


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


# seed_hull against a transcription of the original, generate_sub_final_ensemble.py:19-48 in
# asanakoy/kaggle_carvana_segmentation (b4821aa). The transcription keeps the original's calls, the
# tuple kernel and the unclipped y included; only findContours' return (two values since OpenCV 4)
# and the constants, parameters here so that small images can reach them, differ.


def _original_biggest_contour(im):
    contours, hierarchy = cv2.findContours(np.copy(im), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    biggest, maxarea = None, 0
    for cnt in contours:
        a = cv2.contourArea(cnt)
        if a > maxarea:
            biggest, maxarea = cnt, a
    return biggest


def _original_check_if_top_is_unreliable(mean_pred, albu_pred, area=40000, margin=50, inner=55, low=30, high=210):
    unreliable = np.zeros_like(albu_pred)
    rows, cols = unreliable.shape
    unreliable[(albu_pred > low) & (albu_pred < high)] = 255
    unreliable = cv2.erode(unreliable, (55, 55), iterations=10)
    unreliable = unreliable[0:rows // 2, ...]
    biggest = _original_biggest_contour(unreliable)
    if biggest is None:
        return None
    if cv2.contourArea(biggest) > area:
        x, y, w, h = cv2.boundingRect(biggest)
        x, y, w, h = max(x - margin, 0), y - margin, w + 2 * margin, h + 2 * margin
        mask = (albu_pred > inner).astype(np.uint8) * 255
        c = _original_biggest_contour(mask[y:y + h, x:x + w])
        c = cv2.convexHull(c)
        mask[y:y + h, x:x + w] = cv2.drawContours(mask[y:y + h, x:x + w], [c], -1, 255, -1)
        result = (mean_pred > 127).astype(np.uint8) * 255
        result[y:y + h, x:x + w] = mask[y:y + h, x:x + w]
        return result
    return None


def _original_mask(probability, mask, **constants):
    """The original's final mask (lines 101-109) for alexander's map ``probability`` as the harness
    stores it (quantised) and a merged ``mask``. Its mean is given as ``mask * 255``, so that both
    ``mean > 127`` (line 45) and ``mean >= 128`` (line 109) are ``mask``: how the original thresholds
    its own mean is not what is compared here."""
    mean = mask.astype(np.float32) * 255
    fixed = _original_check_if_top_is_unreliable(mean, quantise(probability), **constants)
    return mean >= 128 if fixed is None else fixed >= 128


def _levels(levels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A float map in [0, 1] that quantises to ``levels`` (off the exact levels, so rounding is exercised)."""
    jitter = np.random.default_rng(seed).uniform(-0.45, 0.45, levels.shape)
    return (np.clip(levels + jitter, 0, 255) / 255).astype(np.float32)


def _unsure_top(height: int = 1280, width: int = 1918) -> tuple[np.ndarray, np.ndarray]:
    """alexander's map and the merged mask: a car (level 240) whose top is unsure (level 120) with a
    bite out of it (level 10), a speck of mask inside the future box and one outside it."""
    levels = np.full((height, width), 5.0)
    levels[300:1000, 300:1600] = 240
    levels[150:400, 600:1300] = 120
    levels[150:250, 900:1000] = 10
    mask = levels >= 200
    mask[120:126, 560:571] = True  # inside the box (rows 110-450, columns 550-1349), outside the car
    mask[120:126, 1500:1511] = True  # outside the box
    return _levels(levels), mask


def test_seed_hull_replaces_the_box_by_the_hull_at_carvana_size() -> None:
    probability, mask = _unsure_top()
    result = merge.seed_hull()(probability, mask)
    np.testing.assert_array_equal(result, _original_mask(probability, mask))
    assert result[150:250, 900:1000].all() and not mask[150:250, 900:1000].any()  # the bite, filled
    assert result[150:400, 600:1300].all()  # the unsure top: above 55, so car
    assert not result[120:126, 560:571].any()  # the whole box replaces the mask, specks too
    outside = np.ones_like(mask)
    outside[110:451, 550:1350] = False
    np.testing.assert_array_equal(result[outside], mask[outside])
    assert result[120:126, 1500:1511].all()


def _unsure_rectangle(top: int, width: int, height: int = 211, image: tuple[int, int] = (1280, 1918)):
    """An unsure rectangle (level 120) alone; the mask is a horizontal stripe through it."""
    levels = np.full(image, 5.0)
    levels[top:top + height, 800:800 + width] = 120
    mask = np.zeros(image, bool)
    mask[top + 100:top + 110, :] = True
    return _levels(levels), mask


@pytest.mark.parametrize("width, fires", [(201, False), (202, True)])
def test_seed_hull_area_is_the_eroded_contour_polygon_strictly_above_40000(width: int, fires: bool) -> None:
    """211 rows lose their top 10 to the erosion; a (width x 201)-pixel rectangle's contour encloses
    (width - 1) * 200: 40,000 at width 201, which is not above 40,000 (though 40,401 pixels)."""
    probability, mask = _unsure_rectangle(200, width)
    result = merge.seed_hull()(probability, mask)
    np.testing.assert_array_equal(result, _original_mask(probability, mask))
    assert (result != mask).any() == fires
    if fires:  # the box (rows 160-460) is now the rectangle: the stripe is cut outside it
        assert result[210:411, 800:800 + width].all() and not result[300:310, 760:800].any()
        assert result[300:310, :750].all()


def test_seed_hull_leaves_the_mask_when_the_box_starts_above_the_image() -> None:
    """Rows 30-240, eroded to 40-240: y = 40 - 50 = -10, so the box is rows [-10:341], empty (numpy
    counts -10 from the bottom): the original raises there (convexHull of no contour); seed_hull
    returns the mask. The same rectangle 60 rows lower (y = 50) fires."""
    probability, mask = _unsure_rectangle(30, 300)
    assert np.zeros((1280, 1918))[-10:341].size == 0
    with pytest.raises(cv2.error):
        _original_mask(probability, mask)
    np.testing.assert_array_equal(merge.seed_hull()(probability, mask), mask)
    lower, lower_mask = _unsure_rectangle(90, 300)
    result = merge.seed_hull()(lower, lower_mask)
    assert (result != lower_mask).any()
    np.testing.assert_array_equal(result, _original_mask(lower, lower_mask))


def test_seed_hull_box_wraps_to_the_bottom_of_a_short_image() -> None:
    """On an image no taller than the box, a negative y selects bottom rows: unsure rows 15-55 (eroded
    to 25-55) give y = -25, height 131, rows [-25:106] = rows 95-105 of 120. The hull is taken there,
    on a car with a bite out of its top, and those rows alone change."""
    levels = np.full((120, 400), 5.0)
    levels[15:56, 100:301] = 120
    levels[90:116, 150:251] = 240
    levels[90:101, 190:211] = 0  # the bite
    probability = _levels(levels)
    mask = levels >= 200
    mask[95:106, 60:81] = True  # a speck in the wrapped box
    result = merge.seed_hull(min_area=1000)(probability, mask)
    np.testing.assert_array_equal(result, _original_mask(probability, mask, area=1000))
    changed = np.argwhere(result != mask)
    assert changed[:, 0].min() >= 95 and changed[:, 0].max() <= 105
    assert result[95:101, 190:211].all() and not result[95:106, 60:81].any()
    assert not result[15:56, 100:301].any()  # the unsure region itself is outside the box


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """A smooth random map at 128x144 (background on top, then unsure and sure patches) and its mask
    at 0.5, with the constants scaled down: margins from inside the image to past its top."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice([5.0, 120.0, 250.0], (8, 9)).astype(np.float32)
    coarse[0] = 5.0
    probability = _levels(np.clip(cv2.resize(coarse, (144, 128), interpolation=cv2.INTER_CUBIC), 0, 255), seed)
    constants = {"margin": int(rng.choice([3, 10, 30, 60])), "inner": int(rng.integers(30, 200)),
                 "min_area": float(rng.choice([150, 1500]))}
    return probability, probability >= 0.5, constants


def _original_outcome(probability, mask, constants) -> tuple[str, np.ndarray]:
    """What the original does with a random case: quiet, fires (box inside the image or wrapped to its
    bottom), or raises; and the mask it gives (none when it raises: seed_hull then keeps the mask)."""
    constants = dict(constants)
    reference = dict(area=constants.pop("min_area"), **constants)
    try:
        fixed = _original_check_if_top_is_unreliable(mask * 255.0, quantise(probability), **reference)
    except cv2.error:
        return "raises", mask
    if fixed is None:
        return "quiet", mask
    unsure = (((quantise(probability) > 30) & (quantise(probability) < 210)) * 255).astype(np.uint8)
    top = cv2.erode(unsure, (55, 55), iterations=10)[:64]
    y = cv2.boundingRect(_original_biggest_contour(top))[1] - reference["margin"]
    return ("fires" if y >= 0 else "fires, wrapped"), fixed >= 128


@pytest.mark.parametrize("seed", range(16))
def test_seed_hull_matches_the_original_on_random_maps(seed: int) -> None:
    probability, mask, constants = _random_case(seed)
    _, expected = _original_outcome(probability, mask, constants)
    np.testing.assert_array_equal(merge.seed_hull(**constants)(probability, mask), expected)


def test_seed_hull_random_maps_reach_every_branch() -> None:
    """The random cases above are quiet, fire (inside the image and wrapped) and raise, each at least once."""
    outcomes = {_original_outcome(*_random_case(seed))[0] for seed in range(16)}
    assert outcomes == {"quiet", "fires", "fires, wrapped", "raises"}


def test_seed_hull_reads_the_quantised_map() -> None:
    """Levels as the harness stores them, round(p * 255): p * 255 = 30.4 is level 30, not above 30;
    30.6 is 31, unsure; 209.6 is 210, not below 210. (``inner = 20``, so that the box holds a contour.)"""
    fired = {}
    for value in (30.4, 30.6, 209.4, 209.6):
        levels = np.full((1280, 1918), 5.0)
        levels[200:411, 800:1100] = value
        probability = (levels / 255).astype(np.float32)
        fired[value] = bool((merge.seed_hull(inner=20)(probability, np.zeros((1280, 1918), bool))).any())
    assert fired == {30.4: False, 30.6: True, 209.4: True, 209.6: False}


def test_the_tuple_kernel_erodes_only_from_above() -> None:
    """OpenCV's binding turns the tuple (55, 55) into a 2x1 matrix [[55], [55]]: with its anchor at
    (0, 1), a pixel survives a pass only if the pixel above it is set. Ten passes take the top 10
    rows off every vertical run (none off a run touching the top edge: the border counts as set);
    a real 55x55 kernel empties this image."""
    np.testing.assert_array_equal(cv2.copyTo((55, 55), None), [[55.0], [55.0]])
    image = np.zeros((200, 120), np.uint8)
    image[0:30, 5:20] = 255  # touches the top edge
    image[50:150, 30:110] = 255  # 100 rows
    image[160:168, 40:50] = 255  # 8 rows
    eroded = cv2.erode(image, (55, 55), iterations=10)
    expected = image.copy()
    expected[50:60, 30:110] = 0
    expected[160:168, 40:50] = 0
    np.testing.assert_array_equal(eroded, expected)
    np.testing.assert_array_equal(eroded, cv2.erode(image, np.ones((2, 1), np.uint8), iterations=10))
    assert not cv2.erode(image, np.ones((55, 55), np.uint8), iterations=10).any()
    assert not np.array_equal(eroded, cv2.erode(image, np.ones((1, 2), np.uint8), iterations=10))


def test_seed_hull_with_a_real_55x55_erosion_does_not_fire() -> None:
    """What the tuple seems to mean: 270 pixels off every side leaves no unsure region of the scene."""
    probability, mask = _unsure_top()
    assert (merge.seed_hull()(probability, mask) != mask).any()
    np.testing.assert_array_equal(merge.seed_hull(erode_rows=55, erode_cols=55)(probability, mask), mask)


@pytest.mark.parametrize("params, message", [
    ({"low": -1}, "low is a uint8 level"),
    ({"high": 256}, "high is a uint8 level"),
    ({"inner": 300}, "inner is a uint8 level"),
    ({"low": 210, "high": 30}, "need low < high"),
    ({"erode_rows": 0}, "erode_rows >= 1"),
    ({"erode_iterations": -1}, "erode_iterations >= 0"),
    ({"top": 0.0}, "top is the fraction"),
    ({"top": 1.5}, "top is the fraction"),
    ({"min_area": -5}, "min_area >= 0"),
    ({"margin": -1}, "margin >= 0"),
])
def test_seed_hull_parameters_are_checked(params: dict, message: str) -> None:
    with pytest.raises(BenchError, match=message) as raised:
        merge.seed_hull(**params)
    assert str(raised.value).startswith("seed_hull: ") and "\n" not in str(raised.value)


# --- the fast post-processors against the plain ones they replaced, bit for bit -----------------------------------


def _plain_keep_largest(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """keep_largest as it was: the whole image labelled."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=connectivity)
    if count <= 2:
        return mask
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _plain_convex_hull(probability: np.ndarray, mask: np.ndarray, low=0.12, high=0.82, min_area=0.002,
                       connectivity=8) -> np.ndarray:
    """convex_hull as it was: the whole image labelled, the hull of every confident pixel."""
    uncertain = ((probability > low) & (probability < high)).view(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(uncertain, connectivity=connectivity)
    large = [k for k in range(1, count) if stats[k, cv2.CC_STAT_AREA] >= min_area * probability.size]
    result = mask.copy()
    for k in large:
        x, y, width, height = (int(v) for v in stats[k, :4])
        box = (slice(y, y + height), slice(x, x + width))
        hull = np.zeros((height, width), dtype=np.uint8)
        points = cv2.findNonZero((probability[box] >= high).view(np.uint8))
        if points is not None:
            cv2.fillConvexPoly(hull, cv2.convexHull(points), 1)
        region = labels[box] == k
        result[box][region] = hull[region].astype(bool)
    return result


def _scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A map with a car-like body, an unsure window inside it, an unsure shadow beside it, stray blobs of
    several sizes and noise, placed at random (odd offsets included)."""
    probability = np.zeros((height, width), np.float32)
    for _ in range(int(rng.integers(0, 4))):  # bodies, some of them twins of one area
        top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
        size = (int(rng.integers(2, height // 2 + 3)), int(rng.integers(2, width // 2 + 3)))
        probability[top : top + size[0], left : left + size[1]] = rng.choice([0.95, 0.5, 0.3, 1.0])
        probability[top + 1 : top + size[0] // 2, left + 1 : left + size[1] // 2] = rng.choice([0.4, 0.6, 0.9])
    for _ in range(int(rng.integers(0, 3))):
        cv2.circle(probability, (int(rng.integers(width)), int(rng.integers(height))), int(rng.integers(1, 15)),
                   float(rng.choice([0.2, 0.7, 0.99])), -1)
    if rng.random() < 0.5:
        probability += rng.random((height, width), dtype=np.float32) * 0.3 * (rng.random((height, width)) < 0.05)
    return np.clip(probability, 0, 1)


@pytest.mark.parametrize("seed", range(4))
def test_fast_post_processors_give_the_plain_ones_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(150):
        height, width = int(rng.integers(3, 90)), int(rng.integers(3, 90))
        probability = _scene(rng, height, width)
        mask = probability >= 0.5
        for connectivity in (4, 8):
            np.testing.assert_array_equal(merge.keep_largest(connectivity)(probability, mask),
                                          _plain_keep_largest(mask, connectivity))
            for min_area in (0.0, 0.002, 0.05):
                np.testing.assert_array_equal(
                    merge.convex_hull(min_area=min_area, connectivity=connectivity)(probability, mask),
                    _plain_convex_hull(probability, mask, min_area=min_area, connectivity=connectivity))


@pytest.mark.parametrize("top,left", [(0, 0), (1, 0), (0, 1), (1, 1), (3, 5)])
def test_keep_largest_breaks_a_tie_as_the_whole_image_labelling_does(top: int, left: int) -> None:
    """Two components of one area, placed so that raster order and 2x2-block order could disagree, at
    odd and even offsets: the one kept is the one the whole image's labelling keeps."""
    mask = np.zeros((40, 40), bool)
    mask[top + 1, left + 5 : left + 9] = True  # 4 pixels, first met at row top + 1
    mask[top, left + 20 : left + 22] = mask[top + 1, left + 20 : left + 22] = True  # 4 pixels, met at row top
    for connectivity in (4, 8):
        np.testing.assert_array_equal(merge.keep_largest(connectivity)(np.zeros((40, 40), np.float32), mask),
                                      _plain_keep_largest(mask, connectivity))


def test_the_hull_of_the_row_ends_is_the_hull_of_every_pixel() -> None:
    from plugins.components.merging import _row_ends

    rng = np.random.default_rng(7)
    for _ in range(2000):
        height, width = int(rng.integers(1, 80)), int(rng.integers(1, 80))
        confident = _scene(rng, height, width) >= 0.82
        every = cv2.findNonZero(confident.view(np.uint8))
        ends = _row_ends(confident)
        assert (every is None) == (ends is None)
        if every is not None:
            np.testing.assert_array_equal(cv2.convexHull(ends), cv2.convexHull(every))


def test_pieces_counts_the_8_connected_components() -> None:
    from plugins.components.merging import _pieces

    rng = np.random.default_rng(3)
    for _ in range(3000):  # every density, pieces touching the border, pieces inside holes
        height, width = int(rng.integers(1, 30)), int(rng.integers(1, 30))
        image = (rng.random((height, width)) < rng.choice([0.05, 0.3, 0.6, 0.9])).astype(np.uint8)
        assert _pieces(image) == cv2.connectedComponents(image, connectivity=8)[0] - 1
    ring = np.zeros((9, 9), np.uint8)
    ring[1:8, 1:8], ring[2:7, 2:7], ring[4, 4] = 1, 0, 1  # a piece inside another's hole
    assert _pieces(ring) == 2
