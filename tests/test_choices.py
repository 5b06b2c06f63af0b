"""What a run decides from its data and machine (harness.engine.choices): the input scale from the
objects' size, training crops, the steps a time budget buys, ImageNet weights where they can be had."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from harness.data.carvana import open_carvana
from harness.data.loading import Images, TrainingSamples
from harness.engine.assembly import Assembly, recipe_fit
from harness.engine.choices import Choices, imagenet_or_none, input_scale, object_size, steps_for
from harness.engine.run import RunRequest, run
from harness.recipe.schema import load_recipe
from tests.conftest import SMALL_SCRATCH_UNET


def write_disks(root: Path, size: tuple[int, int], diameters: list[list[int]]) -> Path:
    """A Carvana-layout set: image i of car ``c<i>`` holds disks of ``diameters[i]``, in a row."""
    (root / "train").mkdir(parents=True)
    (root / "train_masks").mkdir()
    width, height = size
    for i, row in enumerate(diameters):
        mask = np.zeros((height, width), np.uint8)
        x = 0
        for diameter in row:
            cv2.circle(mask, (x + diameter // 2, height // 2), diameter // 2, 1, -1)
            x += diameter + 4
        image = np.repeat((mask * 200 + 20)[..., None], 3, axis=2)
        Image.fromarray(image).save(root / "train" / f"c{i}_01.jpg", quality=95)
        Image.fromarray(mask * 255).save(root / "train_masks" / f"c{i}_01_mask.gif")
    return root


def test_the_objects_size_is_the_median_object_and_small_objects_keep_their_resolution(tmp_path):
    nuclei = open_carvana(write_disks(tmp_path / "nuclei", (200, 60), [[10, 10, 11], [9, 10, 30]]))
    measured = object_size(nuclei)
    assert measured.objects == 6 and measured.masks == 2
    assert 9 <= measured.diameter <= 11.5
    assert input_scale(measured, 64) == 1.0  # never enlarged

    cars = open_carvana(write_disks(tmp_path / "cars", (480, 300), [[200], [220]]))
    measured = object_size(cars)
    assert 195 <= measured.diameter <= 225
    assert input_scale(measured, 64) == pytest.approx(64 / measured.diameter, abs=1e-3)


def test_an_objects_input_pads_at_the_own_resolution_or_resizes_by_the_chosen_scale(tmp_path, plugins, tiny_recipe):
    path = tiny_recipe(tmp_path / "r.toml", tmp_path, extra="[input]\nsize = \"objects\"")
    recipe = load_recipe(path, plugins)
    native = recipe_fit(recipe, Choices(input_scale=1.0))
    assert (native.mode, native.input_shape(208, 250)) == ("pad", (224, 256))
    shrunk = recipe_fit(recipe, Choices(input_scale=0.25))
    assert (shrunk.mode, shrunk.input_shape(1280, 1918)) == ("resize", (320, 480))


def test_a_crop_cuts_image_and_mask_alike_and_draws_the_same_window_again(synthetic_set, plugins, tiny_recipe, tmp_path):
    dataset = open_carvana(synthetic_set)
    images = Images(dataset, dataset.train, None, cache_bytes=1 << 30)
    fit = recipe_fit(load_recipe(tiny_recipe(tmp_path / "r.toml", synthetic_set), plugins))
    samples = TrainingSamples(images, [0, 1], None, fit, seed=0, crop=(32, 32))
    whole = TrainingSamples(images, [0, 1], None, fit, seed=0)
    image, mask = samples[(0, 0, 0)]
    assert image.shape == (3, 32, 32) and mask.shape == (1, 32, 32)  # a 64x40 image padded to 64x64
    full_image, full_mask = whole[(0, 0, 0)]
    found = [(top, left) for top in range(33) for left in range(33)
             if torch.equal(full_image[:, top:top + 32, left:left + 32], image)]
    assert found, "the crop is not a window of the fitted image"
    top, left = found[0]
    assert torch.equal(full_mask[:, top:top + 32, left:left + 32], mask)
    assert torch.equal(samples[(0, 0, 0)][0], image)  # the same key, the same window
    windows = {samples[(0, draw, 0)][0].sum().item() for draw in range(8)}
    assert len(windows) > 1, "every draw cut the same window"
    big = TrainingSamples(images, [0], None, fit, seed=0, crop=(128, 32))
    assert big[(0, 0, 0)][0].shape == (3, 32, 64)  # cut down to the input where it is smaller


def test_a_time_budget_buys_steps_that_every_process_of_the_run_keeps(synthetic_set, plugins, tiny_recipe, tmp_path):
    path = tiny_recipe(tmp_path / "r.toml", synthetic_set, model=SMALL_SCRATCH_UNET, extra="budget_seconds = 3")
    recipe = load_recipe(path, plugins)
    console = Console(record=True, width=400)
    folder = run(RunRequest(recipe, tmp_path / "results", name="budget", folds=(0,)), plugins, console)
    choices = json.loads((folder / "choices.json").read_text())
    assert choices["steps_per_epoch"] == steps_for(3, choices["seconds_per_step"], 2, 2)
    said = console.export_text()
    assert f"epochs of {choices['steps_per_epoch']} optimizer steps" in said
    assert "train.budget_seconds = 3: " in said and "so every recipe gets the same seconds" in said
    fold0 = json.loads((folder / "fold-0" / "fold.json").read_text())
    assert fold0["optimizer_steps"] == 2 * choices["steps_per_epoch"]

    # another process joins the run (--folds 1): it trains with the steps the run chose, not its own timing
    (folder / "choices.json").write_text(json.dumps({**choices, "steps_per_epoch": 3}))
    run(RunRequest(recipe, tmp_path / "results", name="budget", folds=(1,)), plugins, Console(quiet=True))
    assert json.loads((folder / "fold-1" / "fold.json").read_text())["optimizer_steps"] == 2 * 3
    assert json.loads((folder / "summary.json").read_text())["complete"]


def test_steps_set_by_the_recipe_win_over_a_time_budget_and_the_budget_line_says_so(synthetic_set, plugins,
                                                                                      tiny_recipe, tmp_path):
    path = tiny_recipe(tmp_path / "r.toml", synthetic_set, model=SMALL_SCRATCH_UNET, epochs=1,
                       extra="budget_seconds = 300\nsteps_per_epoch = 2")
    console = Console(record=True, width=400)
    folder = run(RunRequest(load_recipe(path, plugins), tmp_path / "results"), plugins, console)
    assert "train.steps_per_epoch is set, so train.budget_seconds = 300 is not used" in console.export_text()
    assert json.loads((folder / "fold-0" / "fold.json").read_text())["optimizer_steps"] == 2


LINKNET_AUTO = 'name = "linknet34"\nencoder_weights = "auto"'


def test_auto_weights_start_from_imagenet_when_cached_and_say_so_when_not(synthetic_set, plugins, tiny_recipe,
                                                                          tmp_path, monkeypatch, bench):
    """The loading path through a state dict saved locally where torch.hub caches resnet34's ImageNet file;
    without it (no network here), "auto" trains from scratch and says why, and compare marks the two."""
    import torchvision

    recipe = load_recipe(tiny_recipe(tmp_path / "r.toml", synthetic_set, model=LINKNET_AUTO, epochs=1,
                                     extra="steps_per_epoch = 1"), plugins)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    weights, note = imagenet_or_none(Assembly(recipe, plugins))
    assert weights == "none" and "training from scratch, no ImageNet weights could be loaded" in note
    console = Console(record=True, width=400)
    scratch = run(RunRequest(recipe, tmp_path / "results", name="scratch"), plugins, console)
    assert "warning: model.encoder_weights = \"auto\": training from scratch" in console.export_text()
    assert json.loads((scratch / "summary.json").read_text())["encoder_weights"] == "none"

    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(torchvision.models.resnet34().state_dict(), hub / "checkpoints" / "resnet34-b627a593.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    assert imagenet_or_none(Assembly(recipe, plugins)) == ("imagenet", None)
    pretrained = run(RunRequest(recipe, tmp_path / "results", name="pretrained"), plugins, Console(quiet=True))
    assert json.loads((pretrained / "choices.json").read_text())["encoder_weights"] == "imagenet"
    assert json.loads((pretrained / "environment.json").read_text())["encoder_weights"] == "imagenet"
    assert json.loads((pretrained / "summary.json").read_text())["encoder_weights"] == "imagenet"

    result = bench("compare", scratch, pretrained)
    assert result.code == 0, result.err
    assert "encoders start differently: " in result.out
    assert "scratch from random init" in result.out and "pretrained from ImageNet weights" in result.out


def test_bench_predict_applies_a_run_at_the_input_scale_the_run_chose(synthetic_set, plugins, tiny_recipe, tmp_path,
                                                                     bench):
    from harness.engine.predict_run import PredictRequest, RunPrediction
    from harness.runs.folder import RunFolder

    path = tiny_recipe(tmp_path / "r.toml", synthetic_set, model=SMALL_SCRATCH_UNET, epochs=1,
                       extra="steps_per_epoch = 1\n[input]\nsize = \"objects\"\nobject_size = 12")
    folder = run(RunRequest(load_recipe(path, plugins), tmp_path / "results"), plugins, Console(quiet=True))
    scale = json.loads((folder / "choices.json").read_text())["input_scale"]
    assert 0 < scale < 1, "12-pixel objects: the synthetic cars are shrunk"
    request = PredictRequest(str(folder), [synthetic_set / "test"], tmp_path / "preds", format="png")
    assert RunPrediction.of(RunFolder(folder), plugins, request).predictor.fit.scale == scale
    result = bench("predict", folder, synthetic_set / "test", "--out", tmp_path / "preds", "--format", "png")
    assert result.code == 0, result.err
    masks = sorted((tmp_path / "preds").rglob("*.png"))
    assert masks and Image.open(masks[0]).size == (64, 40)  # each mask at its image's own size
