"""bench ensemble SPEC.toml: members that are groups of runs, fixed or searched weights, a post-processor
that reads one member's map, and every bad spec refused in one line before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.data.carvana import open_carvana
from harness.data.dataset import read_mask
from harness.engine.metrics import dice
from harness.runs.probabilities import ProbabilityMaps, quantise
from test_ensemble import fake_run

SPEC = """
name = "two members"
threshold = 0.5
[[members]]
name = "single"
runs = ["a"]
weight = 0.25
[[members]]
name = "pair"
runs = ["b", "c"]
weight = 0.75
[[post]]
name = "keep_largest"
reads = "pair"
force = true
"""


@pytest.fixture(scope="module")
def results(synthetic_set, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("spec_runs")
    for name, noise, seed in (("a", 0.2, 1), ("b", 0.3, 2), ("c", 0.3, 3)):
        fake_run(root / name, synthetic_set, noise, seed)
    return root


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def test_a_group_is_merged_first_and_a_post_processor_reads_one_member(bench, results, synthetic_set, tmp_path, plugins):
    out = tmp_path / "out"
    done = bench("ensemble", _write(tmp_path, SPEC), "--results", results, "--out", out)
    assert done.code == 0, done.err
    report = json.loads((out / "ensemble.json").read_text())
    assert [(m["member"], m["runs"], m["weight"]) for m in report["members"]] == [
        ("single", ["a"], 0.25), ("pair", ["b", "c"], 0.75)]
    assert report["postprocessing"]["kept"] == ["keep_largest@pair"] and report["threshold"] == 0.5
    # out-of-fold, rebuilt by hand: 0.25 a + 0.75 mean(b, c), level 128 of 255, then the largest piece of
    # the pair's own mask; the post-processor sees the pair's map, not the merged one
    dataset = open_carvana(synthetic_set)
    stores = {name: ProbabilityMaps.open(results / name / "oof_maps") for name in "abc"}
    keep_largest = plugins.get("postprocessor", "keep_largest").factory()
    before, after = [], []
    for image_id in stores["a"].ids:
        pair = (stores["b"][image_id] + stores["c"][image_id]) / 2
        merged = 0.25 * stores["a"][image_id] + 0.75 * pair
        mask = quantise(merged) >= 128
        truth = read_mask(dataset, image_id)
        before.append(dice(mask, truth))
        after.append(dice(keep_largest(pair, mask), truth))
    assert report["oof"]["ensemble_dice_before_postprocessing"] == pytest.approx(np.mean(before), abs=1e-5)
    assert report["oof"]["ensemble_dice"] == pytest.approx(np.mean(after), abs=1e-5)
    checked = bench("ensemble", "--check", out / "submission.csv.gz", "--data", synthetic_set)
    assert checked.code == 0, checked.err


def test_members_without_weights_are_weighed_by_the_search(bench, results, tmp_path):
    text = SPEC.replace("weight = 0.25\n", "").replace("weight = 0.75\n", "").replace("force = true", "force = false")
    out = tmp_path / "out"
    done = bench("ensemble", _write(tmp_path, text.replace("threshold = 0.5", 'threshold = "oof"')),
                 "--results", results, "--out", out)
    assert done.code == 0, done.err
    report = json.loads((out / "ensemble.json").read_text())
    assert report["selection"]["method"].startswith("greedy")
    assert sum(m["weight"] for m in report["members"]) == pytest.approx(1.0)


@pytest.mark.parametrize("edit, message", [
    (('runs = ["a"]', 'runs = ["nope"]'), "key 'members.0.runs': nope: no such run folder"),
    (('runs = ["a"]', "runs = []"), "key 'members.0.runs': List should have at least 1 item"),
    (("weight = 0.25", "weight = -1.0"), "key 'members.0.weight': Input should be greater than or equal to 0"),
    (("weight = 0.75", "weight = 0.0"), None),  # one zero weight is fine; both zero is not:
    (("weight = 0.25\n", ""), "members.0.weight: give every member a weight, or none"),
    (('reads = "pair"', 'reads = "trio"'), "post.0.reads: no member 'trio' (members: single, pair)"),
    (('name = "keep_largest"', 'name = "keep_lagrest"'), "key 'post.0.name': unknown postprocessor 'keep_lagrest'"),
    (("force = true", "force = true\nconnectivity = 5"), "key 'post.0': connectivity must be 4 or 8"),
    (("[[members]]", "[[member]]"), "key 'member': unknown key"),
    (("threshold = 0.5", "threshold = 0.999"), "key 'threshold' = 0.999: marks every pixel or none"),
    (('threshold = 0.5', 'threshold = 0.5\nmerger = "maen"'), "key 'merger': unknown merger 'maen'"),
])
def test_a_bad_spec_is_one_line_naming_the_file_and_key_and_writes_nothing(bench, results, tmp_path, edit, message):
    text = SPEC.replace(*edit, 1)
    if message is None:  # the zero-weight case, made all-zero
        text, message = text.replace("weight = 0.25", "weight = 0.0"), "the weights are all zero"
    path = _write(tmp_path, text)
    result = bench("ensemble", path, "--results", results, "--out", tmp_path / "out")
    assert result.code == 2 and message in result.err and str(path) in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_the_seed_merge_spec_states_the_winning_merge():
    from harness.ensemble.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parent.parent / "ensembles" / "seed_merge.toml")
    assert [(m.name, m.weight) for m in spec.members] == [
        ("vladimir", 0.25), ("alexander", 0.25), ("artsiom_vgg", 0.25), ("artsiom_unet", 0.25)]
    assert spec.members[1].runs == ["seed-alexander-*"] and (spec.merger, spec.threshold) == ("mean", 0.5)
    assert [(p.name, p.reads, p.force) for p in spec.post] == [("seed_hull", "alexander", True)]
