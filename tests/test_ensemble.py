"""bench ensemble: refusing runs that cannot merge, greedy and grid selection, the guard, the submission, --check."""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from harness.data import rle
from harness.data.carvana import open_carvana
from harness.data.dataset import data_hash, read_image, read_mask
from harness.ensemble import oof_search
from harness.data.submission import HEADER, check_submission, read_submission, write_submission
from harness.runs.probabilities import LEVEL_COUNT, ProbabilityMaps, binarise, quantise


def fake_run(folder: Path, data_root: Path, noise: float, seed: int, splits_hash: str = "same") -> Path:
    """A complete run folder whose maps are the truth plus independent pixel noise of ``noise`` std.

    Independent noise is what makes averaging pay: the best mixture weighs the least noisy run most.
    """
    rng = np.random.default_rng(seed)
    return crafted_run(folder, data_root, lambda truth: np.clip(
        0.1 + 0.8 * truth + rng.normal(0, noise, truth.shape), 0, 1), seed, splits_hash)


def crafted_run(folder: Path, data_root: Path, oof_map: Callable[[np.ndarray], np.ndarray], seed: int,
                splits_hash: str = "same") -> Path:
    """A complete run folder whose out-of-fold map of each image is ``oof_map(truth)`` (truth: float32 0/1)."""
    dataset = open_carvana(data_root)
    rng = np.random.default_rng(seed)
    oof = ProbabilityMaps.create(folder / "oof_maps", {i: dataset.sizes[i] for i in dataset.train})
    for image_id in dataset.train:
        oof[image_id] = oof_map(read_mask(dataset, image_id).astype(np.float32))
    test_shapes = {i: read_image(dataset, i, "test").shape[:2] for i in dataset.test}
    test = ProbabilityMaps.create(folder / "test_maps", test_shapes)
    for image_id, shape in test_shapes.items():
        test[image_id] = rng.random(shape, dtype=np.float32)
    summary = {"splits_hash": splits_hash, "data": str(data_root), "data_hash": data_hash(dataset), "oof_dice": 0.5,
               "run": folder.name}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "per_image.csv").write_text("image,car,fold,dice\n" + "".join(  # the groups the ensemble scores by
        f"{image_id},{dataset.group_of(image_id)},0,0.5\n" for image_id in dataset.train))
    return folder


@pytest.fixture(scope="module")
def noisy_runs(synthetic_set, tmp_path_factory) -> dict[str, Path]:
    """``a`` is the least noisy; ``b`` and ``c`` are noisier but independent of it."""
    root = tmp_path_factory.mktemp("noisy_runs")
    return {name: fake_run(root / name, synthetic_set, noise, seed)
            for name, noise, seed in (("a", 0.2, 1), ("b", 0.3, 2), ("c", 0.3, 3))}


def _recompute_masks(report: dict, plugins) -> dict[str, np.ndarray]:
    """The submission's masks rebuilt from ensemble.json alone, through the stores' public reader."""
    weights = np.array([member["weight"] for member in report["members"]], dtype=np.float64)
    weights = (weights / weights.sum()).astype(np.float32)
    stores = [ProbabilityMaps.open(Path(member["folder"]) / "test_maps") for member in report["members"]]
    posts = [plugins.get("postprocessor", name).factory() for name in report["postprocessing"]["kept"]]
    masks = {}
    for image_id in stores[0].ids:
        merged = np.zeros(stores[0].shapes[image_id], np.float32)
        for store, weight in zip(stores, weights):
            merged += weight * store[image_id]
        mask = binarise(quantise(merged), report["threshold"])
        for post in posts:
            mask = post(merged, mask)
        masks[image_id] = mask
    return masks


def _assert_submission_matches(out: Path, plugins) -> None:
    report = json.loads((out / "ensemble.json").read_text())
    expected = _recompute_masks(report, plugins)
    rows = {image_id: text for _, image_id, text in read_submission(out / "submission.csv.gz")}
    assert sorted(rows) == sorted(expected)
    for image_id, mask in expected.items():
        np.testing.assert_array_equal(rle.decode(rows[image_id], mask.shape), mask.astype(np.uint8), err_msg=image_id)


