"""The merger and post-processors of the seed's final submission, for ``bench ensemble``.

``mean`` averages the members' probability maps with weights (the seed weighted its four models
0.25 each). ``keep_largest`` and ``convex_hull`` clean the thresholded mask; ``bench ensemble`` keeps
each only when out-of-fold Dice says it helps. ``seed_hull`` is the original's own rule for an
unreliable car top, quirks included, beside ``convex_hull``, our generalised reading of it. Every
factory returns a ``functools.partial`` of a module-level function, so the result pickles (worker
processes) and its repr shows its settings.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import cv2
import numpy as np

from harness.api import BenchError


def mean() -> partial:
    """Weighted arithmetic mean of the maps; weights need not sum to 1 (counts from greedy selection).

    Declared ``pixelwise`` (see ``bench_mergers``): every output pixel is the same float32 multiplies
    and adds of that pixel alone, so ``bench ensemble`` may merge only the pixels where members disagree.
    """
    merge = partial(_weighted_mean)
    merge.pixelwise = True
    return merge


def _weighted_mean(maps: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    if len(maps) != weights.size or weights.size == 0:
        raise ValueError(f"{len(maps)} maps for {weights.size} weights")
    if np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {weights.tolist()}")
    weights = (weights / weights.sum()).astype(np.float32)
    merged = np.zeros(maps[0].shape, dtype=np.float32)
    for probability, weight in zip(maps, weights):
        if weight:  # a zero weight must not let a NaN in
            merged += weight * probability
    return merged


def keep_largest(connectivity: int = 8) -> partial:
    """Keep only the largest connected component of the mask (a car is one piece)."""
    _check_connectivity(connectivity)
    return partial(_keep_largest, connectivity=connectivity)


def _keep_largest(probability: np.ndarray, mask: np.ndarray, *, connectivity: int) -> np.ndarray:
    box = _aligned_box(mask.view(np.uint8))
    if box is None:
        return mask
    inside = mask[box].view(np.uint8)
    if connectivity == 8 and _pieces(inside) <= 1:  # one car, the usual case: nothing to remove
        return mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(inside, connectivity=connectivity)
    if count <= 2:  # background plus at most one component: nothing to remove
        return mask
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    kept = np.zeros_like(mask)
    kept[box] = labels == largest
    return kept


def convex_hull(low: float = 0.12, high: float = 0.82, min_area: float = 0.002, connectivity: int = 8) -> partial:
    """The seed's convex hull for non-confident regions, as read here.

    SEED.md: "where one model's map is uncertain (0.12 < p < 0.82) in a large connected region,
    replace that region by the filled convex hull of the confident mask inside its bounding box."
    Exact reading implemented:

    1. ``uncertain = low < p < high`` on the map handed in (the merged map: the post-processor
       contract sees one map, so "one model's map" becomes the ensemble's map).
    2. Its connected components (``connectivity``) whose area is at least ``min_area`` times the
       image area are the large regions; smaller ones are left as thresholded.
    3. For each large region, take its bounding box; the confident mask there is ``p >= high``
       (every confident car pixel in the box, whether or not it touches the region). Fill the convex
       hull of those pixels.
    4. Replace the region's own pixels (and only those) by the filled hull: 1 inside it, 0 outside.
       A box without confident pixels empties the region.

    So an unsure hole inside the car (a window) is filled, and an unsure blob hanging outside the car's
    outline (a shadow) is cut. The default ``min_area`` (0.2% of the image, about 4,900 pixels at
    1918x1280) is a guess the seed does not state; the out-of-fold guard in ``bench ensemble`` decides
    whether the rule is used at all.
    """
    if not 0.0 <= low < high <= 1.0:
        raise BenchError(f"convex_hull: need 0 <= low < high <= 1, got low={low}, high={high}")
    if not 0.0 <= min_area <= 1.0:
        raise BenchError(f"convex_hull: min_area is a fraction of the image in [0, 1], got {min_area}")
    _check_connectivity(connectivity)
    return partial(_convex_hull, low=low, high=high, min_area=min_area, connectivity=connectivity)


def _convex_hull(probability: np.ndarray, mask: np.ndarray, *, low: float, high: float, min_area: float,
                 connectivity: int) -> np.ndarray:
    uncertain = ((probability > low) & (probability < high)).view(np.uint8)
    large = _large_regions(uncertain, connectivity, min_area * probability.size)
    if not large:
        return mask
    result = mask.copy()
    for box, region in large:  # disjoint regions, each's hull from the map: the order does not matter
        hull = np.zeros(region.shape, dtype=np.uint8)
        points = _row_ends(probability[box] >= high)
        if points is not None:
            cv2.fillConvexPoly(hull, cv2.convexHull(points), 1)
        result[box][region] = hull[region].astype(bool)
    return result


def _large_regions(image: np.ndarray, connectivity: int, min_pixels: float) -> list[tuple[tuple[slice, slice], np.ndarray]]:
    """The connected components of a uint8 image's non-zero pixels that hold at least ``min_pixels``, each
    as its bounding box and its pixels there (bool). A car's uncertain band is usually one piece, found
    with its outer borders (``_pieces``) and taken whole without labelling; otherwise the box of all of
    them is labelled without OpenCV's statistics (7.8 ms for a full-size car's box on one thread; 4.7
    without them, the areas counted and the boxes found here)."""
    around = _aligned_box(image)
    if around is None:
        return []
    if connectivity == 8 and _pieces(image[around]) == 1:
        if cv2.countNonZero(image) < min_pixels:
            return []
        x, y, width, height = cv2.boundingRect(image)
        box = (slice(y, y + height), slice(x, x + width))
        return [(box, image[box].view(bool))]
    count, labels = cv2.connectedComponents(image[around], connectivity=connectivity)
    areas = np.bincount(labels.ravel(), minlength=count)
    top, left = around[0].start, around[1].start
    regions = []
    for label in np.flatnonzero(areas[1:] >= min_pixels) + 1:
        own = (labels == label).view(np.uint8)
        x, y, width, height = cv2.boundingRect(own)
        regions.append(((slice(top + y, top + y + height), slice(left + x, left + x + width)),
                        own[y : y + height, x : x + width].view(bool)))
    return regions


def _aligned_box(image: np.ndarray) -> tuple[slice, slice] | None:
    """The bounding box of a uint8 image's non-zero pixels, its top-left corner moved up and left to even
    coordinates; None when there are none. Labelling the box alone gives the same components, with the
    same stats and in the same order, as labelling the whole image: OpenCV labels 8-connected components
    by 2x2 blocks in raster order, and a box aligned to even coordinates keeps the whole image's blocks
    (an unaligned box can break a tie between two largest components the other way: tested). At
    Carvana's size the box of a car's mask or of its uncertain band is about half the image."""
    x, y, width, height = cv2.boundingRect(image)
    if width == 0 or height == 0:
        return None
    return slice(y - y % 2, y + height), slice(x - x % 2, x + width)


def _pieces(image: np.ndarray) -> int:
    """The number of 8-connected components of a uint8 image's non-zero pixels: its outer borders, the
    contours without a parent in OpenCV's two-level hierarchy (a piece inside another's hole is at the
    top level too). 0.16 ms for a full-size car's box where labelling it with stats takes 6.7 (one thread)."""
    _, hierarchy = cv2.findContours(image, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return 0 if hierarchy is None else int(np.count_nonzero(hierarchy[0][:, 3] == -1))


def _row_ends(confident: np.ndarray) -> np.ndarray | None:
    """The first and last set pixel of every row of a bool image, as OpenCV points, or None when none is set.

    Their convex hull is the convex hull of all the set pixels: a pixel between two others of its row is
    on the segment joining them, never a vertex of the hull. ``cv2.convexHull`` of a car's confident
    pixels (about 870,000 in the box of a full-size car's uncertain band) took 74 ms; of their row ends
    (about 2,000) it takes a fraction of a millisecond, and returns the same vertices in the same order
    (``tests/test_merge.py`` compares them on thousands of shapes)."""
    rows = np.flatnonzero(confident.any(axis=1))
    if rows.size == 0:
        return None
    held = confident[rows]
    points = np.empty((2 * rows.size, 1, 2), dtype=np.int32)
    points[0::2, 0, 0] = held.argmax(axis=1)
    points[1::2, 0, 0] = held.shape[1] - 1 - held[:, ::-1].argmax(axis=1)
    points[0::2, 0, 1] = points[1::2, 0, 1] = rows
    return points


def seed_hull(low: int = 30, high: int = 210, erode_rows: int = 2, erode_cols: int = 1, erode_iterations: int = 10,
              top: float = 0.5, min_area: float = 40000, margin: int = 50, inner: int = 55) -> partial:
    """The seed's own convex-hull fix of an unreliable car top, step by step, quirks included.

    ``convex_hull`` above is what SEED.md describes, generalised. This is what the code does:
    ``check_if_top_is_unreliable`` in ``generate_sub_final_ensemble.py:29-48`` of
    asanakoy/kaggle_carvana_segmentation, as last changed in b4821aa (2017-10-14). The rule came in
    d3dc028 (2017-10-13) with a 5-pixel margin, ``A > 7`` and no hull; ec0e6e7 set today's steps, and
    until b4821aa its result reached only the saved PNGs, not the submission's masks (lines 101-104).
    It reads alexander's uint8 map ``A`` only (the one member whose folder name holds "albu", lines
    88-89). Here ``probability`` is the map of the member an ensemble spec's ``reads`` names
    (``ensembles/seed_merge.toml``: alexander's), or the merged map where none is named (``--post
    seed_hull``), and ``mask`` the merged, thresholded mask.

    ``A`` is ``probability`` quantised exactly as the harness stores maps,
    ``round(clip(p, 0, 1) * 255)`` (``harness/runs/probabilities.py``, ``quantise``), so ``low``,
    ``high`` and ``inner`` are uint8 levels compared as the original compared them. Steps:

    1. ``uncertain = low < A < high`` (line 32: 30 < A < 210).
    2. Erode it (line 33). The original passes the tuple ``(55, 55)`` as the kernel; OpenCV's Python
       binding turns a tuple into a 2-row, 1-column CV_64F matrix ``[[55], [55]]`` (only its being
       non-zero counts), so the structuring element is 2 rows by 1 column, anchored by default at
       ``(x, y) = (0, 1)``, its lower cell: a pixel survives a pass only if the pixel above it is set
       too. Ten passes (OpenCV merges them into one 11x1 element anchored at its bottom cell) keep a
       pixel only if it and the 10 pixels above it are uncertain: every vertical run of uncertain
       pixels loses its top 10 rows and nothing else, and a run touching the image's top edge loses
       nothing (the border counts as set in an erosion). ``erode_rows`` x ``erode_cols`` of ones
       with ``erode_iterations`` passes is that erosion (2, 1, 10); a real 55x55 kernel, what the
       call seems to mean, would take 270 pixels off every side.
    3. Keep the top ``top`` of the rows, ``int(rows * top)`` (line 34: ``rows // 2``).
    4. Its single biggest external contour by ``cv2.contourArea`` (the polygon's area, smaller than
       its pixel count; lines 19-26: the first of the largest, and only one of positive area). If
       there is none, or its area is not above ``min_area`` (line 38: ``> 40000``, in pixels at
       the map's own size), the mask is returned as it is (lines 36-37, 48).
    5. Its bounding box grown by ``margin`` (line 40): ``x - margin`` clipped at 0 but the width
       grown by ``2 * margin`` all the same, so a clipped box reaches further right; ``y - margin``
       NOT clipped (numpy cuts the right and bottom ends at the image's edges). A negative ``y`` is
       a numpy index from the bottom: the rows are ``[rows + y, min(y + height, rows))``, empty
       whenever the box is no taller than the image (always at Carvana's 1280 rows: the box is at
       most 640 + 2 * 50 rows). On a shorter image the box wraps to the bottom rows, and the rule
       acts there.
    6. In the box: ``A > inner`` (line 41: 55), its biggest contour (as in 4), the filled convex hull
       of that drawn over it (lines 42-44). So the box becomes ``(A > inner)`` or the hull.
    7. The whole box replaces the result (line 46); outside it, ``mask`` stands.

    Where the original does otherwise:

    * It raises (``cv2.convexHull(None)``: no contour of positive area in the box, which includes
      every empty box of step 5) and the whole submission stops; here the mask is returned as it
      is, as when the rule does not fire.
    * Outside the box it re-thresholds its unrounded 0..255 mean at ``> 127`` (line 45), where
      elsewhere it takes ``>= 128`` (line 109): a mean of 127.25 is car only in an image the rule
      fired on. Here ``mask`` stands outside the box, at whatever threshold the ensemble chose.
    * It ran OpenCV 3.2 (requirements.txt); the contours, erosion and hull are the same calls here,
      but which contour wins a tie in area follows the installed OpenCV's contour order.
    """
    for name, value in (("low", low), ("high", high), ("inner", inner)):
        if not 0 <= value <= 255:
            raise BenchError(f"seed_hull: {name} is a uint8 level in [0, 255], got {value}")
    if low >= high:
        raise BenchError(f"seed_hull: need low < high, got low={low}, high={high}")
    if erode_rows < 1 or erode_cols < 1 or erode_iterations < 0:
        raise BenchError(f"seed_hull: need erode_rows >= 1, erode_cols >= 1 and erode_iterations >= 0, got "
                         f"{erode_rows}, {erode_cols} and {erode_iterations}")
    if not 0.0 < top <= 1.0:
        raise BenchError(f"seed_hull: top is the fraction of rows searched, in (0, 1], got {top}")
    if min_area < 0 or margin < 0:
        raise BenchError(f"seed_hull: need min_area >= 0 and margin >= 0, got {min_area} and {margin}")
    return partial(_seed_hull, low=low, high=high, kernel=(erode_rows, erode_cols), iterations=erode_iterations,
                   top=top, min_area=min_area, margin=margin, inner=inner)


def _seed_hull(probability: np.ndarray, mask: np.ndarray, *, low: int, high: int, kernel: tuple[int, int],
               iterations: int, top: float, min_area: float, margin: int, inner: int) -> np.ndarray:
    level = np.rint(np.clip(probability, 0.0, 1.0) * 255).astype(np.uint8)  # as harness quantise
    uncertain = ((level > low) & (level < high)).view(np.uint8)
    uncertain = cv2.erode(uncertain, np.ones(kernel, np.uint8), iterations=iterations)
    region = _biggest_contour(uncertain[: int(level.shape[0] * top)])
    if region is None or cv2.contourArea(region) <= min_area:
        return mask
    x, y, width, height = cv2.boundingRect(region)
    x, y, width, height = max(x - margin, 0), y - margin, width + 2 * margin, height + 2 * margin
    box = (slice(y, y + height), slice(x, x + width))  # a negative y counts from the bottom, as in the seed
    car = (level[box] > inner).view(np.uint8)
    outline = _biggest_contour(car) if car.size else None
    if outline is None:  # the seed raises here
        return mask
    cv2.drawContours(car, [cv2.convexHull(outline)], -1, 1, thickness=cv2.FILLED)
    result = mask.copy()
    result[box] = car.view(bool)
    return result


def _biggest_contour(image: np.ndarray) -> np.ndarray | None:
    """The first external contour of the largest ``cv2.contourArea``; ``None`` if none has a positive area."""
    contours, _ = cv2.findContours(image, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    areas = [cv2.contourArea(contour) for contour in contours]
    if not areas or max(areas) <= 0:
        return None
    return contours[int(np.argmax(areas))]


def _check_connectivity(connectivity: int) -> None:
    if connectivity not in (4, 8):
        raise BenchError(f"connectivity must be 4 or 8, got {connectivity}")
