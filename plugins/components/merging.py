"""The merger and post-processors of the seed's final submission, for ``bench ensemble``.

``mean`` averages the members' probability maps with weights (the seed weighted its four models
0.25 each). ``keep_largest`` and ``convex_hull`` clean the thresholded mask; ``bench ensemble`` keeps
each only when out-of-fold Dice says it helps. Every factory returns a ``functools.partial`` of a
module-level function, so the result pickles (worker processes) and its repr shows its settings.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import cv2
import numpy as np

from harness.api import BenchError


def mean() -> partial:
    """Weighted arithmetic mean of the maps; weights need not sum to 1 (counts from greedy selection)."""
    return partial(_weighted_mean)


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
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=connectivity)
    if count <= 2:  # background plus at most one component: nothing to remove
        return mask
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


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
    count, labels, stats, _ = cv2.connectedComponentsWithStats(uncertain, connectivity=connectivity)
    min_pixels = min_area * probability.size
    large = [k for k in range(1, count) if stats[k, cv2.CC_STAT_AREA] >= min_pixels]
    if not large:
        return mask
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


def _check_connectivity(connectivity: int) -> None:
    if connectivity not in (4, 8):
        raise BenchError(f"connectivity must be 4 or 8, got {connectivity}")