def test_submission_decodes_to_the_searched_ensemble(bench, tiny_runs, plugins, tmp_path) -> None:
    results = tiny_runs["linknet"].parent
    result = bench("ensemble", "linknet", "unet", "fpn", "other_splits", "--results", results, "--out", tmp_path / "ens")
    assert result.code == 0, result.err
    assert "out-of-fold Dice" in result.out and "vs best run" in result.out
    _assert_submission_matches(tmp_path / "ens", plugins)
    report = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    # greedy selection starts from the best run, so it can only match or beat it; the two Dice are
    # pooled in float32 and float64 respectively, which differ in the 8th digit (seen with 1 thread)
    assert report["oof"]["ensemble_dice_before_postprocessing"] >= report["oof"]["best_run_dice_at_own_threshold"] - 1e-6
    assert bench("ensemble", "--check", tmp_path / "ens" / "submission.csv.gz", tiny_runs["linknet"]).code == 0
    both = bench("ensemble", "--check", tmp_path / "ens" / "submission.csv.gz", tiny_runs["linknet"], tiny_runs["other_splits"])
    assert both.code == 0, both.err


def test_submission_decodes_to_fixed_weights_and_forced_postprocessing(bench, noisy_runs, plugins, tmp_path) -> None:
    out = tmp_path / "ens"
    result = bench("ensemble", *noisy_runs.values(), "--out", out, "--weights", "0.5,0.3,0.2",
                   "--threshold", "0.45", "--post", "convex_hull,keep_largest", "--force-post")
    assert result.code == 0, result.err
    report = json.loads((out / "ensemble.json").read_text())
    assert report["postprocessing"]["kept"] == ["convex_hull", "keep_largest"]
    assert [m["weight"] for m in report["members"]] == pytest.approx([0.5, 0.3, 0.2])
    _assert_submission_matches(out, plugins)


def test_reproduce_command_rebuilds_the_same_bytes(bench, noisy_runs, tmp_path) -> None:
    first = tmp_path / "first"
    assert bench("ensemble", *noisy_runs.values(), "--out", first).code == 0
    command = json.loads((first / "ensemble.json").read_text())["reproduce"]["apply"]
    words = command.split()  # no spaces in these paths
    again = tmp_path / "again"
    words[words.index("--out") + 1] = str(again)
    assert bench(*words[1:]).code == 0
    assert (first / "submission.csv.gz").read_bytes() == (again / "submission.csv.gz").read_bytes()


def test_greedy_selection_with_replacement_weighs_the_best_run_most(bench, noisy_runs, tmp_path) -> None:
    out = tmp_path / "ens"
    assert bench("ensemble", *noisy_runs.values(), "--out", out, "--post", "none").code == 0
    report = json.loads((out / "ensemble.json").read_text())
    steps = report["selection"]["steps"]
    weights = {member["run"]: member["weight"] for member in report["members"]}
    assert len(steps) >= 3 and [s["added"] for s in steps].count("a") >= 2  # picked again: replacement
    assert sorted(weights) == ["a", "b", "c"] and max(weights, key=weights.get) == "a"
    for weight in weights.values():  # weights are counts over the number of steps
        assert weight * len(steps) == pytest.approx(round(weight * len(steps)))
    dice = [step["dice"] for step in steps]
    assert dice == sorted(dice) and len(set(dice)) == len(dice)  # every step strictly helped
    oof = report["oof"]
    assert oof["ensemble_dice"] > oof["best_run_dice_at_own_threshold"] and oof["best_run"] == "a"
    assert oof["helped"] and oof["merge_gain_interval"][0] > 0


