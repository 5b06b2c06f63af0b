"""Choosing an ensemble on out-of-fold data: Dice at every threshold, greedy selection, the guard.

Everything here works on small per-image summaries, never on maps, so the search over members,
weights and thresholds costs one streaming pass over the images per greedy step:

* ``dice_curve`` turns one merged map and its truth into the image's Dice at all 256 cutoffs
  (``u >= c`` on the uint8 scale), from two histograms and their cumulative sums. The mean of those
  curves over images is the pooled out-of-fold Dice at every threshold, so tuning the threshold needs
  no extra pass.
* ``greedy_step`` is one step of forward selection with replacement (Caruana et al., 2004): the
  members chosen so far are counts, so weights emerge as count / total. Its second step can only
  pair two runs 50/50, so a weak run that helps at a small weight never gets in: with replacement a
  run's weight is count / total, and 10% takes ten steps.
* ``blended_mixtures`` are the candidates of the blend steps that ``--search grid`` takes after
  greedy's, picked the same way (``greedy_step``): the current mixture blended with one run at a
  weight from ``BLEND_GRID`` (10% to 50%), so a run can enter at 10%.
* ``decide_postprocessing`` is the no-regression guard.

Intervals come from ``harness.evaluate.stats`` (bootstrap over cars), as for ``bench compare``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from harness.runs.probabilities import LEVEL_COUNT

SEED_CUTOFF = 128  # p >= 0.5 on the uint8 scale (harness.runs.probabilities.binarise)
_WORSE = 1e-9  # a per-image Dice drop below this is float noise, not an image made worse
_EXACT_IN_FLOAT32 = 2**24  # the most pixels OpenCV's float32 histogram counts exactly


def dice_curve(quantised: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice of ``quantised >= c`` against ``truth`` for every cutoff ``c`` in 0..255 (float64, 256)."""
    return counts_curve(level_counts(quantised, truth))


