"""Input options: channel order, scaling, padding side, soft masks, align_corners, and the hq image folders."""

from __future__ import annotations

import json
import shutil
import tomllib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.data.geometry import Fit
from harness.data.loading import Normalise, PredictionSamples, TrainingSamples
from harness.engine.assembly import Assembly, recipe_fit, recipe_normalise
from harness.engine.device import Compute
from harness.engine.predict import predict_loader
from harness.errors import BenchError
from harness.recipe.schema import load_recipe, recipe_from_dict

CPU = Compute(torch.device("cpu"), "fp32", channels_last=False)
RED, GREEN, BLUE = 200, 100, 10


def recipe(plugins, augment=(), **input_keys):
    return recipe_from_dict({
        "name": "input", "input": input_keys, "augment": list(augment),
        "model": {"name": "unet", "base_filters": 8, "depth": 3}, "loss": {"name": "bce_dice"},
        "optimizer": {"name": "adam", "lr": 1e-3}, "train": {"epochs": 1, "batch_size": 1},
    }, plugins, "test")


def rgb_image(height: int = 32, width: int = 64) -> np.ndarray:
    image = np.empty((height, width, 3), np.uint8)
    image[...] = (RED, GREEN, BLUE)
    return image


class Recorder(torch.nn.Module):
    """Remembers what it was fed; its logits are its first input channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.clone()
        return x[:, :1]


def test_unset_keys_keep_the_behaviour_and_the_text_of_existing_recipes(plugins):
    plain = recipe(plugins)
    assert recipe_fit(plain) == Fit("pad", None, "constant")
    resolved = tomllib.loads(plain.to_toml())
    assert set(resolved["input"]) == {"size", "fit", "pad_mode", "normalize"} and "images" not in resolved["data"]
    normalise = recipe_normalise(plain)
    white = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert not normalise.bgr and torch.allclose(normalise(white).flatten(), expected)


def test_bgr_model_receives_the_channels_reversed_through_the_prediction_path(plugins):
    """The same Normalise serves training, validation and test prediction; here a batch goes the test way."""
    spec = recipe(plugins, channels="bgr", normalize="scale")
    fit, model = recipe_fit(spec), Recorder()
    samples = PredictionSamples(lambda position: rgb_image(), 1, fit)
    loader = torch.utils.data.DataLoader(samples, batch_size=1)
    list(predict_loader([model], loader, [(32, 64)], fit, recipe_normalise(spec), "none", "logits", CPU))
    assert model.seen.shape == (1, 3, 32, 64)
    assert [model.seen[0, c, 0, 0].item() for c in range(3)] == pytest.approx([BLUE / 255, GREEN / 255, RED / 255])


def test_bgr_keeps_each_colours_own_imagenet_statistics():
    batch = torch.from_numpy(rgb_image(2, 2).transpose(2, 0, 1).copy())[None]
    rgb, bgr = Normalise("imagenet")(batch), Normalise("imagenet", "bgr")(batch)
    torch.testing.assert_close(bgr, rgb.flip(1))
    assert bgr[0, 0, 0, 0].item() == pytest.approx((BLUE / 255 - 0.406) / 0.225, rel=1e-5)


@pytest.mark.parametrize("how", ["scale", "none"])
def test_scale_and_none_are_x_over_255_in_0_1(how):
    batch = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(2, 3, 16, 16)
    out = Normalise(how)(batch)
    assert out.dtype == torch.float32 and out.min().item() == 0.0 and out.max().item() == 1.0
    torch.testing.assert_close(out, batch.float() / 255)


def test_unknown_channel_order_is_one_line_naming_file_and_key(tmp_path, plugins):
    path = tmp_path / "r.toml"
    path.write_text('name = "x"\n[input]\nchannels = "bgrr"\n[model]\nname = "unet"\n[loss]\nname = "bce_dice"\n'
                    '[optimizer]\nname = "adam"\n[train]\nepochs = 1\nbatch_size = 1\n')
    with pytest.raises(BenchError) as error:
        load_recipe(path, plugins)
    message = str(error.value)
    assert message.startswith(f"{path}: key 'input.channels': Input should be 'rgb' or 'bgr'") and "\n" not in message


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_right_padding_is_on_the_right_and_bottom_and_restore_crops_it(pad_mode):
    """62 -> 64 wide (as 1918 -> 1920) and 40 -> 64 high: every padded pixel right of or below the image."""
    image = np.random.default_rng(0).integers(1, 256, (40, 62, 3), dtype=np.uint8)
    right, centre = Fit("pad", None, pad_mode, pad_side="right"), Fit("pad", None, pad_mode)
    padded = right.array(image)
    assert padded.shape == (64, 64, 3)
    np.testing.assert_array_equal(padded[:40, :62], image)
    if pad_mode == "constant":
        assert not padded[:, 62:].any() and not padded[40:].any()
    np.testing.assert_array_equal(centre.array(image)[12:52, 1:63], image)  # centred: 12 + 12 rows, 1 + 1 columns
    logits = torch.arange(64 * 64, dtype=torch.float32).view(1, 1, 64, 64)
    torch.testing.assert_close(right.restore(logits, 40, 62), logits[..., :40, :62])
    torch.testing.assert_close(centre.restore(logits, 40, 62), logits[..., 12:52, 1:63])


def test_right_padding_from_the_recipe(plugins):
    fit = recipe_fit(recipe(plugins, pad_side="right"))
    assert fit.pad_side == "right" and fit.array(rgb_image(32, 62))[:, 62:].sum() == 0


@pytest.mark.parametrize("align_corners", [False, True])
def test_restore_upsamples_logits_with_the_recipes_align_corners(align_corners):
    logits = torch.randn(2, 1, 32, 64, generator=torch.Generator().manual_seed(0))
    fit = Fit("resize", (64, 32), align_corners=align_corners)
    expected = F.interpolate(logits, size=(40, 62), mode="bilinear", align_corners=align_corners)
    torch.testing.assert_close(fit.restore(logits, 40, 62), expected)
    other = F.interpolate(logits, size=(40, 62), mode="bilinear", align_corners=not align_corners)
    assert not torch.allclose(fit.restore(logits, 40, 62), other)


def test_align_corners_from_the_recipe(plugins):
    assert recipe_fit(recipe(plugins, fit="resize", size=[64, 32], align_corners=True)).align_corners
    assert not recipe_fit(recipe(plugins, fit="resize", size=[64, 32])).align_corners


def _rotated_mask(plugins, **input_keys) -> torch.Tensor:
    """A square car rotated by 30 degrees, through the recipe's augmentation and TrainingSamples."""
    spec = recipe(plugins, [{"name": "shift_scale_rotate", "shift": 0.0, "scale": [1.0, 1.0], "rotate": 30.0,
                             "p": 1.0}], **input_keys)
    mask = np.zeros((32, 64), np.uint8)
    mask[8:24, 16:48] = 1
    samples = TrainingSamples([(rgb_image(), mask)], [0], Assembly(spec, plugins).transforms("augment"),
                              recipe_fit(spec), seed=0, augment_on_input=spec.input.augment_on == "input")
    return samples[(0, 0, 0)][1]


