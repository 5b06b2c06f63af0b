"""The test pass's merge: exactly ``quantise(merge(float maps)) >= cutoff``, computed on the few pixels where runs disagree.

The float path (``Ensemble.probability``) turns every run's uint8 level into float32 (``level / 255``,
``harness.runs.probabilities.levels_to_float``), takes a group's plain mean (``members.plain_mean``),
then merges the members' maps. A merger that declares ``pixelwise`` (``harness.recipe.hookspecs.bench_mergers``)
computes every output pixel from the same pixel of its inputs, with the same elementwise operations
whatever the arrays' shape. So the float path's value at a pixel depends on that pixel's levels in
every run and on nothing else, and this module gets it bit for bit in two parts:

* Where every run holds the same level ``c``, the value is the float path run on maps whose every
  pixel is ``c``. A 256-entry table, the float path run once on the levels 0..255 (one weight set per
  ensemble), holds that exact float32 value, hence also its quantised level and whether it passes.
* Where runs disagree, the float path itself runs on those pixels only, gathered into 1-D arrays.
  Conversion, ``+``, ``*``, ``/``, ``clip`` and ``rint`` are IEEE operations rounded element by element,
  so a pixel gets the same float32 wherever it sits in whichever array. The pixels are taken by words
  of 8 (every word holding a disagreeing pixel, compared and gathered as uint64): a word's agreeing
  pixels get the table's value from the float path too, and finding words is faster than finding
  pixels (1.9 against 4.4 ms for a full-size image of 4 runs).

Nothing is approximated, so no error bound is needed for exactness. For a convex combination (the
built-in ``mean``: non-negative weights normalised to sum 1) the table's level at ``c`` is ``c`` itself,
since the float32 error of ``sum(w * c / 255)`` (below 1e-6: the weights' rounding and one rounding
per term) is far below half a level (0.002), so at agreeing pixels the mask is
``level >= cutoff``, a single comparison. That is checked on the table, not assumed: a pixelwise merger
whose table is not a threshold is looked up instead. Agreeing pixels are nearly all of a car image
(background and body are certain in every model; the uncertain band along the outline is a few %), so
the float path runs on a few % of the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from harness.ensemble.members import plain_mean
from harness.recipe.hookspecs import Merge
from harness.runs.probabilities import LEVEL_COUNT, levels_to_float, quantise

ALL_LEVELS = np.arange(LEVEL_COUNT, dtype=np.uint8)  # every stored level, 0..255


@dataclass(frozen=True)
class Disagreement:
    """One image's levels reduced to what the merge needs: the first run's levels (every run's, where
    they agree), and the float path's values in the words of ``width`` pixels where they do not."""

    first: np.ndarray  # uint8 (H, W)
    words: np.ndarray  # indices of the words (of the flattened map) holding a disagreeing pixel
    width: int  # pixels per word: 8, or fewer when the map's size is not a multiple of 8
    values: np.ndarray  # float32, the float path at those words' pixels, word after word

    def pixels(self) -> int:
        return self.words.size * self.width


@dataclass(frozen=True)
class ExactMerge:
    """``merge`` with ``weights`` over members made of ``sizes`` runs each (a run: 1; a group: its runs),
    thresholded at ``cutoff``; see the module docstring."""

    sizes: tuple[int, ...]
    weights: tuple[float, ...]
    merge: Merge
    cutoff: int
    table: np.ndarray  # float32 (256,): the float path where every run's level is the index
    passes: np.ndarray  # bool (256,): quantise(table) >= cutoff
    threshold: int | None  # the level from which ``passes`` holds, when it is a threshold

    @classmethod
    def build(cls, sizes: Sequence[int], weights: Sequence[float], merge: Merge, cutoff: int) -> ExactMerge | None:
        """The exact merge, or ``None`` when the merger does not declare itself pixelwise (take the float path)."""
        if not getattr(merge, "pixelwise", False):
            return None
        table = _float_path([ALL_LEVELS] * sum(sizes), tuple(sizes), list(weights), merge)
        passes = quantise(table) >= cutoff
        start = int(np.count_nonzero(~passes))
        threshold = start if np.array_equal(passes, ALL_LEVELS >= start) else None
        return cls(tuple(sizes), tuple(weights), merge, cutoff, table, passes, threshold)

    def disagreement(self, levels: Sequence[np.ndarray]) -> Disagreement:
        """Find the words where ``levels`` (every run's uint8 map, members in order) differ; run the float path there."""
        where, width = differing_words(levels)
        return Disagreement(levels[0], where, width, self.values([gathered(level, where, width) for level in levels]))

    def values(self, gathered_levels: Sequence[np.ndarray]) -> np.ndarray:
        """The float path on pixels gathered from every run's map (members in order): bit for bit its
        values there in the whole maps (see the module docstring)."""
        return _float_path(gathered_levels, self.sizes, list(self.weights), self.merge)

    def mask(self, split: Disagreement) -> np.ndarray:
        """The mask ``quantise(merged) >= cutoff``, bool (H, W)."""
        mask = split.first >= self.threshold if self.threshold is not None else self.passes[split.first]
        _words(mask, split.width)[split.words] = (quantise(split.values) >= self.cutoff).view(_WORD[split.width])
        return mask

    def probability(self, split: Disagreement) -> np.ndarray:
        """The merged float32 map itself, for post-processors that read it. The agreeing pixels' values are
        looked up with OpenCV's LUT, the same table read the same way as NumPy's ``table[first]`` but
        vectorised: 1.3 ms for a full-size map on one thread, against 4.2 (AVX512)."""
        probability = cv2.LUT(split.first, self.table)
        probability.reshape(-1, split.width)[split.words] = split.values.reshape(-1, split.width)
        return probability


_WORD = {8: np.uint64, 4: np.uint32, 2: np.uint16, 1: np.uint8}


def differing_words(levels: Sequence[np.ndarray]) -> tuple[np.ndarray, int]:
    """The indices of the words of ``width`` pixels where the maps ``levels`` differ, and the width."""
    width = next(n for n in (8, 4, 2, 1) if levels[0].size % n == 0)
    words = [_words(level, width) for level in levels]
    differ = np.zeros(words[0].size, dtype=bool)
    for other in words[1:]:
        differ |= other != words[0]
    return np.flatnonzero(differ), width


def gathered(pixels: np.ndarray, where: np.ndarray, width: int) -> np.ndarray:
    """A one-byte-per-pixel map's pixels in the words ``where``, word after word (1-D uint8)."""
    return _words(np.ascontiguousarray(pixels), width)[where].view(np.uint8)


def _words(pixels: np.ndarray, width: int) -> np.ndarray:
    """A contiguous one-byte-per-pixel map seen as words of ``width`` pixels (a view: writes go through)."""
    return pixels.reshape(-1).view(_WORD[width])


def _float_path(levels: Sequence[np.ndarray], sizes: tuple[int, ...], weights: list[float], merge: Merge) -> np.ndarray:
    """What ``Ensemble.probability`` computes from these levels: each run's float map, a group's plain
    mean (as ``members.MeanMaps``), the merger. Any shape: whole maps, the table's 256 levels, gathered pixels."""
    maps, start = [], 0
    for size in sizes:  # a group of one run: its mean is its map divided by 1, the same floats, not computed
        runs = levels[start:start + size]
        maps.append(levels_to_float(runs[0]) if size == 1 else plain_mean(levels_to_float(level) for level in runs))
        start += size
    return merge(maps, weights)
