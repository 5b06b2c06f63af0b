"""Data sources that lay a data set out in the Carvana layout (see ``harness.recipe.hookspecs.bench_datasets``)."""

from __future__ import annotations

from pathlib import Path

from harness.api import cached_synthetic_carvana


def synthetic(
    *, cars: int = 24, test_cars: int = 8, size: tuple[int, int] = (240, 160), seed: int = 0
) -> Path:
    """The built-in synthetic Carvana-like set: generated once per parameter set, then cached.

    ``size`` is (width, height); the default keeps Carvana's 1918x1280 aspect at 1/8 scale and, like
    Carvana's 1918, is not a multiple of 32, so every recipe meets the padding problem.
    """
    return cached_synthetic_carvana(cars=cars, test_cars=test_cars, size=size, seed=seed)
