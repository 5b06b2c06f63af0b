"""The folders layout (images/, masks/, groups): read as it is, every bad input named, and the whole
pipeline (run, compare, ensemble, predict) through the installed ``bench`` on a set of PNG masks,
groups from a table or a pattern, and images of several sizes that are not multiples of 32."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from harness.data.carvana import open_carvana
from harness.data.dataset import data_hash, read_image, read_mask
from harness.data.folders import copy_as_folders, open_folders
from harness.data.layouts import open_data
from harness.data.loading import ShapeBatches, padded_batch
from harness.data.splits import splits_for
from harness.data.submission import read_submission, write_submission
from harness.errors import BenchError

BENCH = Path(sys.executable).parent / "bench"
# Not multiples of 32, and not all alike.
SIZES = {"slide1_a": (30, 20), "slide1_b": (30, 20), "slide2_a": (41, 27), "slide2_b": (41, 27), "slide3_a": (35, 50)}


def _mask(index: int, width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[2 + index : 12 + index, 3 : 8 + 2 * index] = 1
    return mask


def build_folders(root: Path, mask_suffix: str = "", top: int = 255, groups: bool = True) -> Path:
    """A folders-layout set: PNG and JPEG images of three sizes, PNG masks of 0/``top``, groups.csv."""
    for name in ("images", "masks", "test"):
        (root / name).mkdir(parents=True)
    for index, (image_id, (width, height)) in enumerate(SIZES.items()):
        image = np.full((height, width, 3), (40 * index, 200, 90), np.uint8)
        Image.fromarray(image).save(root / "images" / f"{image_id}.{'png' if index % 2 else 'jpg'}")
        Image.fromarray(_mask(index, width, height) * np.uint8(top)).save(root / "masks" / f"{image_id}{mask_suffix}.png")
    Image.fromarray(np.zeros((33, 45, 3), np.uint8)).save(root / "test" / "unseen.png")
    if groups:
        (root / "groups.csv").write_text("image,group\n" + "".join(
            f"{image_id}.{'png' if index % 2 else 'jpg'},{image_id.split('_')[0]}\n" for index, image_id in enumerate(SIZES)))
    return root


def test_reads_images_masks_groups_and_sizes_as_they_are(tmp_path):
    dataset = open_data(build_folders(tmp_path / "set", mask_suffix="_mask"))
    assert dataset.layout == "folders" and dataset.train == tuple(sorted(SIZES)) and dataset.test == ("unseen",)
    assert {i: (w, h) for i, (h, w) in dataset.sizes.items()} == SIZES
    assert dataset.groups == {i: i.split("_")[0] for i in SIZES} and dataset.grouping == "groups.csv"
    for index, (image_id, (width, height)) in enumerate(SIZES.items()):
        np.testing.assert_array_equal(read_mask(dataset, image_id), _mask(index, width, height))
        assert read_image(dataset, image_id).shape == (height, width, 3)


def test_masks_of_0_1_read_as_masks_of_0_255(tmp_path):
    ones, bytes_ = open_data(build_folders(tmp_path / "a", top=1)), open_data(build_folders(tmp_path / "b"))
    for image_id in SIZES:
        np.testing.assert_array_equal(read_mask(ones, image_id), read_mask(bytes_, image_id))


def test_groups_from_a_pattern_or_one_per_image(tmp_path):
    root = build_folders(tmp_path / "set", groups=False)
    by_pattern = open_folders(root, group_pattern=r"^(?P<group>slide\d)_")
    assert by_pattern.groups["slide2_b"] == "slide2" and len(set(by_pattern.groups.values())) == 3
    assert open_folders(root, group_pattern=r"^slide\d").groups["slide3_a"] == "slide3"  # the whole match
    alone = open_folders(root)
    assert alone.grouping == "one group per image" and len(set(alone.groups.values())) == len(SIZES)
    splits = splits_for(by_pattern, "kfold", 3, 0)
    for fold in range(3):  # a slide never straddles folds
        validated = {by_pattern.group_of(i) for i in splits.validation_images(by_pattern, fold)}
        trained = {by_pattern.group_of(i) for i in splits.training_images(by_pattern, fold)}
        assert validated and not validated & trained


def _problem(root: Path) -> str:
    with pytest.raises(BenchError) as caught:
        open_data(root)
    return str(caught.value)


def test_each_bad_input_is_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has neither images/ and masks/ (the folders layout) nor train/" in _problem(empty)

    no_images = build_folders(tmp_path / "no_images")
    for path in (no_images / "images").iterdir():
        path.unlink()
    assert "holds no images" in _problem(no_images)

    sizes = build_folders(tmp_path / "sizes")
    Image.fromarray(np.zeros((21, 30), np.uint8)).save(sizes / "masks" / "slide1_a.png")
    assert "masks/slide1_a.png is 30x21 but its image slide1_a.jpg is 30x20" in _problem(sizes)

    orphans = build_folders(tmp_path / "orphans")
    (orphans / "masks" / "slide2_a.png").rename(orphans / "masks" / "slide9_z.png")
    said = _problem(orphans)  # both problems of the folder at once, a line each
    assert "2 problem(s)" in said and len(said.splitlines()) == 3
    assert "images/slide2_a.jpg has no mask: no masks/slide2_a{.png,.gif" in said
    assert "masks/slide9_z.png has no image: no images/slide9_z.*" in said

    unknown = build_folders(tmp_path / "unknown")
    with open(unknown / "groups.csv", "a") as table:
        table.write("stranger.png,slide4\n")
    assert "groups.csv line 7: image 'stranger.png' is not in images/" in _problem(unknown)

    deep = build_folders(tmp_path / "deep")
    Image.fromarray(np.zeros((20, 30), np.uint16)).save(deep / "images" / "slide1_b.png")
    assert "slide1_b.png is I;16 (16 or 32 bits a pixel)" in _problem(deep)

    with pytest.raises(BenchError, match="does not match data.group_pattern"):
        open_folders(build_folders(tmp_path / "pattern", groups=False), group_pattern=r"^cell")
    with pytest.raises(BenchError, match="data.groups and data.group_pattern both set"):
        open_folders(tmp_path / "pattern", groups="groups.csv", group_pattern=r"^cell")


def test_a_mask_that_is_not_binary_names_its_file_and_values(tmp_path, bench):
    root = build_folders(tmp_path / "set")
    Image.fromarray(_mask(0, 30, 20) * np.uint8(3)).save(root / "masks" / "slide1_a.png")
    with pytest.raises(BenchError, match=r"masks/slide1_a.png: values \{0, 3\}; expected \{0, 1\} or \{0, 255\}"):
        read_mask(open_data(root), "slide1_a")
    checked = bench("data", "check", root)
    assert checked.code == 2 and "1 mask(s) not binary" in checked.err and "slide1_a.png: values {0, 3}" in checked.err
    assert "Traceback" not in checked.err


def test_data_check_says_which_layout_and_what_is_in_it(tmp_path, bench, synthetic_set):
    checked = bench("data", "check", build_folders(tmp_path / "set"))
    assert checked.code == 0, checked.err
    assert "folders layout, 5 training images with their masks, 3 groups (groups.csv), 1 test images" in checked.out
    assert "image sizes: 3 distinct, from 30x20 to 35x50 (most common 30x20, 2 images)" in checked.out
    alone = bench("data", "check", build_folders(tmp_path / "alone", groups=False))
    assert "5 groups (one group per image)" in alone.out and "will leak across folds" in alone.out
    carvana = bench("data", "check", synthetic_set)
    assert "Carvana layout, 64 training images of 4 cars" in carvana.out and "64x40 (all 64)" in carvana.out


def test_the_same_data_in_both_layouts_makes_the_same_splits(synthetic_set, tmp_path):
    carvana = open_carvana(synthetic_set)
    folders = open_data(copy_as_folders(carvana, tmp_path / "folders"))
    assert folders.layout == "folders" and folders.train == carvana.train and dict(folders.groups) == dict(carvana.groups)
    for method in ("rank_by_area", "kfold", "stratified_by_area"):
        assert splits_for(folders, method, 2, 7).hash == splits_for(carvana, method, 2, 7).hash
    assert data_hash(folders) != data_hash(carvana)  # other mask files: runs are not merged across layouts
    # the same group names over other images are other folds: the splits hash says so
    regrouped = open_folders(tmp_path / "folders", group_pattern=r"^(?P<group>.{4})")
    assert splits_for(regrouped, "kfold", 2, 7).members is not None


def test_a_batch_of_mixed_shapes_is_padded_and_prediction_batches_share_a_shape():
    small = (torch.ones(3, 32, 64, dtype=torch.uint8), torch.ones(1, 32, 64, dtype=torch.uint8))
    large = (torch.full((3, 64, 32), 2, dtype=torch.uint8), torch.ones(1, 64, 32, dtype=torch.uint8))
    images, masks = padded_batch([small, large])
    assert images.shape == (2, 3, 64, 64) and masks.shape == (2, 1, 64, 64)
    assert images[0, :, 32:].sum() == 0 and masks[1, :, :, 32:].sum() == 0  # padding is background
    assert torch.equal(images[1, :, :, :32], large[0])
    same, _ = padded_batch([small, small])
    assert torch.equal(same, torch.stack([small[0], small[0]]))
    shapes = [(32, 64), (64, 32), (32, 64), (32, 64), (64, 32)]
    assert list(ShapeBatches(shapes, 2)) == [[0, 2], [3], [1, 4]]
    assert list(ShapeBatches([(32, 32)] * 5, 2)) == [[0, 1], [2, 3], [4]]  # one size: a plain loader's batches


def test_submission_rows_carry_the_images_file_names(tmp_path):
    path = tmp_path / "submission.csv.gz"
    write_submission(path, iter([("a", "1 2"), ("b", "")]), {"a": "a.png", "b": "b.tif"})
    with __import__("isal").igzip.open(path, "rt") as handle:
        assert handle.read().splitlines() == ["img,rle_mask", "a.png,1 2", "b.tif,"]
    assert [(image_id, rle) for _, image_id, rle in read_submission(path)] == [("a", "1 2"), ("b", "")]


# --- the whole pipeline through the installed bench command -------------------------------------------------------

# One epoch of two steps on two folds, in fp32, offline: the point is that every command works on this data.
TINY = ["--set", "folds.k=2", "--set", "train.epochs=1", "--set", "train.steps_per_epoch=2",
        "--set", "train.validate_images=8", "--set", "model.encoder_weights=none",
        "--set", "train.precision=fp32", "--set", "train.channels_last=false"]


def _mixed_sizes(source: Path, out: Path) -> Path:
    """The built-in set in the folders layout with PNG images, each car (group) at its own size, none a
    multiple of 32, and test images of two sizes."""
    dataset = open_carvana(source)
    copy_as_folders(dataset, out)
    cars = sorted(set(dataset.groups.values()))
    size_of = {car: (70 + 9 * index, 45 + 5 * index) for index, car in enumerate(cars)}
    for image_id, car in dataset.groups.items():
        _resized(out / "images" / f"{image_id}.jpg", size_of[car], out / "images" / f"{image_id}.png")
        _resized(out / "masks" / f"{image_id}.png", size_of[car], nearest=True)
    for index, path in enumerate(sorted((out / "test").iterdir())):
        _resized(path, (77, 51) if index % 2 else (66, 43), path.with_suffix(".png"))
    return out


def _resized(path: Path, size: tuple[int, int], to: Path | None = None, nearest: bool = False) -> None:
    with Image.open(path) as image:
        resized = image.resize(size, Image.NEAREST if nearest else Image.BILINEAR)
    if to is not None and to != path:
        path.unlink()
    resized.save(to or path)


# What each line of the README's "Your own data" block must print (a regular expression).
PRINTS = {
    "data check": r"folders layout, 64 training images with their masks, 4 groups \(groups.csv\), 32 test images",
    "run": r"out-of-fold Dice \d\.\d{4}",
    "compare": r"OOF Dice",
    "report": r"wrote cells-report\.html \(2 runs\)",
    "ensemble": r"out-of-fold Dice \d\.\d+",
    "predict": r"ensemble of \d runs?: 32 images in .* 0 skipped",
}


def own_data_lines() -> list[str]:
    """The commands of the README's "Your own data" block, comments cut, in order."""
    import re

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"^## Your own data\n.*?^```bash\n(.*?)^```", text, re.M | re.S)
    assert block, "README.md has no ```bash block under ## Your own data"
    return [re.split(r"\s+#\s", line)[0].strip() for line in block[1].splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.skipif(not BENCH.exists(), reason=f"no installed bench command beside {sys.executable}: make install")
def test_the_readme_own_data_lines_run_on_a_folders_set_of_mixed_sizes(tmp_path):
    """Every line of the README's "Your own data" block, in order, through the installed bench, from a
    user's folder at 80 columns, on the built-in set made a folders set of PNG images and masks with
    groups.csv, each car at its own size (none a multiple of 32), and test images of two sizes; the
    runs shortened to one epoch of two steps on two folds (fp32, no ImageNet download)."""
    import re
    import shlex

    from harness.data.synthetic import write_synthetic_carvana

    source = write_synthetic_carvana(tmp_path / "source", cars=4, test_cars=2, size=(96, 64), seed=5)
    data = _mixed_sizes(source, tmp_path / "cells")
    user = tmp_path / "user"
    shutil.copytree(Path(__file__).resolve().parent.parent / "recipes", user / "recipes",
                    ignore=shutil.ignore_patterns("tuned"))
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "COLUMNS", "SEGBENCH_CACHE")}
    env.update(COLUMNS="80", SEGBENCH_CACHE=str(tmp_path / "cache"), NO_ALBUMENTATIONS_UPDATE="1")
    for line in own_data_lines():
        words = shlex.split(line.replace("/my/cells", str(data)))
        assert words[0] == "bench"
        if words[1] == "run":
            words += TINY
        if "*" in line:  # the shell's glob, as a user's shell expands it
            words = [expanded for word in words for expanded in (sorted(map(str, user.glob(word))) or [word])]
        done = subprocess.run([str(BENCH), *words[1:]], cwd=user, env=env, capture_output=True, text=True,
                              timeout=600)
        said = f"{line}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert done.returncode == 0 and "Traceback" not in done.stderr, said
        assert re.search(PRINTS[" ".join(words[1:3]) if words[1] == "data" else words[1]], done.stdout), said
        assert "…" not in done.stdout, f"a cell cut at 80 columns:\n{said}"

    rows = _gunzipped(user / "cells-ensemble" / "submission.csv.gz")[1:]
    assert sorted(row.split(",")[0] for row in rows) == sorted(p.name for p in (data / "test").iterdir())
    per_image = pd.read_csv(user / "cells-ensemble" / "per_image.csv", dtype=str)
    assert set(per_image["car"]) == set(open_data(data).groups.values())  # the groups the runs were scored by
    for path in (data / "test").iterdir():  # each mask at its own image's size
        with Image.open(path) as image, Image.open(user / "cells-masks" / "masks" / f"{path.stem}.png") as mask:
            assert mask.size == image.size and set(np.unique(np.asarray(mask))) <= {0, 255}
    by_table = json.loads(next((user / "cells").glob("vladimir-*/summary.json")).read_text())
    by_name = json.loads(next((user / "cells-by-name").glob("vladimir-*/summary.json")).read_text())
    assert by_name["splits_hash"] == by_table["splits_hash"]  # the pattern finds the table's groups: the same folds
    assert by_name["oof_dice"] == by_table["oof_dice"]


