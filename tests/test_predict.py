"""Prediction: maps at the image's own size in every geometry, tiled == untiled, flip TTA of a symmetric model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from harness.data.geometry import Fit
from harness.data.loading import Normalise, PredictionSamples
from harness.data.tiling import Tiling, predict_tiled, tile_starts
from harness.engine.device import Compute
from harness.engine.predict import TTA, combine, predict_loader, variant_logits
from harness.errors import BenchError
from harness.recipe.schema import load_recipe

CPU = Compute(torch.device("cpu"), "fp32", channels_last=False)


def conv_net(kernel: int, pool: bool = False, seed: int = 0) -> torch.nn.Module:
    """A tiny network; ``kernel=1`` makes it pointwise, ``pool`` adds a /4 down-and-up path."""
    torch.manual_seed(seed)
    pad = kernel // 2
    layers: list[torch.nn.Module] = [torch.nn.Conv2d(3, 8, kernel, padding=pad), torch.nn.ReLU()]
    if pool:
        layers += [torch.nn.MaxPool2d(4), torch.nn.Conv2d(8, 8, kernel, padding=pad), torch.nn.ReLU(),
                   torch.nn.Upsample(scale_factor=4, mode="nearest")]
    layers.append(torch.nn.Conv2d(8, 1, kernel, padding=pad))
    return torch.nn.Sequential(*layers).eval()


@pytest.mark.parametrize("fit, tiling", [
    (Fit("pad", None), None),
    (Fit("resize", (960, 640)), None),
    (Fit("pad", None, "reflect"), Tiling((512, 384), 64)),
], ids=["pad", "resize", "tiled"])
def test_a_carvana_size_image_comes_back_at_its_own_size(fit, tiling):
    image = np.random.default_rng(0).integers(0, 256, (1280, 1918, 3), dtype=np.uint8)
    samples = PredictionSamples(lambda position: image, 1, fit)
    loader = torch.utils.data.DataLoader(samples, batch_size=1)
    outputs = list(predict_loader([conv_net(3)], loader, [(1280, 1918)], fit, Normalise("imagenet"),
                                  "hflip", "logits", CPU, tiling))
    assert len(outputs) == 1 and outputs[0][1].shape == (1280, 1918)
    assert torch.isfinite(outputs[0][1]).all()


def test_tile_starts_cover_the_side_on_multiples_of_32_with_at_least_the_overlap():
    for side in (32, 320, 1280, 1920):
        starts = tile_starts(side, 256, 64)
        assert starts[0] == 0 and min(side, starts[-1] + 256) == side
        assert all(s % 32 == 0 for s in starts)
        assert all(b - a <= 256 - 64 for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("tile, overlap", [((96, 64), 32), ((128, 128), 64), ((64, 256), 0)])
def test_tiled_equals_untiled_for_a_pointwise_model(tile, overlap):
    model, images = conv_net(1), torch.randn(2, 3, 160, 352)
    with torch.inference_mode():
        assert_allclose(predict_tiled(model, images, Tiling(tile, overlap)).numpy(), model(images).numpy(),
                        rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pool", [False, True], ids=["conv", "conv+pool"])
def test_tiled_matches_untiled_when_tiles_cover_the_receptive_field(pool):
    """Receptive fields of a few pixels (or ~20 with pooling) fit in the zero band of a 128-px overlap."""
    model, images = conv_net(3, pool), torch.randn(1, 3, 320, 448)
    with torch.inference_mode():
        tiling = Tiling((288, 256), 128) if pool else Tiling((192, 160), 64)
        tiled = predict_tiled(model, images, tiling).numpy()
        assert_allclose(tiled, model(images).numpy(), rtol=1e-4, atol=1e-5)


def test_tiled_prediction_through_tta_keeps_the_shape():
    model, images = conv_net(3), torch.randn(1, 3, 128, 192)
    (tiled,) = variant_logits([model], images, "d4", CPU, Tiling((64, 64), 32))
    (plain,) = variant_logits([model], images, "d4", CPU)
    assert tiled.shape == plain.shape == (8, 1, 1, 128, 192)


@pytest.mark.parametrize("tile, overlap", [([100, 64], 32), ([128, 64], 48), ([128, 64], 64)])
def test_bad_tiling_is_one_line_naming_the_key(tmp_path, plugins, tile, overlap):
    path = tmp_path / "r.toml"
    path.write_text('name = "t"\n[model]\nname = "smp"\n[loss]\nname = "bce_dice"\n[optimizer]\nname = "adam"\n'
                    f'[train]\nepochs = 1\nbatch_size = 1\n[predict]\ntile = {tile}\ntile_overlap = {overlap}\n')
    with pytest.raises(BenchError, match=r"predict\.tile") as error:
        load_recipe(path, plugins)
    assert "\n" not in str(error.value)


class D4Symmetric(torch.nn.Module):
    """``f`` averaged over the 8 symmetries of the square: equivariant to every flip and rotation
    by construction, so any flip TTA must give back exactly its own output."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([inverse(self.inner(forward(x))) for forward, inverse in TTA["d4"]]).mean(0)


@pytest.mark.parametrize("tta", ["hflip", "vflip", "hvflip", "d4"])
@pytest.mark.parametrize("average", ["logits", "probabilities"])
def test_flip_tta_of_a_flip_symmetric_model_is_its_own_output(tta, average):
    model, images = D4Symmetric(conv_net(3, pool=True)), torch.randn(2, 3, 64, 64)
    fit = Fit("pad", None)
    with torch.inference_mode():
        own = torch.sigmoid(model(images))
    per_model = variant_logits([model], images, tta, CPU)
    for index in range(2):
        combined = combine(per_model, index, 64, 64, fit, average)
        assert_allclose(combined.numpy(), own[index, 0].numpy(), rtol=1e-5, atol=1e-6)
    unsymmetric = combine(variant_logits([model.inner], images, tta, CPU), 0, 64, 64, fit, average)
    assert not torch.allclose(unsymmetric, torch.sigmoid(model.inner(images))[0, 0], atol=1e-3)  # the test can fail


TILED_RUN = """
name = "tiled"
[data]
root = "{root}"
[folds]
k = 2
[model]
name = "unet"
base_filters = 8
depth = 3
up_convs = 1
[loss]
name = "bce_dice"
[optimizer]
name = "adam"
[train]
epochs = 1
batch_size = 8
precision = "fp32"
channels_last = false
[predict]
tta = "hflip"
tile = [32, 32]
tile_overlap = 0
"""


def test_bench_run_with_tiles_writes_maps_at_the_images_own_size(bench, synthetic_set, tmp_path):
    from harness.runs.probabilities import ProbabilityMaps

    (tmp_path / "tiled.toml").write_text(TILED_RUN.format(root=synthetic_set))
    result = bench("run", tmp_path / "tiled.toml", "--results", tmp_path, "--name", "tiled", "--device", "cpu")
    assert result.code == 0, result.err
    for store in ("oof_maps", "test_maps"):
        maps = ProbabilityMaps.open(tmp_path / "tiled" / store)
        assert set(maps.shapes.values()) == {(40, 64)}