def test_linear_mask_interpolation_gives_soft_edges_after_a_rotation(plugins):
    soft = _rotated_mask(plugins, mask_interpolation="linear")
    assert soft.dtype == torch.float32 and soft.shape == (1, 32, 64)
    assert soft.min() >= 0 and soft.max() <= 1
    between = ((soft > 0) & (soft < 1)).sum().item()
    assert between > 10, "the rotated edges should be blended"
    assert (soft == 1).any() and (soft == 0).any()


def test_augmentation_on_the_input_rotates_after_the_resize(plugins):
    """input.augment_on = "input" (artsiom's order): the 64x32 image's 32x16 car is squashed to a 16x16
    square first and rotated there, and a rotated square spreads its pixels equally in every direction
    (its covariance is isotropic); rotated first and squashed after, it is a sheared parallelogram."""
    def anisotropy(mask: torch.Tensor) -> float:
        rows, cols = np.nonzero(mask[0].numpy())
        low, high = np.linalg.eigvalsh(np.cov(np.stack([cols, rows])))
        return high / low

    keys = dict(fit="resize", size=[32, 32])
    on_input, on_image = _rotated_mask(plugins, augment_on="input", **keys), _rotated_mask(plugins, **keys)
    assert on_input.shape == on_image.shape == (1, 32, 32)
    assert anisotropy(on_input) < 1.2 and anisotropy(on_image) > 1.5