def _gunzipped(path: Path) -> list[str]:
    from isal import igzip

    with igzip.open(path, "rt") as handle:
        return handle.read().splitlines()


@pytest.mark.slow
def test_the_same_data_in_both_layouts_trains_to_the_same_dice(synthetic_set, tmp_path, tiny_recipe):
    from rich.console import Console

    from harness.engine.run import RunRequest, run
    from harness.recipe.plugins import load_plugins
    from harness.recipe.schema import load_recipe

    plugins = load_plugins()
    folders = copy_as_folders(open_carvana(synthetic_set), tmp_path / "folders")
    scores = {}
    for name, root in (("carvana", synthetic_set), ("folders", folders)):
        recipe = load_recipe(tiny_recipe(tmp_path / f"{name}.toml", root, name=name, epochs=1), plugins)
        folder = run(RunRequest(recipe, tmp_path / "results", name=name), plugins, Console(quiet=True))
        scores[name] = (json.loads((folder / "summary.json").read_text()),
                        pd.read_csv(folder / "per_image.csv", dtype={"image": str, "car": str}))
    (carvana, carvana_images), (folders_summary, folders_images) = scores["carvana"], scores["folders"]
    assert carvana["splits_hash"] == folders_summary["splits_hash"]
    pd.testing.assert_frame_equal(carvana_images, folders_images)
    assert carvana["oof_dice"] == folders_summary["oof_dice"]


