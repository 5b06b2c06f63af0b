"""Prediction: maps at the image's own size in every geometry, tiled == untiled, flip TTA of a symmetric model,
the folds merged as the originals merged them (uint8 levels per fold)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from harness.data.geometry import Fit
from harness.data.loading import Normalise, PredictionSamples
from harness.data.tiling import Tiling, predict_tiled, tile_starts
from harness.engine.device import Compute
from harness.engine.predict import TTA, combine, merge_folds, predict_loader, variant_logits
from harness.errors import BenchError
from harness.recipe.schema import load_recipe
from harness.runs.probabilities import quantise

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
    assert [t.shape for t in tiled] == [p.shape for p in plain] == [(1, 1, 128, 192)] * 8


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


def vladimir_merge(fold_probabilities: list[np.ndarray]) -> np.ndarray:
    """ternaus/src/generate_png_preds.py:40 (each fold's PNG) and merge_test.py:10-16 (their mean)."""
    result = np.zeros((len(fold_probabilities),) + fold_probabilities[0].shape)
    for fold, outputs in enumerate(fold_probabilities):
        result[fold] = (outputs * 255).astype(np.uint8)
    return result.mean(axis=0).astype(np.uint8)


def alexander_merge(fold_probabilities: list[np.ndarray]) -> np.ndarray:
    """albu/src/carvana_eval.py:37 (each fold's PNG) and carvana_tools.py:10-16 (their mean)."""
    ims = [(full_pred * 255).astype(np.uint8) for full_pred in fold_probabilities]
    return (np.mean(ims, axis=0)).astype(np.uint8)


def artsiom_merge(fold_probabilities: list[np.ndarray]) -> np.ndarray:
    """asanakoy/generate_sub.py:56 (each fold's PNG) and generate_sub_average.py:51-64 (their mean)."""
    probs = None
    for probs_np in fold_probabilities:
        mask_img = np.asarray(np.round(probs_np * 255), dtype=np.uint8).astype(np.float32)
        if probs is None:
            probs = mask_img
        else:
            probs += mask_img
    probs /= len(fold_probabilities)
    return np.asarray(np.round(probs), dtype=np.uint8)


def fold_probabilities(folds: int, seed: int) -> list[np.ndarray]:
    """float32 maps of random probabilities, every exact level k / 255 (whose ``p * 255`` may fall just
    below k), and three folds' pixels where flooring parts from the mean of probabilities."""
    rng = np.random.default_rng(seed)
    maps = rng.random((folds, 24, 32), dtype=np.float32)
    maps[:, 0, :] = rng.integers(0, 256, (folds, 32)).astype(np.float32) / np.float32(255)
    maps[:, 1, :] = np.float32(0.50195)  # p * 255 = 127.997 in every fold: levels 127 floored, 128 rounded
    maps[0, 2, :] = np.float32(0.4999)
    return list(maps)


@pytest.mark.parametrize("folds", [2, 3, 5, 7])
@pytest.mark.parametrize("fold_average, original", [
    ("uint8_floor", vladimir_merge), ("uint8_floor", alexander_merge), ("uint8_round", artsiom_merge),
], ids=["vladimir", "alexander", "artsiom"])
def test_uint8_fold_averages_store_the_originals_merged_levels(folds, fold_average, original):
    probabilities = fold_probabilities(folds, seed=folds)
    expected = original(probabilities)
    merged = merge_folds(torch.from_numpy(np.stack(probabilities)), fold_average).numpy()
    assert merged.dtype == np.float32
    np.testing.assert_array_equal(quantise(merged), expected)  # what the run's test store holds
    mean_of_probabilities = quantise(np.stack(probabilities).mean(0))
    assert (mean_of_probabilities != expected).any()  # the option matters: the test can fail
    if fold_average == "uint8_floor":
        assert (expected[1] == 127).all() and (mean_of_probabilities[1] == 128).all()  # a pixel leaves the mask


def test_the_three_fold_example_by_hand():
    """p = 0.50195 twice and 0.4999: 127.997, 127.997, 127.47 at 255. The mean of probabilities (0.5013,
    stored as level 128) is in the mask; the floored levels 127, 127, 127 average to 127, out of it;
    rounded, 128, 128, 127 average to 127.67, rounded to 128."""
    maps = torch.tensor([0.50195, 0.50195, 0.4999]).reshape(3, 1, 1)
    assert quantise(merge_folds(maps).numpy()).item() == 128
    assert quantise(merge_folds(maps, "uint8_floor").numpy()).item() == 127
    assert quantise(merge_folds(maps, "uint8_round").numpy()).item() == 128


def test_every_level_survives_the_stores_quantisation():
    levels = torch.arange(256, dtype=torch.float32)
    np.testing.assert_array_equal(quantise((levels / 255).numpy()), np.arange(256))


@pytest.mark.parametrize("fold_average", [None, "uint8_floor", "uint8_round"])
def test_combine_merges_the_models_maps_as_the_recipe_says(fold_average):
    """Each model's map is its TTA-averaged sigmoid; the models are then merged by ``merge_folds``."""
    images = torch.randn(1, 3, 32, 64)
    models = [conv_net(3, seed=seed) for seed in range(3)]
    per_model = variant_logits(models, images, "hflip", CPU)
    fit = Fit("pad", None)
    each = torch.stack([combine([logits], 0, 32, 64, fit, "logits") for logits in per_model])
    merged = combine(per_model, 0, 32, 64, fit, "logits", fold_average)
    assert torch.equal(merged, merge_folds(each, fold_average))


def test_a_run_with_uint8_floor_stores_the_floored_mean_of_its_folds(bench, synthetic_set, tmp_path, tiny_recipe,
                                                                     plugins):
    """Each fold's best.pt predicts the test images again, alone, as ``_predict_test`` does; the stored
    test map is vladimir's merge of those maps, bit for bit."""
    from harness.data.dataset import read_image
    from harness.engine.assembly import Assembly, recipe_normalise
    from harness.runs.folder import RunFolder
    from harness.runs.probabilities import ProbabilityMaps

    recipe_path = tiny_recipe(tmp_path / "floor.toml", synthetic_set, name="floor", epochs=1)
    result = bench("run", recipe_path, "--results", tmp_path, "--name", "floor", "--device", "cpu",
                   "--set", "predict.fold_average=uint8_floor")
    assert result.code == 0, result.err
    folder = RunFolder(tmp_path / "floor")
    recipe = load_recipe(folder.recipe_toml, plugins)
    assert recipe.predict.fold_average == "uint8_floor"
    parts = Assembly(recipe, plugins)
    dataset = parts.dataset()
    fit = parts.fit_for(dataset)
    stored = ProbabilityMaps.open(folder.test_maps)
    shapes = [stored.shapes[i] for i in dataset.test]
    preprocess = parts.transforms("preprocess")

    def read(position: int) -> np.ndarray:  # as the run read them before bench predict's path replaced it
        image = read_image(dataset, dataset.test[position], split="test")
        return image if preprocess is None else preprocess(image=image)["image"]

    samples = PredictionSamples(read, len(dataset.test), fit)
    loader = torch.utils.data.DataLoader(samples, batch_size=recipe.train.batch_size)
    per_fold = []
    for fold in folder.folds():
        model = parts.model(pretrained=False)
        model.load_state_dict(fold.read_checkpoint(fold.best)["model"])
        outputs = predict_loader([model.eval()], loader, shapes, fit, recipe_normalise(recipe), recipe.predict.tta,
                                 recipe.predict.average, CPU)
        per_fold.append({dataset.test[index]: probability.numpy() for index, probability in outputs})
    assert len(per_fold) == 2 and dataset.test
    differs = False
    for image_id in dataset.test:
        maps = [fold_maps[image_id] for fold_maps in per_fold]
        np.testing.assert_array_equal(stored.quantised(image_id), vladimir_merge(maps), err_msg=image_id)
        differs |= bool((stored.quantised(image_id) != quantise(np.mean(maps, axis=0))).any())
    assert differs  # the mean of probabilities would have stored other levels


def test_quantised_on_the_device_gives_the_levels_of_the_store():
    """Exact halves (k + 0.5) / 255 round to even in both; clamping and the float32 product agree."""
    from harness.engine.predict import quantised

    halves = (np.arange(255, dtype=np.float32) + 0.5) / 255
    values = np.concatenate([halves, np.random.default_rng(0).random(100_000, dtype=np.float32),
                             np.array([-0.1, 0.0, 1.0, 1.5], dtype=np.float32)])
    np.testing.assert_array_equal(quantised(torch.from_numpy(values)).numpy(), quantise(values))