@pytest.mark.parametrize("how", [None, "nearest"])
def test_nearest_mask_interpolation_keeps_the_mask_binary(plugins, how):
    hard = _rotated_mask(plugins, **({} if how is None else {"mask_interpolation": how}))
    assert hard.dtype == torch.uint8 and set(hard.unique().tolist()) == {0, 1}


def test_linear_mask_interpolation_also_softens_the_resize(plugins):
    mask = np.zeros((40, 62), np.uint8)
    mask[10:30, 11:50] = 1
    soft = Fit("resize", (32, 32), mask_interpolation="linear").array(mask.astype(np.float32), is_mask=True)
    hard = Fit("resize", (32, 32)).array(mask, is_mask=True)
    assert ((soft > 0) & (soft < 1)).any() and set(np.unique(hard)) == {0, 1}


def test_soft_targets_go_through_every_loss(plugins):
    from plugins.components import losses

    logits = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    soft = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    for loss in (losses.bce_dice(), losses.bce_log_dice(), losses.weighted_bce_dice(), losses.top_k_bce()):
        value = loss(logits, soft)
        assert value.ndim == 0 and torch.isfinite(value)


def _with_hq(source, tmp_path):
    """A copy of the tiny set whose train/ and test/ also exist as train_hq/ and test_hq/."""
    root = shutil.copytree(source, tmp_path / "carvana", symlinks=True)
    for split in ("train", "test"):  # real folders in place of the synthetic set's links
        (root / f"{split}_hq").unlink()
        shutil.copytree(root / split, root / f"{split}_hq")
    return root


def test_a_run_with_every_input_option_trains_validates_and_predicts(bench, synthetic_set, tmp_path, tiny_recipe):
    """alexander's input (BGR, /255, zeros on the right, soft masks, hq JPEGs), end to end, one epoch."""
    root = _with_hq(synthetic_set, tmp_path)
    test_images = len(list((root / "test").iterdir()))
    shutil.rmtree(root / "train")  # only the hq images: a run that read train/ would fail
    shutil.rmtree(root / "test")
    recipe_path = tiny_recipe(tmp_path / "r.toml", root, epochs=1, extra="""
[input]
channels = "bgr"
normalize = "scale"
pad_side = "right"
mask_interpolation = "linear"
[[augment]]
name = "shift_scale_rotate"
p = 1.0
""")
    result = bench("run", recipe_path, "--results", tmp_path / "results", "--name", "hq", "--set", "data.images=hq")
    assert result.code == 0, result.err
    summary = json.loads((tmp_path / "results/hq/summary.json").read_text())
    assert summary["complete"] and summary["test_images"] == test_images > 0


def test_missing_hq_folder_is_one_line_and_writes_nothing(bench, synthetic_set, tmp_path, tiny_recipe):
    root = shutil.copytree(synthetic_set, tmp_path / "carvana", symlinks=True)
    (root / "train_hq").unlink()
    result = bench("run", tiny_recipe(tmp_path / "r.toml", root), "--results", tmp_path / "results",
                   "--set", "data.images=hq")
    assert result.code == 2 and result.out == ""
    assert len(result.err.strip().splitlines()) == 1 and "train_hq/" in result.err
    assert not (tmp_path / "results").exists()
