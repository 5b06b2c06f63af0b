"""Pseudo labelling: the selection rule applied exactly, and a second stage that adds only the chosen
test images, to the training side of every fold, never to validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.data.carvana import open_carvana
from harness.data.splits import read_splits
from harness.engine.pseudo import PseudoLabelled, select_confident, uncertain_share
from harness.recipe.schema import PseudoLabelSpec
from harness.runs.probabilities import ProbabilityMaps

SCRATCH_UNET = 'name = "unet"\nbase_filters = 8\ndepth = 3\nup_convs = 1'
PSEUDO = """
[pseudo_label]
uncertain = [0.05, 0.95]
max_uncertain_share = 1.0
max_images = 5
"""


def _maps(tmp_path: Path) -> ProbabilityMaps:
    """Five 10x10 maps whose uncertain shares under (0.2, 0.8) are known by construction."""
    values = {
        "a_01": {},  # share 0
        "d_01": {0: 51, 1: 204},  # exactly p = 0.2 and 0.8: not strictly between, share 0
        "b_01": {0: 52},  # 0.01
        "c_01": {0: 203, 1: 128, 2: 100},  # 0.03: at the limit, kept (<=)
        "e_01": {0: 128, 1: 128, 2: 128, 3: 128},  # 0.04: over the limit
    }
    maps = ProbabilityMaps.create(tmp_path / "maps", {i: (10, 10) for i in values})
    for image_id, pixels in values.items():
        flat = np.zeros(100, np.float32)
        for index, level in pixels.items():
            flat[index] = level / 255
        maps[image_id] = flat.reshape(10, 10)
    return ProbabilityMaps.open(tmp_path / "maps")


@pytest.mark.parametrize("max_images, expected", [(None, ["a_01", "d_01", "b_01", "c_01"]), (2, ["a_01", "d_01"])])
def test_selection_rule_is_applied_exactly(tmp_path, max_images, expected):
    maps = _maps(tmp_path)
    spec = PseudoLabelSpec(uncertain=(0.2, 0.8), max_uncertain_share=0.03, max_images=max_images)
    selection = select_confident(maps, spec, threshold=0.5)
    assert list(selection.images) == expected
    assert selection.candidates == 5
    assert selection.shares == pytest.approx({i: s for i, s in
                                              {"a_01": 0, "d_01": 0, "b_01": 0.01, "c_01": 0.03}.items() if i in expected})
    assert uncertain_share(maps.quantised("e_01"), 0.2, 0.8) == pytest.approx(0.04)
    assert selection.rule["uncertain"] == [0.2, 0.8] and selection.rule["max_images"] == max_images


@pytest.fixture(scope="module")
def pseudo_run(synthetic_set, tmp_path_factory, tiny_recipe):
    from rich.console import Console

    from harness.engine.run import RunRequest, run
    from harness.recipe.plugins import load_plugins
    from harness.recipe.schema import load_recipe

    folder = tmp_path_factory.mktemp("pseudo")
    tiny_recipe(folder / "pseudo.toml", synthetic_set, name="pseudo", model=SCRATCH_UNET, epochs=1, extra=PSEUDO)
    plugins = load_plugins()
    recipe = load_recipe(folder / "pseudo.toml", plugins)
    return run(RunRequest(recipe, folder / "results", name="p", device="cpu"), plugins, Console(quiet=True))


def test_second_stage_adds_only_the_selected_images_to_training_never_to_validation(pseudo_run, synthetic_set):
    dataset = open_carvana(synthetic_set)
    stage = pseudo_run / "pseudo"
    recorded = json.loads((stage / "selection.json").read_text())
    selected = [row["image"] for row in recorded["images"]]
    again = select_confident(ProbabilityMaps.open(pseudo_run / "test_maps"), PseudoLabelSpec(
        uncertain=(0.05, 0.95), max_uncertain_share=1.0, max_images=5), threshold=0.5)
    assert selected == list(again.images) and len(selected) == 5 and set(selected) <= set(dataset.test)
    shares = [row["uncertain_share"] for row in recorded["images"]]
    assert shares == sorted(shares)

    splits = read_splits(pseudo_run / "splits.json")
    for fold in range(2):
        validated = {line.split(",")[0] for line in (stage / f"fold-{fold}/per_image.csv").read_text().splitlines()[1:]}
        assert validated == set(splits.validation_images(dataset, fold))
        assert not validated & set(selected)
        trained = json.loads((stage / f"fold-{fold}/fold.json").read_text())["train_images"]
        assert trained == len(splits.training_images(dataset, fold)) + len(selected)
        first_stage = json.loads((pseudo_run / f"fold-{fold}/fold.json").read_text())["train_images"]
        assert first_stage == len(splits.training_images(dataset, fold))

    summary = json.loads((stage / "summary.json").read_text())
    first = json.loads((pseudo_run / "summary.json").read_text())
    assert summary["recipe"] == "pseudo+pseudo" and summary["pseudo_images"] == 5
    assert summary["splits_hash"] == first["splits_hash"]  # so bench compare ranks the two stages together
    assert summary["data_hash"] == first["data_hash"]  # scored on the same images: the test images only train
    assert len(ProbabilityMaps.open(stage / "test_maps")) == len(dataset.test)


def test_pseudo_labels_are_the_thresholded_first_stage_maps(pseudo_run, synthetic_set):
    maps = ProbabilityMaps.open(pseudo_run / "test_maps")
    image_id = maps.ids[3]
    image, mask = PseudoLabelled(open_carvana(synthetic_set), [image_id], pseudo_run / "test_maps", 0.5, None)[0]
    assert image.shape[:2] == mask.shape == maps.shapes[image_id]
    assert np.array_equal(mask, (maps.quantised(image_id) >= 128).astype(np.uint8))


def test_finished_pseudo_run_is_complete_and_unfinished_stage_needs_resume(bench, pseudo_run, tmp_path):
    again = bench("run", pseudo_run / "recipe.toml", "--results", pseudo_run.parent, "--name", "p")
    assert again.code == 0 and "already complete" in again.out
    half = tmp_path / "half"
    (half / "pseudo").mkdir(parents=True)
    for name in ("recipe.toml", "summary.json"):
        (half / name).write_bytes((pseudo_run / name).read_bytes())
    refused = bench("run", pseudo_run / "recipe.toml", "--results", tmp_path, "--name", "half")
    assert refused.code == 2 and "--resume" in refused.err


def test_no_confident_image_skips_the_stage_and_records_the_empty_choice(pseudo_run, tmp_path, plugins):
    from rich.console import Console

    from harness.engine.run import RunRequest, run
    from harness.recipe.schema import load_recipe

    strict = load_recipe(pseudo_run / "recipe.toml", plugins, overrides=[
        "pseudo_label.uncertain=[0.0, 1.0]", "pseudo_label.max_uncertain_share=0.0"])
    copy = tmp_path / "strict"  # the finished first stage, so only the pseudo stage is left to do
    shutil.copytree(pseudo_run, copy, ignore=shutil.ignore_patterns("pseudo"))
    (copy / "recipe.toml").write_text(strict.to_toml())
    console = Console(record=True, width=300)
    run(RunRequest(strict, tmp_path, name="strict", resume=True, device="cpu"), plugins, console)
    selection = json.loads((copy / "pseudo/selection.json").read_text())
    assert selection["images"] == [] and selection["candidates"] == 16
    assert "pseudo labelling skipped" in console.export_text()
    assert not (copy / "pseudo/summary.json").exists() and not (copy / "pseudo/fold-0").exists()
    run(RunRequest(strict, tmp_path, name="strict", device="cpu"), plugins, console)
    assert "already complete" in console.export_text()


def test_pseudo_labelling_without_test_images_is_one_line(bench, tmp_path, tiny_recipe):
    from harness.data.synthetic import write_synthetic_carvana

    root = write_synthetic_carvana(tmp_path / "no_test", cars=2, test_cars=0, size=(64, 40), seed=1)
    tiny_recipe(tmp_path / "r.toml", root, name="pseudo", model=SCRATCH_UNET, epochs=1, extra=PSEUDO)
    result = bench("run", tmp_path / "r.toml", "--results", tmp_path / "results")
    assert result.code == 2 and "[pseudo_label] needs unlabelled test images" in result.err
    assert len(result.err.strip().splitlines()) == 1
