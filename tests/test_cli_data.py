"""`bench data`: synth -> check -> split round trip, and every bad input as one line with exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from harness.data.carvana import open_carvana
from harness.data.dataset import group_mask_areas
from harness.data.splits import read_splits, stratified_kfold


def assert_one_line_error(result, *needles):
    assert result.code == 2, (result.out, result.err)
    assert result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    for needle in needles:
        assert needle in lines[0]


def test_synth_check_split_round_trip(bench, tmp_path):
    root = tmp_path / "set"
    made = bench("data", "synth", "--out", root, "--cars", 3, "--test-cars", 1, "--size", "64x40", "--seed", 1)
    assert made.code == 0, made.err
    checked = bench("data", "check", root)
    assert checked.code == 0, checked.err
    assert "48 training images of 3 cars (masks from gif), 16 test images" in checked.out
    splits_path = tmp_path / "splits.json"
    split = bench("data", "split", root, "--folds", 3, "--method", "stratified_by_area", "--out", splits_path)
    assert split.code == 0, split.err
    splits = read_splits(splits_path)
    assert (splits.k, splits.method) == (3, "stratified_by_area")
    assert sorted(car for fold in splits.folds for car in fold) == sorted({p.stem[:-3] for p in (root / "train").glob("*.jpg")})
    assert json.loads(splits_path.read_text())["hash"] == splits.hash


def first_image(root):
    return sorted((root / "train").glob("*.jpg"))[0]


def drop_mask(root):
    image = first_image(root)
    (root / "train_masks" / f"{image.stem}_mask.gif").unlink()
    return image.name


def corrupt_image(root):
    image = first_image(root)
    image.write_bytes(b"this is not a jpeg")
    return image.name


def resize_mask(root):
    image = first_image(root)
    mask_path = root / "train_masks" / f"{image.stem}_mask.gif"
    Image.fromarray(np.zeros((7, 9), np.uint8), mode="L").convert("P").save(mask_path)
    return mask_path.name


@pytest.mark.parametrize("breaker", [drop_mask, corrupt_image, resize_mask])
def test_broken_data_folder_is_one_line_naming_the_file(bench, carvana_copy, breaker):
    named = breaker(carvana_copy)
    assert_one_line_error(bench("data", "check", carvana_copy), named)


def test_missing_data_folder(bench, tmp_path):
    assert_one_line_error(bench("data", "check", tmp_path / "nowhere"), "nowhere")


def test_more_folds_than_cars_writes_nothing(bench, synthetic_set, tmp_path):
    out = tmp_path / "splits.json"
    result = bench("data", "split", synthetic_set, "--folds", 9, "--out", out)
    assert_one_line_error(result, "9", "4")
    assert not out.exists()


def test_synth_refuses_non_empty_folder_and_bad_size(bench, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert_one_line_error(bench("data", "synth", "--out", tmp_path / "full", "--cars", 1), "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert_one_line_error(bench("data", "synth", "--out", tmp_path / "new", "--size", "240by160"), "240by160")
    assert not (tmp_path / "new").exists()


def test_split_writes_a_folds_csv_that_splits_again_to_the_same_folds(bench, synthetic_set, tmp_path):
    csv_path, json_path = tmp_path / "folds.csv", tmp_path / "splits.json"
    made = bench("data", "split", synthetic_set, "--folds", 2, "--method", "rank_mod_k", "--view", "05", "--out", csv_path)
    assert made.code == 0, made.err
    assert "2 folds (rank_mod_k, view 05)" in made.out
    assert csv_path.read_text().startswith("id,fold\n")
    again = bench("data", "split", synthetic_set, "--folds", 2, "--method", "file", "--file", csv_path, "--out", json_path)
    assert again.code == 0, again.err
    direct = bench("data", "split", synthetic_set, "--folds", 2, "--method", "rank_mod_k", "--view", "05",
                   "--out", tmp_path / "direct.json")
    assert direct.code == 0, direct.err
    from_file, ranked = read_splits(json_path), read_splits(tmp_path / "direct.json")
    assert from_file.folds == ranked.folds and (from_file.method, ranked.method) == ("file", "rank_mod_k")
    assert json.loads(json_path.read_text())["file"]["path"] == str(csv_path)


def test_split_flags_of_another_method(bench, synthetic_set, tmp_path):
    assert_one_line_error(bench("data", "split", synthetic_set, "--view", "05", "--out", tmp_path / "s.json"),
                          "--view 05: only --method rank_mod_k")
    assert_one_line_error(bench("data", "split", synthetic_set, "--method", "file", "--out", tmp_path / "s.json"),
                          "--method file reads --file")
    assert not (tmp_path / "s.json").exists()


def test_unknown_split_method(bench, synthetic_set, tmp_path):
    assert_one_line_error(bench("data", "split", synthetic_set, "--method", "random", "--out", tmp_path / "s.json"), "random")


def test_split_makes_artsioms_stratified_kfold(bench, synthetic_set, tmp_path):
    out = tmp_path / "splits.json"
    result = bench("data", "split", synthetic_set, "--folds", 2, "--method", "stratified_kfold", "--seed", 1993,
                   "--out", out)
    assert result.code == 0, result.err
    assert "(stratified_kfold, seed 1993)" in result.out
    splits = read_splits(out)
    assert (splits.method, splits.k, splits.seed) == ("stratified_kfold", 2, 1993)
    assert splits == stratified_kfold(group_mask_areas(open_carvana(synthetic_set)), 2, 1993)