def _pixel_kinds(truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every third pixel on a diagonal pattern is "hard", the next one "odd": each kind in every image."""
    rows, cols = np.indices(truth.shape)
    return (rows + cols) % 3 == 0, (rows + cols) % 3 == 1


def _strong(truth: np.ndarray) -> np.ndarray:
    """Right on most pixels, but its hard car pixels (0.40) sit below its hard background (0.45):
    no threshold separates them."""
    hard, _ = _pixel_kinds(truth)
    car = truth > 0
    return np.select([car & hard, car, hard], [0.40, 0.90, 0.45], 0.10).astype(np.float32)


def _weak(truth: np.ndarray) -> np.ndarray:
    """Wrong on most pixels (car at 0.2, a third of the background at 1.0), but sure of the strong
    run's hard pixels: car 0.9, background 0.1."""
    hard, odd = _pixel_kinds(truth)
    car = truth > 0
    return np.select([car & hard, car, hard, odd], [0.90, 0.20, 0.10, 1.00], 0.10).astype(np.float32)


@pytest.fixture(scope="module")
def complementary_runs(synthetic_set, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("complementary_runs")
    return {"strong": crafted_run(root / "strong", synthetic_set, _strong, 1),
            "weak": crafted_run(root / "weak", synthetic_set, _weak, 2)}


def _pooled_dice(runs: list[Path], weights: list[float], cutoff: int | None = None) -> tuple[float, int]:
    """Pooled out-of-fold Dice of a weighted mean of the runs' stored maps, at ``cutoff`` or at the best one."""
    dataset = open_carvana(json.loads((runs[0] / "summary.json").read_text())["data"])
    stores = [ProbabilityMaps.open(run / "oof_maps") for run in runs]
    normalised = (np.asarray(weights, np.float64) / sum(weights)).astype(np.float32)
    curves = []
    for image_id in stores[0].ids:
        merged = np.zeros(stores[0].shapes[image_id], np.float32)
        for store, weight in zip(stores, normalised):
            if weight:
                merged += weight * store[image_id]
        curves.append(oof_search.dice_curve(quantise(merged), read_mask(dataset, image_id)))
    mean = np.mean(curves, axis=0)
    cutoff = oof_search.best_cutoff(mean) if cutoff is None else cutoff
    return float(mean[cutoff]), cutoff


def test_grid_gives_a_weak_complementary_run_a_small_weight_greedy_cannot(bench, complementary_runs, tmp_path) -> None:
    runs = [complementary_runs["strong"], complementary_runs["weak"]]
    strong, _ = _pooled_dice(runs, [1, 0])
    half, _ = _pooled_dice(runs, [0.5, 0.5])
    small, _ = _pooled_dice(runs, [0.8, 0.2])
    assert small > max(strong, half) + 0.1 and half < strong  # the premise: 0.8/0.2 beats 1/0 and 0.5/0.5
    reports = {}
    for search in ("greedy", "grid"):
        out = tmp_path / search
        result = bench("ensemble", *runs, "--search", search, "--post", "none", "--out", out)
        assert result.code == 0, result.err
        reports[search] = json.loads((out / "ensemble.json").read_text())
    greedy, grid = reports["greedy"], reports["grid"]
    # greedy's only second step is 50/50, worse than the strong run alone: it stops at one member
    assert [m["run"] for m in greedy["members"]] == ["strong"] and len(greedy["selection"]["steps"]) == 1
    assert greedy["oof"]["ensemble_dice"] == pytest.approx(strong, abs=1e-9)
    weights = {m["run"]: m["weight"] for m in grid["members"]}
    assert 0 < weights["weak"] < 0.5 and sum(weights.values()) == pytest.approx(1)
    assert grid["selection"]["search"] == "grid" and grid["selection"]["grid"] == list(oof_search.BLEND_GRID)
    assert grid["selection"]["steps"][1]["added"] == "weak" and grid["selection"]["steps"][1]["weight"] < 0.5
    assert grid["oof"]["ensemble_dice"] >= small - 1e-9 and grid["oof"]["ensemble_dice"] > strong + 0.1
    assert grid["oof"]["helped"] and grid["oof"]["merge_gain_interval"][0] > 0


def test_grid_dice_recomputed_from_the_stored_maps_is_the_reported_one(bench, noisy_runs, tmp_path) -> None:
    out = tmp_path / "ens"  # two greedy steps (a and b, 50/50), then blend steps
    result = bench("ensemble", *noisy_runs.values(), "--search", "grid", "--max-members", "2", "--post", "none",
                   "--out", out)
    assert result.code == 0, result.err
    report = json.loads((out / "ensemble.json").read_text())
    steps = report["selection"]["steps"]
    assert [step["added"] for step in steps[:2]] == ["a", "b"] and all("weight" not in step for step in steps[:2])
    assert len(steps) > 2 and all(step["weight"] in oof_search.BLEND_GRID for step in steps[2:])
    assert sorted(m["run"] for m in report["members"]) == ["a", "b", "c"]  # c entered below 50%
    greedy = tmp_path / "greedy"  # the blend steps start from greedy's result: never below it out of fold
    assert bench("ensemble", *noisy_runs.values(), "--max-members", "2", "--post", "none", "--out", greedy).code == 0
    greedy_dice = json.loads((greedy / "ensemble.json").read_text())["oof"]["ensemble_dice"]
    assert report["oof"]["ensemble_dice"] > greedy_dice
    dice = [step["dice"] for step in steps]
    assert dice == sorted(dice) and len(set(dice)) == len(dice)  # every step strictly helped
    runs = [Path(member["folder"]) for member in report["members"]]
    recomputed, _ = _pooled_dice(runs, [member["weight"] for member in report["members"]], report["cutoff_u8"])
    assert report["oof"]["ensemble_dice"] == pytest.approx(recomputed, abs=1e-9)
    assert report["oof"]["ensemble_dice_before_postprocessing"] == pytest.approx(steps[-1]["dice"], abs=1e-9)
    again = tmp_path / "again"  # the apply command rebuilds the same submission from the stored weights
    words = report["reproduce"]["apply"].split()
    words[words.index("--out") + 1] = str(again)
    assert bench(*words[1:]).code == 0
    assert (out / "submission.csv.gz").read_bytes() == (again / "submission.csv.gz").read_bytes()


def test_blended_mixtures_move_a_share_of_the_weight_to_one_run() -> None:
    candidates = oof_search.blended_mixtures({0: 1.0}, 2)
    assert [(run, w) for run, w, _ in candidates] == [(1, w) for w in oof_search.BLEND_GRID]  # run 0 alone: no-op
    assert candidates[0][2] == {0: 0.9, 1: 0.1}
    again = [mixture for _, _, mixture in oof_search.blended_mixtures({0: 0.9, 1: 0.1}, 3)]
    assert len(again) == 3 * len(oof_search.BLEND_GRID)  # a run already in may be blended in again
    assert {0: 0.81, 1: 0.19} in again and {0: 0.72, 1: 0.08, 2: 0.2} in again  # rounded: 0.72, not 0.7200000000000001
    assert all(sum(m.values()) == pytest.approx(1) for m in again)


def test_greedy_step_stops_when_nothing_improves() -> None:
    curves = np.zeros((4, 2, LEVEL_COUNT))
    curves[:, 0, 128], curves[:, 1, 100] = 0.9, 0.8
    step = oof_search.greedy_step(curves, None, None)
    assert (step.added, step.cutoff) == (0, 128) and step.dice == pytest.approx(0.9)
    assert oof_search.greedy_step(curves, 0.9, None) is None
    assert oof_search.greedy_step(curves, None, 100).added == 1  # a fixed threshold is honoured


def test_dice_curve_matches_the_metric_at_every_cutoff() -> None:
    from harness.engine.metrics import dice

    rng = np.random.default_rng(0)
    quantised = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    truth = rng.random((20, 30)) < 0.4
    curve = oof_search.dice_curve(quantised, truth)
    for cutoff in (0, 1, 64, 128, 200, 255):
        assert curve[cutoff] == pytest.approx(dice(quantised >= cutoff, truth))
    assert oof_search.dice_curve(np.zeros((3, 3), np.uint8), np.zeros((3, 3), bool))[1] == 1.0  # both empty
    assert all(oof_search.best_cutoff(np.eye(256)[c]) == c for c in (1, 128, 255))
    assert binarise(np.arange(256, dtype=np.uint8), oof_search.cutoff_to_threshold(77)).argmax() == 77


def test_guard_rejects_postprocessing_that_hurts_a_few_images() -> None:
    base = np.full(100, 0.9)
    lifts_most_wrecks_some = np.where(np.arange(100) < 10, 0.85, 0.95)  # mean up, 10% worse
    hurts = base - 0.01
    helps = base + 0.01
    chains = {(): base, ("risky",): lifts_most_wrecks_some, ("bad",): hurts, ("risky", "bad"): hurts,
              ("good",): helps, ("risky", "good"): lifts_most_wrecks_some + 0.01, ("bad", "good"): helps, ("risky", "bad", "good"): helps}
    kept, decisions = oof_search.decide_postprocessing(chains, ["risky", "bad", "good"], tolerance=0.02)
    assert kept == ("good",)
    assert [(d.name, d.kept) for d in decisions] == [("risky", False), ("bad", False), ("good", True)]
    assert decisions[0].gain > 0 and decisions[0].share_worse == pytest.approx(0.1)
    kept, _ = oof_search.decide_postprocessing(chains, ["risky", "bad", "good"], tolerance=0.2)
    assert kept == ("risky", "good")


HURTING_PLUGIN = '''
from harness.api import hookimpl


def _erase_top(probability, mask):
    result = mask.copy()
    result[: mask.shape[0] // 2] = False
    return result


@hookimpl
def bench_postprocessors():
    return {"erase_top": lambda: _erase_top}
'''


def test_guard_drops_a_hurting_postprocessor_end_to_end(bench, noisy_runs, tmp_path) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "hurting.py").write_text(HURTING_PLUGIN)
    out = tmp_path / "ens"
    result = bench("--plugins-dir", tmp_path / "plugins", "ensemble", *noisy_runs.values(), "--out", out,
                   "--post", "erase_top", "--max-members", "1")
    assert result.code == 0, result.err
    post = json.loads((out / "ensemble.json").read_text())["postprocessing"]
    assert post["kept"] == [] and post["decisions"][0]["gain"] < 0 and not post["decisions"][0]["kept"]


def test_merges_runs_on_other_folds_image_by_image(bench, tiny_runs, plugins, tmp_path) -> None:
    """linknet and other_splits hold one out-of-fold map per image, each from a model that never saw its
    car, on other folds: merged image by image, the ensemble's out-of-fold Dice is recomputed here."""
    from harness.engine.metrics import dice

    runs = [tiny_runs["linknet"], tiny_runs["other_splits"]]
    out = tmp_path / "ens"
    result = bench("ensemble", *runs, "--weights", "1,1", "--threshold", "0.5", "--post", "none", "--force-post",
                   "--out", out)
    assert result.code == 0, result.err
    report = json.loads((out / "ensemble.json").read_text())
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    assert [m["splits_hash"] for m in report["members"]] == [s["splits_hash"] for s in summaries]
    assert summaries[0]["splits_hash"] != summaries[1]["splits_hash"] and report["splits_hash"] is None
    assert report["data_hash"] == summaries[0]["data_hash"] == summaries[1]["data_hash"]
    dataset = open_carvana(summaries[0]["data"])
    stores = [ProbabilityMaps.open(run / "oof_maps") for run in runs]
    scores = [dice(binarise(quantise(np.float32(0.5) * stores[0][i] + np.float32(0.5) * stores[1][i])),
                   read_mask(dataset, i)) for i in dataset.train]
    assert report["oof"]["ensemble_dice"] == pytest.approx(np.mean(scores), abs=1e-9)
    _assert_submission_matches(out, plugins)
    check = bench("ensemble", "--check", out / "submission.csv.gz", *runs)
    assert check.code == 0 and "valid" in check.out


def test_refuses_runs_on_different_data_in_one_line(bench, tiny_runs, other_data_run, tmp_path) -> None:
    out = tmp_path / "ens"
    result = bench("ensemble", tiny_runs["linknet"], tiny_runs["other_splits"], other_data_run, "--out", out)
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert "cannot merge runs on different data" in result.err
    assert "linknet, other_splits (data " in result.err and "other_data (data " in result.err
    assert not out.exists(), "nothing written"
    check = bench("ensemble", "--check", tmp_path / "any.csv.gz", tiny_runs["linknet"], other_data_run)
    assert check.code == 2 and "different data" in check.err


@pytest.mark.parametrize("args, message", [
    (["nope"], "not found"),
    (["{a}", "--weights", "1,2"], "2 weights for 1 runs"),
    (["{a}", "--post", "hull"], "unknown postprocessor 'hull'"),
    (["{a}", "--post", "convex_hull:low=0.9"], "low < high"),
    (["{a}", "--post", "convex_hull:lo=0.1"], "unknown key"),
    (["{a}", "--threshold", "1.5"], "--threshold"),
    (["{a}", "--search", "simplex"], "--search simplex: expected one of greedy, grid"),
])
def test_bad_input_is_one_line(bench, noisy_runs, tmp_path, args, message) -> None:
    args = [arg.format(a=noisy_runs["a"]) for arg in args]
    result = bench("ensemble", *args, "--out", tmp_path / "ens")
    assert result.code == 2 and message in result.err and len(result.err.strip().splitlines()) == 1


def test_unfinished_run_is_refused(bench, noisy_runs, tmp_path) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "recipe.toml").write_text('name = "half"\n')  # written first: a run that never finished
    result = bench("ensemble", noisy_runs["a"], tmp_path / "half", "--out", tmp_path / "ens")
    assert result.code == 2 and "unfinished" in result.err


