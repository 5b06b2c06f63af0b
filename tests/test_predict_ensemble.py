"""``bench predict ENSEMBLE``: an ensemble applied to images gives the masks bench ensemble wrote for them."""

from __future__ import annotations

import gzip
import json

import cv2

from harness.data import rle
from harness.data.carvana import open_carvana


def _rows(path) -> dict[str, str]:
    with gzip.open(path, "rt") as handle:
        return dict(line.rstrip("\n").split(",", 1) for line in list(handle)[1:])


def test_an_ensemble_predicts_its_test_images_as_bench_ensemble_did(bench, tiny_runs, synthetic_set, tmp_path):
    """A group, a weighted run and two post-processors, one of them reading a member's own map: every mask of
    the run folders' test images, predicted again from the fold models, equals the ensemble's submission."""
    spec = tmp_path / "spec.toml"
    spec.write_text(f"""
name = "applied"
threshold = 0.5
[[members]]
name = "pair"
runs = ["{tiny_runs['linknet']}", "{tiny_runs['unet']}"]
weight = 2
[[members]]
name = "fpn"
runs = ["{tiny_runs['fpn']}"]
weight = 1
[[post]]
name = "keep_largest"
force = true
[[post]]
name = "convex_hull"
reads = "fpn"
force = true
""")
    built = bench("ensemble", spec, "--out", tmp_path / "ensemble")
    assert built.code == 0, built.err
    test_dir = open_carvana(synthetic_set).test_dir
    for format_ in ("rle", "png"):
        done = bench("predict", tmp_path / "ensemble", test_dir, "--out", tmp_path / format_, "--format", format_)
        assert done.code == 0, done.err
    expected = _rows(tmp_path / "ensemble" / "submission.csv.gz")
    assert _rows(tmp_path / "rle" / "submission.csv.gz") == expected
    for name, text in expected.items():
        mask = cv2.imread(str(tmp_path / "png" / "masks" / name.replace(".jpg", ".png")), cv2.IMREAD_GRAYSCALE)
        assert rle.encode(mask) == text, name
    report = json.loads((tmp_path / "rle" / "predict.json").read_text())
    assert report["predicted"] == len(expected) and len(report["runs"]) == 3 and not report["skipped"]
    again = bench("predict", tmp_path / "ensemble", test_dir, "--out", tmp_path / "rle")
    assert again.code == 0 and again.out.count(f"{len(expected)} already done") == 3, again.out


def test_an_ensemble_writes_masks_not_maps(bench, tiny_runs, synthetic_set, tmp_path):
    assert bench("ensemble", tiny_runs["linknet"], tiny_runs["unet"], "--out", tmp_path / "ensemble").code == 0
    refused = bench("predict", tmp_path / "ensemble", synthetic_set, "--out", tmp_path / "out", "--format", "maps")
    assert refused.code == 2 and "an ensemble writes masks" in refused.err, refused.err
    assert len(refused.err.strip().splitlines()) == 1


def test_a_damaged_apply_table_is_one_line(bench, synthetic_set, tmp_path):
    (tmp_path / "ensemble").mkdir()
    (tmp_path / "ensemble" / "ensemble.json").write_text('{"apply": {"members": [{"name": "a"}]}}')
    refused = bench("predict", tmp_path / "ensemble", synthetic_set, "--out", tmp_path / "out")
    assert refused.code == 2 and len(refused.err.strip().splitlines()) == 1, refused.err
    assert "its 'apply' table is damaged" in refused.err
