"""Uncertainty of out-of-fold Dice, with cars (not images) as the unit of resampling.

The 16 views of one car are near-duplicates: their Dice scores rise and fall together, so treating
5088 images as 5088 independent draws would make every interval far too narrow. Every statistic
here therefore resamples or permutes whole cars, and weights each car by its number of images, so
that the statistic being bootstrapped is exactly the reported one: the mean Dice over all images
("pooled" over folds).

- Interval: percentile bootstrap over cars. Draw ``n_cars`` cars with replacement, ``resamples``
  times, and take the pooled Dice of each draw: sum of the drawn cars' Dice sums over the sum of
  their image counts. The draws are ``np.random.default_rng(seed).integers(0, n_cars,
  size=(resamples, n_cars))`` over the cars in sorted order, so a given seed always gives the same
  interval and every run of one group is resampled with the same cars (common random numbers).
- Paired difference to the best run: the mean over the shared images of ``dice_run - dice_best``,
  with a paired bootstrap interval (the same car draws applied to both runs).
- p-value: a sign-flip permutation test over cars, two-sided. Under the null hypothesis that the
  two runs are exchangeable, each car's summed difference is as likely to be negated, so the
  observed difference is compared with the differences under every (or ``resamples`` random) sign
  pattern. We use it rather than a bootstrap p-value because it is exact under that hypothesis for
  any number of cars, needs no assumption about the shape of the distribution, and stays honest
  with the few cars of a quick run, where a bootstrap p-value is poorly calibrated. Up to
  ``EXACT_MAX_CARS`` cars all ``2**n_cars`` patterns are enumerated (an exact p); above that,
  random signs ``default_rng(seed).integers(0, 2, size=(resamples, n_cars)) * 2 - 1`` and
  ``p = (1 + hits) / (1 + resamples)``, which never reports an impossible p of zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.errors import BenchError

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95
EXACT_MAX_CARS = 16  # 65,536 sign patterns: exact and still a few milliseconds


@dataclass(frozen=True)
class CarSums:
    """Per-image scores reduced to one row per car (cars sorted): the unit every statistic resamples."""

    cars: np.ndarray  # car ids, sorted
    sums: np.ndarray  # sum of the car's per-image values
    counts: np.ndarray  # number of the car's images

    @property
    def pooled(self) -> float:
        """Mean over all images (each car weighted by its image count)."""
        return float(self.sums.sum() / self.counts.sum())


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class Difference:
    """``run - best`` over the shared images, with a paired interval and a sign-flip p-value."""

    estimate: float
    low: float
    high: float
    p_value: float
    exact: bool  # True when every sign pattern was enumerated


def car_sums(per_image: pd.DataFrame, column: str = "dice") -> CarSums:
    """Reduce an ``image,car,...`` table to per-car sums and counts of ``column``."""
    grouped = per_image.groupby("car", sort=True)[column].agg(["sum", "count"])
    return CarSums(grouped.index.to_numpy(dtype=str), grouped["sum"].to_numpy(float),
                   grouped["count"].to_numpy(float))


def bootstrap_draws(n_cars: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """How many times each car is drawn in each resample: an int array (resamples, n_cars)."""
    picks = np.random.default_rng(seed).integers(0, n_cars, size=(resamples, n_cars))
    offsets = np.arange(resamples)[:, None] * n_cars
    return np.bincount((picks + offsets).ravel(), minlength=resamples * n_cars).reshape(resamples, n_cars)


def pooled_interval(scores: CarSums, resamples: int = RESAMPLES, seed: int = SEED,
                    level: float = LEVEL) -> Interval:
    """Pooled Dice with its percentile bootstrap interval over cars (see the module docstring)."""
    draws = bootstrap_draws(len(scores.cars), resamples, seed)
    low, high = _percentiles(draws @ scores.sums / (draws @ scores.counts), level)
    return Interval(scores.pooled, low, high)


def paired_difference(run: pd.DataFrame, best: pd.DataFrame, resamples: int = RESAMPLES,
                      seed: int = SEED, level: float = LEVEL) -> Difference:
    """Mean of ``dice_run - dice_best`` over the same images, resampled and sign-flipped by car.

    Both tables must hold the same images (runs of one data hash do, whatever their folds).
    """
    joined = run[["image", "car", "dice"]].merge(best[["image", "dice"]], on="image", how="outer",
                                                 suffixes=("", "_best"), indicator=True)
    unpaired = joined["_merge"] != "both"
    if unpaired.any():
        raise BenchError(f"cannot pair the runs: {int(unpaired.sum())} images are scored by only one of them "
                         f"(e.g. {joined.loc[unpaired, 'image'].iloc[0]})")
    scores = car_sums(joined.assign(delta=joined["dice"] - joined["dice_best"]), "delta")
    draws = bootstrap_draws(len(scores.cars), resamples, seed)
    low, high = _percentiles(draws @ scores.sums / (draws @ scores.counts), level)
    p_value, exact = sign_flip_p_value(scores, resamples, seed)
    return Difference(scores.pooled, low, high, p_value, exact)


def sign_flip_p_value(differences: CarSums, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, bool]:
    """Two-sided p of the pooled difference under random sign flips of whole cars; (p, exact)."""
    n_cars = len(differences.cars)
    exact = n_cars <= EXACT_MAX_CARS
    if exact:
        patterns = np.arange(2**n_cars)[:, None] >> np.arange(n_cars)  # row k: the bits of k
        signs = 1.0 - 2.0 * (patterns & 1)
    else:
        signs = np.random.default_rng(seed).integers(0, 2, size=(resamples, n_cars)) * 2.0 - 1.0
    observed = abs(differences.sums.sum())
    flipped = np.abs(signs @ differences.sums)
    hits = int(np.count_nonzero(flipped >= observed - 1e-12 * max(1.0, observed)))
    if exact:  # the identity pattern is among the enumerated ones, so hits >= 1
        return hits / len(signs), True
    return (1 + hits) / (1 + resamples), False


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