def test_a_glob_over_a_results_folder_skips_what_holds_no_run(bench, noisy_runs, tmp_path) -> None:
    """results/* matches results/benchmarks and notes of the user's own: they are not runs, and are
    skipped with one line; a name that matches nothing is still an error."""
    results = tmp_path / "results"
    results.mkdir()
    for name in ("a", "b"):
        shutil.copytree(noisy_runs[name], results / name)
    (results / "benchmarks").mkdir()
    (results / "notes.txt").write_text("my notes")
    result = bench("ensemble", results / "*", "--out", tmp_path / "ens")
    assert result.code == 0, result.err
    assert f"skipped: {results / 'benchmarks'} (no run in it), {results / 'notes.txt'} (not a folder)" \
        in result.out.replace("\n", " ")
    assert bench("ensemble", results / "nope", "--out", tmp_path / "ens2").err.count("no such run folder") == 1
    shutil.copytree(noisy_runs["c"], results / "benchmarks" / "a")  # a second run named a
    twice = bench("ensemble", results / "a", results / "benchmarks", "--out", tmp_path / "ens4")
    assert f"{results / 'benchmarks' / 'a'} (a run of the same name is listed: {results / 'a'})" \
        in twice.out.replace("\n", " ")
    # results/* lists results/benchmarks first: the run results/* names itself still wins over the one inside
    glob_first = bench("ensemble", results / "benchmarks", results / "a", "--out", tmp_path / "ens5")
    assert f"{results / 'benchmarks' / 'a'} (a run of the same name is listed: {results / 'a'})" \
        in glob_first.out.replace("\n", " ")
    only_notes = bench("ensemble", results / "notes.txt", "--out", tmp_path / "ens3")
    assert only_notes.code == 2 and "notes.txt (not a folder): no run folder" in only_notes.err


