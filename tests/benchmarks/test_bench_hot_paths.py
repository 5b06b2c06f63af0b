"""The per-image hot paths at Carvana size (1918x1280): Dice, augmentation, one loader sample.

``make bench`` times them against the saved baseline; ``make test`` runs each once, as a test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.data.carvana import open_carvana
from harness.data.geometry import Fit
from harness.data.loading import Images, TrainingSamples
from harness.engine.assembly import Assembly
from harness.engine.metrics import dice
from harness.recipe.schema import load_recipe

WIDTH, HEIGHT = 1918, 1280
ALEXANDER = Path(__file__).resolve().parents[2] / "recipes" / "alexander.toml"


@pytest.fixture(scope="module")
def carvana_size_set(tmp_path_factory):
    from harness.data.synthetic import write_synthetic_carvana

    return write_synthetic_carvana(tmp_path_factory.mktemp("full") / "set", cars=1, test_cars=0,
                                   size=(WIDTH, HEIGHT), seed=0, workers=1)


@pytest.fixture(scope="module")
def alexander_augment(plugins):
    recipe = load_recipe(ALEXANDER, plugins)
    return Assembly(recipe, plugins).transforms("augment")


def test_dice_full_size(benchmark):
    rng = np.random.default_rng(0)
    truth = np.zeros((HEIGHT, WIDTH), bool)
    truth[300:1000, 200:1700] = True
    prediction = truth ^ (rng.random((HEIGHT, WIDTH)) < 0.001)
    score = benchmark(dice, prediction, truth)
    assert 0.99 < score < 1.0


def test_alexander_augmentation_full_size(benchmark, alexander_augment, carvana_size_set):
    dataset = open_carvana(carvana_size_set)
    image, mask = Images(dataset, dataset.train[:1], None, cache_bytes=0)[0]
    out = benchmark(lambda: alexander_augment(image=image, mask=mask))
    assert out["image"].shape == (HEIGHT, WIDTH, 3) and set(np.unique(out["mask"])) <= {0, 1}


def test_loader_sample_full_size(benchmark, alexander_augment, carvana_size_set):
    """Decode the JPEG and the GIF, augment, pad to 1920x1280: one uncached training sample."""
    dataset = open_carvana(carvana_size_set)
    samples = TrainingSamples(Images(dataset, dataset.train, None, cache_bytes=0), range(4),
                              alexander_augment, Fit("pad", None, "constant"), seed=0)
    image, mask = benchmark(samples.__getitem__, (0, 0, 1))
    assert tuple(image.shape) == (3, 1280, 1920) and tuple(mask.shape) == (1, 1280, 1920)