def level_counts(quantised: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pixels per (level, truth): int64 (512,), the background's levels first, then the object's.

    OpenCV's histogram, of all pixels and of the object's (``truth`` as its mask): 2.8-3.6 ms for a
    full-size car map on one thread against 8.3-9.2 for NumPy's ``bincount`` of level + 256 x truth, which
    needs an int32 copy first (7.5 against 9.6 on random levels; AVX512). Its float32 bins count exactly up to 2**24 pixels, over six times a Carvana image; a larger
    map (or an empty one, which OpenCV refuses) is counted by NumPy."""
    if not 0 < quantised.size <= _EXACT_IN_FLOAT32:
        keys = quantised.ravel().astype(np.int32)
        keys += truth.ravel().astype(bool) * LEVEL_COUNT  # truth pixels count in the upper half
        return np.bincount(keys, minlength=2 * LEVEL_COUNT)
    levels = np.ascontiguousarray(quantised).reshape(1, -1)
    object_mask = np.ascontiguousarray(truth).reshape(1, -1).view(np.uint8)
    every = cv2.calcHist([levels], [0], None, [LEVEL_COUNT], [0, LEVEL_COUNT]).ravel()
    inside = cv2.calcHist([levels], [0], object_mask, [LEVEL_COUNT], [0, LEVEL_COUNT]).ravel()
    return np.concatenate([every - inside, inside]).astype(np.int64)


def counts_curve(counts: np.ndarray) -> np.ndarray:
    """``dice_curve`` from an image's ``level_counts`` (which add up over parts of the image)."""
    negatives, positives = counts[:LEVEL_COUNT], counts[LEVEL_COUNT:]
    true_pos = np.cumsum(positives[::-1])[::-1]  # pixels >= c that are car
    false_pos = np.cumsum(negatives[::-1])[::-1]
    total = true_pos + false_pos + positives.sum()
    return np.where(total > 0, 2.0 * true_pos / np.maximum(total, 1), 1.0)  # both empty: 1 (metrics.dice)


def cutoff_to_threshold(cutoff: int) -> float:
    """The probability threshold that ``binarise`` turns back into ``cutoff`` (0.5 for 128)."""
    return (cutoff - 0.5) / (LEVEL_COUNT - 1)


def best_cutoff(mean_curve: np.ndarray) -> int:
    """The cutoff with the highest pooled Dice; ties go to the one nearest the seed's 0.5."""
    candidates = np.arange(1, LEVEL_COUNT)  # cutoff 0 marks every pixel: never a real choice
    scores = mean_curve[candidates]
    tied = candidates[scores >= scores.max() - 1e-12]
    return int(tied[np.argmin(np.abs(tied - SEED_CUTOFF))])


@dataclass(frozen=True)
class Step:
    """One greedy step: the run index added, the pooled Dice reached and at which cutoff."""

    added: int
    dice: float
    cutoff: int


def candidate_mixtures(counts: dict[int, int], runs: int) -> list[dict[int, int]]:
    """Every mixture one greedy step can reach: the current counts plus one more of any run."""
    return [{**counts, run: counts.get(run, 0) + 1} for run in range(runs)]


def greedy_step(curves: np.ndarray, current: float | None, fixed_cutoff: int | None) -> Step | None:
    """Pick the candidate (axis 1 of ``curves``: images x candidates x 256) that raises pooled Dice most.

    Returns ``None`` when none rises above ``current`` (the selection stops there), so the ensemble
    never ends below its first pick, the best single run at its own best threshold.
    """
    means = curves.mean(axis=0)
    cutoffs = [fixed_cutoff if fixed_cutoff is not None else best_cutoff(mean) for mean in means]
    scores = np.array([mean[cutoff] for mean, cutoff in zip(means, cutoffs)])
    best = int(np.argmax(scores))
    if current is not None and scores[best] <= current + 1e-12:
        return None
    return Step(best, float(scores[best]), cutoffs[best])


BLEND_GRID = (0.1, 0.2, 0.3, 0.4, 0.5)  # at most half: each step keeps most of what earlier steps chose
_DIGITS = 12  # grid weights after k steps have k decimals; rounding keeps them so (0.72, not 0.7200000000000001)


def blended_mixtures(weights: dict[int, float], runs: int,
                     grid: tuple[float, ...] = BLEND_GRID) -> list[tuple[int, float, dict[int, float]]]:
    """Every mixture one grid step can reach, as (run, w, mixture): ``(1 - w) * weights + w * run``.

    ``weights`` sum to 1. A run already in the mixture may be blended in again (its weight grows,
    the others shrink); blending the mixture with itself (``weights`` is that run alone) changes
    nothing and is left out.
    """
    candidates = []
    for run in range(runs):
        if weights.get(run, 0.0) >= 1.0 - 1e-12:
            continue
        for w in grid:
            mixture = {member: round((1.0 - w) * weight, _DIGITS) for member, weight in weights.items()}
            mixture[run] = round(mixture.get(run, 0.0) + w, _DIGITS)
            candidates.append((run, w, mixture))
    return candidates


def weights_from_counts(counts: dict[int, int], runs: int) -> list[float]:
    total = sum(counts.values())
    return [counts.get(run, 0) / total for run in range(runs)]


@dataclass(frozen=True)
class PostDecision:
    """What the guard found for one post-processor, tried on top of those already kept."""

    name: str
    gain: float
    share_worse: float
    kept: bool


def decide_postprocessing(
    dice_by_chain: dict[tuple[str, ...], np.ndarray], names: list[str], tolerance: float
) -> tuple[tuple[str, ...], list[PostDecision]]:
    """Keep each post-processor, in order, only if it helps on out-of-fold images.

    ``dice_by_chain`` maps every ordered subset of ``names`` (a chain applied left to right) to its
    per-image Dice. A post-processor joins the chain when pooled Dice rises and at most ``tolerance``
    (a share) of the images get worse: a rule that gains on average by wrecking a few images is the
    kind of change a private leaderboard punishes.
    """
    chain: tuple[str, ...] = ()
    decisions = []
    for name in names:
        trial = chain + (name,)
        before, after = dice_by_chain[chain], dice_by_chain[trial]
        gain = float(after.mean() - before.mean())
        share_worse = float(np.mean(after < before - _WORSE)) if before.size else 0.0
        kept = gain > 0 and share_worse <= tolerance
        decisions.append(PostDecision(name, gain, share_worse, kept))
        if kept:
            chain = trial
    return chain, decisions