def _write_rows(path: Path, rows: list[tuple[str, str]]) -> Path:
    with gzip.open(path, "wt") as handle:
        handle.write("img,rle_mask\n" + "".join(f"{img}.jpg,{text}\n" for img, text in rows))
    return path


@pytest.fixture(scope="module")
def valid_rows(synthetic_set) -> list[tuple[str, str]]:
    dataset = open_carvana(synthetic_set)
    return [(image_id, "1 3 10 5") for image_id in dataset.test]


def test_check_accepts_a_valid_submission(bench, synthetic_set, valid_rows, tmp_path) -> None:
    path = tmp_path / "ok.csv.gz"
    assert write_submission(path, iter(valid_rows)) == len(valid_rows)
    result = bench("ensemble", "--check", path, "--data", synthetic_set)
    assert result.code == 0 and f"{len(valid_rows)} test images" in result.out


def test_a_noisy_full_size_mask_longer_than_csvs_field_limit_checks(tmp_path) -> None:
    """A noisy model's full-size mask can take megabytes of RLE; csv's default limit is 128 KiB, and
    the check of such a submission failed at the end of bench ensemble (found at 1918x1280)."""
    mask = np.zeros((1280, 1918), dtype=np.uint8)
    mask.flat[::4] = 1  # 613,760 runs
    path = tmp_path / "submission.csv.gz"
    write_submission(path, iter([("noisy_01", rle.encode(mask))]))
    assert len(next(iter(read_submission(path)))[2]) > csv.field_size_limit() > 0
    assert check_submission(path, {"noisy_01": (1280, 1918)}) == 1


