"""The Kaggle Carvana metric: Dice of the binarised prediction, per image, then the mean."""

from __future__ import annotations

import numpy as np


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """2|X∩Y| / (|X|+|Y|) of two boolean masks; two empty masks agree perfectly (1.0)."""
    prediction, truth = prediction.astype(bool, copy=False), truth.astype(bool, copy=False)
    total = int(prediction.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, truth).sum()) / total