def test_synth_writes_the_built_in_set_in_the_folders_layout(bench, tmp_path):
    made = bench("data", "synth", "--out", tmp_path / "cells", "--layout", "folders", "--cars", 2, "--test-cars", 1,
                 "--size", "64x40")
    assert made.code == 0 and "folders layout" in made.out, made.err
    checked = bench("data", "check", tmp_path / "cells")
    assert "folders layout, 32 training images with their masks, 2 groups (groups.csv), 16 test images" in checked.out
    assert sorted(path.name for path in (tmp_path / "cells").iterdir()) == ["groups.csv", "images", "masks", "test"]
    wrong = bench("data", "synth", "--out", tmp_path / "other", "--layout", "coco")
    assert wrong.code == 2 and "--layout coco: expected carvana or folders" in wrong.err


def test_prediction_refuses_a_16_bit_image_as_training_does(tmp_path):
    import cv2

    from harness.data.geometry import Fit
    from harness.data.image_files import ImageFile, ImageSamples

    cv2.imwrite(str(tmp_path / "deep.png"), np.full((20, 30), 1000, np.uint16))
    cv2.imwrite(str(tmp_path / "plain.png"), np.full((20, 30), 100, np.uint8))
    samples = ImageSamples([ImageFile("deep", tmp_path / "deep.png"), ImageFile("plain", tmp_path / "plain.png")],
                           None, Fit("pad", None))
    assert samples[0].image is None and "a 16-bit image" in samples[0].problem
    assert samples[1].problem is None and samples[1].image.shape == (3, 32, 32)