@pytest.mark.parametrize("image_id", ["fff9b3a5373f_16", "a,comma", 'a"quote', "a\nline", "voiture_é"])
def test_a_submission_is_the_csv_the_standard_library_writes_and_reads(image_id, tmp_path) -> None:
    """Rows are written without csv.writer (harness.data.submission._csv_row), and ISA-L compresses them:
    plain gzip must read the bytes csv.writer would have written, and read_submission the rows."""
    rows = [(image_id, "1 3 10 5"), ("empty_01", "")]
    path = tmp_path / "submission.csv.gz"
    write_submission(path, iter(rows))
    expected = io.StringIO()
    csv.writer(expected, lineterminator="\n").writerows([HEADER, *((name + ".jpg", text) for name, text in rows)])
    assert gzip.decompress(path.read_bytes()).decode("utf-8") == expected.getvalue()
    assert [(name, text) for _, name, text in read_submission(path)] == rows


@pytest.mark.parametrize("change, message", [
    (lambda rows: rows[1:], "missing"),
    (lambda rows: rows + rows[:1], "appears twice"),
    (lambda rows: rows + [("0000000000_01", "")], "not a test image"),
    (lambda rows: [(rows[0][0], "1 3 10")] + rows[1:], "odd number"),
    (lambda rows: [(rows[0][0], "2560 2")] + rows[1:], "outside"),  # 64x40 = 2560 pixels: one too far
    (lambda rows: [(rows[0][0], "0 2")] + rows[1:], "outside"),
    (lambda rows: [(rows[0][0], "10 2 1 2")] + rows[1:], "not sorted"),
    (lambda rows: [(rows[0][0], "1 5 3 2")] + rows[1:], "not sorted and non-overlapping"),
    (lambda rows: [(rows[0][0], "1 x")] + rows[1:], "integers"),
    (lambda rows: [(rows[0][0], "1 " + "9" * 19)] + rows[1:], "more than 18 digits"),
    (lambda rows: [(rows[0][0], "10  2 1 2")] + rows[1:], "not sorted"),  # two spaces: not the canonical form
])
def test_check_catches(bench, synthetic_set, valid_rows, tmp_path, change, message) -> None:
    path = _write_rows(tmp_path / "bad.csv.gz", change(list(valid_rows)))
    result = bench("ensemble", "--check", path, "--data", synthetic_set)
    assert result.code == 2 and message in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1
