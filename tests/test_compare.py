"""``bench compare``: the numbers it prints are recomputed here from per_image.csv, independently.

The recomputation uses plain loops and the csv module, not harness.evaluate.stats, and follows the resampling
protocol documented in harness/evaluate/stats.py (seeded draws over sorted car ids), so the intervals must
match to rounding, not just roughly.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SAME_SPLITS = ("linknet", "unet", "fpn")
RESAMPLES = 2000


@pytest.fixture(scope="module")
def three(tiny_runs) -> list[Path]:
    return [tiny_runs[name] for name in SAME_SPLITS]


def _per_image(run: Path) -> dict[str, tuple[str, int, float]]:
    with open(run / "per_image.csv", newline="") as handle:
        return {row["image"]: (row["car"], int(row["fold"]), float(row["dice"])) for row in csv.DictReader(handle)}


def _by_car(values: dict[str, tuple[str, float]]) -> tuple[list[float], list[int]]:
    """Per-car sums and counts, cars in sorted order (the documented protocol)."""
    sums, counts = defaultdict(float), defaultdict(int)
    for car, value in values.values():
        sums[car] += value
        counts[car] += 1
    cars = sorted(sums)
    return [sums[c] for c in cars], [counts[c] for c in cars]


def _percentile_interval(sums: list[float], counts: list[int], seed: int = 0) -> tuple[float, float]:
    picks = np.random.default_rng(seed).integers(0, len(sums), size=(RESAMPLES, len(sums)))
    pooled = [sum(sums[i] for i in draw) / sum(counts[i] for i in draw) for draw in picks]
    return tuple(np.percentile(pooled, [2.5, 97.5]))


def _json(bench, *args) -> dict:
    result = bench("compare", *args, "--format", "json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_ranking_intervals_and_paired_differences_match_a_recomputation(bench, three):
    report = _json(bench, *three)
    assert len(report["groups"]) == 1
    rows = report["groups"][0]["rows"]
    scores = {run.name: _per_image(run) for run in three}

    pooled = {name: np.mean([dice for _, _, dice in images.values()]) for name, images in scores.items()}
    assert [row["run"] for row in rows] == sorted(pooled, key=pooled.get, reverse=True)
    assert [row["rank"] for row in rows] == [1, 2, 3]
    best = rows[0]["run"]
    for row in rows:
        name = row["run"]
        assert row["oof_dice"] == pytest.approx(pooled[name], abs=1e-9)
        sums, counts = _by_car({i: (car, dice) for i, (car, _, dice) in scores[name].items()})
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(_percentile_interval(sums, counts), abs=1e-9)
        assert row["ci_low"] <= row["oof_dice"] <= row["ci_high"]
        summary = json.loads((Path(row["path"]) / "summary.json").read_text())
        for key in ("fold_dice_mean", "fold_dice_std", "train_seconds", "train_images_per_s",
                    "inference_images_per_s", "parameters", "device"):
            assert row[key] == pytest.approx(summary[key]) if isinstance(summary[key], float) else row[key] == summary[key]
        if name == best:
            assert row["delta"] == 0 and row["p_value"] is None
            continue
        # Paired over the same images: per-image differences, grouped by car.
        assert scores[name].keys() == scores[best].keys()
        deltas = {i: (car, dice - scores[best][i][2]) for i, (car, _, dice) in scores[name].items()}
        assert row["delta"] == pytest.approx(np.mean([d for _, d in deltas.values()]), abs=1e-9)
        assert row["delta"] == pytest.approx(row["oof_dice"] - rows[0]["oof_dice"], abs=1e-9)
        sums, counts = _by_car(deltas)
        assert (row["delta_low"], row["delta_high"]) == pytest.approx(_percentile_interval(sums, counts), abs=1e-9)
        # Sign-flip test over cars, every pattern enumerated (4 cars: 16 patterns).
        observed = abs(sum(sums))
        flipped = [abs(sum(s * v for s, v in zip(signs, sums))) for signs in itertools.product((1, -1), repeat=len(sums))]
        assert row["p_exact"] is True
        assert row["p_value"] == pytest.approx(np.mean([f >= observed - 1e-12 for f in flipped]))


def test_table_ranks_best_first_with_intervals_and_p_values(bench, three):
    result = bench("compare", *three)
    assert result.code == 0, result.err
    rows = _json(bench, *three)["groups"][0]["rows"]
    positions = [result.out.index(row["run"]) for row in rows]
    assert positions == sorted(positions)
    for header in ("OOF Dice", "95% CI", "folds mean ± std", "Δ to best", "p", "train time", "train img/s",
                   "infer img/s", "params", "device"):
        assert header in result.out
    assert f"{rows[1]['oof_dice']:.4f}" in result.out and f"{rows[1]['delta']:+.4f}" in result.out


def test_runs_on_other_folds_are_ranked_together_and_the_note_says_what_compares(bench, tiny_runs):
    runs = [tiny_runs[name] for name in ("linknet", "unet", "other_splits")]
    report = _json(bench, *runs)
    assert len(report["groups"]) == 1
    group = report["groups"][0]
    splits = {run.name: json.loads((run / "summary.json").read_text())["splits_hash"] for run in runs}
    assert splits["linknet"] == splits["unet"] != splits["other_splits"]
    assert group["splits"] == splits and group["splits_hash"] is None
    assert group["data_hash"] == json.loads((runs[0] / "summary.json").read_text())["data_hash"]
    # the paired statistics hold across folds: every image scored once in each run, paired by image
    rows = {row["run"]: row for row in group["rows"]}
    scores = {run.name: _per_image(run) for run in runs}
    assert scores["other_splits"].keys() == scores["linknet"].keys()
    assert any(scores["other_splits"][i][1] != scores["linknet"][i][1] for i in scores["linknet"]), "other folds"
    best = group["rows"][0]["run"]
    for name, row in rows.items():
        deltas = [dice - scores[best][image][2] for image, (_, _, dice) in scores[name].items()]
        assert row["delta"] == pytest.approx(np.mean(deltas), abs=1e-9)

    table = bench("compare", *runs)
    assert table.code == 0, table.err
    assert "folds mean ± std †" in table.out and "splits differ †" in table.out
    note = next(line for line in table.out.splitlines() if line.startswith("† splits differ"))
    assert f"linknet, unet on splits {splits['linknet'][:12]} (2 folds)" in note
    assert f"other_splits on splits {splits['other_splits'][:12]} (2 folds)" in note
    assert "does not compare across runs" in note and "exactly one out-of-fold prediction in every run" in note
    same = bench("compare", tiny_runs["linknet"], tiny_runs["unet"])
    assert "†" not in same.out, "runs on one set of folds get no mark"


def test_runs_on_different_data_are_refused_in_one_line_naming_them(bench, tiny_runs, other_data_run):
    result = bench("compare", tiny_runs["linknet"], tiny_runs["other_splits"], other_data_run)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "cannot rank runs on different data" in lines[0]
    assert "linknet, other_splits (data " in lines[0] and "other_data (data " in lines[0]
    assert result.out == ""


def test_default_scan_gives_each_data_set_its_own_table(bench, tiny_runs, other_data_run, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for run in [*tiny_runs.values(), other_data_run]:
        (results / run.name).symlink_to(run, target_is_directory=True)
    report = _json(bench, "--results", results)
    groups = {tuple(sorted(row["run"] for row in g["rows"])) for g in report["groups"]}
    assert groups == {("fpn", "linknet", "other_splits", "unet"), ("other_data",)}


def _without_data_hash(run: Path, where: Path) -> Path:
    """A copy of ``run`` as written before data hashes: its summary.json without the field."""
    copy = Path(shutil.copytree(run, where / run.name))
    summary = json.loads((copy / "summary.json").read_text())
    del summary["data_hash"]
    (copy / "summary.json").write_text(json.dumps(summary))
    return copy


def test_runs_without_a_data_hash_are_grouped_by_data_root_and_splits_as_before(bench, tiny_runs, tmp_path):
    old_linknet = _without_data_hash(tiny_runs["linknet"], tmp_path)
    old_other = _without_data_hash(tiny_runs["other_splits"], tmp_path)
    # with a run of the same root and splits, an old run takes its data hash: it ranks with the new ones
    report = _json(bench, old_linknet, tiny_runs["unet"], tiny_runs["other_splits"])
    assert sorted(row["run"] for row in report["groups"][0]["rows"]) == ["linknet", "other_splits", "unet"]
    # two old runs on other folds: nothing says they share data beyond their root, so they are refused
    result = bench("compare", old_linknet, old_other)
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert "no data hash, written before it" in result.err and "--filter splits_hash~" in result.err
    # and a filter on data_hash passes over them rather than failing on the missing field
    data_hash = json.loads((tiny_runs["unet"] / "summary.json").read_text())["data_hash"]
    only_new = _json(bench, old_other, tiny_runs["unet"], "--filter", f"data_hash~{data_hash[:12]}*")
    assert [row["run"] for row in only_new["groups"][0]["rows"]] == ["unet"]


def test_unfinished_run_is_listed_apart_not_ranked(bench, tiny_runs, tmp_path):
    unfinished = Path(shutil.copytree(tiny_runs["unet"], tmp_path / "unet-unfinished"))
    (unfinished / "summary.json").unlink()
    report = _json(bench, tiny_runs["linknet"], tiny_runs["fpn"], unfinished)
    assert [row["run"] for row in report["groups"][0]["rows"]] == sorted(
        ["linknet", "fpn"], key=lambda n: -json.loads((tiny_runs[n] / "summary.json").read_text())["oof_dice"])
    assert report["unfinished"] == [{"path": str(unfinished), "folds_done": 2, "reason": "no summary.json"}]
    table = bench("compare", tiny_runs["linknet"], unfinished)
    assert table.code == 0
    assert "unfinished, not ranked" in table.out and "unet-unfinished" in table.out.split("unfinished, not ranked")[1]


def test_csv_and_markdown_hold_the_json_numbers(bench, three):
    rows = _json(bench, *three)["groups"][0]["rows"]
    result = bench("compare", *three, "--format", "csv")
    assert result.code == 0, result.err
    table = pd.read_csv(io.StringIO(result.out))
    assert list(table["run"]) == [row["run"] for row in rows]
    np.testing.assert_allclose(table["oof_dice"], [row["oof_dice"] for row in rows])
    np.testing.assert_allclose(table["ci_low"], [row["ci_low"] for row in rows])
    summary = json.loads((three[0] / "summary.json").read_text())
    assert set(table["splits_hash"]) == {summary["splits_hash"]} and set(table["data_hash"]) == {summary["data_hash"]}

    markdown = bench("compare", *three, "--format", "markdown")
    assert markdown.code == 0, markdown.err
    lines = [line for line in markdown.out.splitlines() if line.startswith("|")]
    header, rule, *body = lines
    assert len(body) == 3 and set(rule.replace("|", "")) == {"-"}
    widths = {len(line.split(" | ")) for line in lines if line != rule}
    assert len(widths) == 1, "every markdown row has the header's number of cells"
    assert [row["run"] in line for row, line in zip(rows, body)] == [True] * 3


def test_by_fold_gives_each_fold_its_dice(bench, three):
    report = _json(bench, *three, "--by", "fold")
    rows = report["groups"][0]["rows"]
    assert len(rows) == 3 * 2
    for row in rows:
        run = next(r for r in three if r.name == row["run"])
        scores = [dice for _, fold, dice in _per_image(run).values() if fold == row["fold"]]
        assert row["images"] == len(scores)
        assert row["dice"] == pytest.approx(np.mean(scores), abs=1e-9)
        fold_json = json.loads((run / f"fold-{row['fold']}" / "fold.json").read_text())
        assert row["best_epoch"] == fold_json["best_epoch"]


def test_by_image_lists_the_worst_images_of_each_run(bench, three):
    report = _json(bench, *three, "--by", "image", "--worst", "3")
    rows = report["groups"][0]["rows"]
    for run in three:
        shown = [(row["image"], row["dice"]) for row in rows if row["run"] == run.name]
        worst = sorted(((dice, image) for image, (_, _, dice) in _per_image(run).items()))[:3]
        assert [image for image, _ in shown] == [image for _, image in worst]
        assert [dice for _, dice in shown] == pytest.approx([dice for dice, _ in worst])


def test_sort_and_filter(bench, three):
    by_size = _json(bench, *three, "--sort", "parameters")["groups"][0]["rows"]
    assert [row["parameters"] for row in by_size] == sorted(row["parameters"] for row in by_size)
    assert sorted(row["rank"] for row in by_size) == [1, 2, 3], "rank stays the Dice rank"
    only = _json(bench, *three, "--filter", "recipe=unet")["groups"][0]["rows"]
    assert [row["run"] for row in only] == ["unet"]
    globbed = _json(bench, *three, "--filter", "run~*net")["groups"][0]["rows"]
    assert sorted(row["run"] for row in globbed) == ["linknet", "unet"]
    lowest, second = sorted(row["oof_dice"] for row in by_size)[:2]
    above = _json(bench, *three, "--filter", f"oof_dice>{(lowest + second) / 2}")["groups"][0]["rows"]
    assert len(above) == 2


@pytest.mark.parametrize("args, expected", [
    (("--filter", "nonsense"), "--filter"),
    (("--filter", "colour=red"), "no field 'colour'"),
    (("--sort", "speed"), "--sort speed"),
    (("--format", "xml"), "--format xml"),
    (("--by", "car"), "--by car"),
])
def test_bad_options_are_one_line(bench, three, args, expected):
    result = bench("compare", *three, *args)
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1 and expected in result.err


def test_missing_run_folder_is_one_line(bench, tmp_path):
    result = bench("compare", tmp_path / "nowhere")
    assert result.code == 2 and "no such run folder" in result.err


def _history(*epochs_by_fold: list[float]) -> pd.DataFrame:
    return pd.DataFrame([{"epoch": epoch, "val_dice": dice, "fold": fold}
                         for fold, curve in enumerate(epochs_by_fold) for epoch, dice in enumerate(curve)])


def test_still_rising_judges_the_folds_mean_at_the_last_epoch():
    from harness.evaluate.results import still_rising

    assert still_rising(_history([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])) is True
    assert still_rising(_history([0.5, 0.7, 0.7005], [0.5, 0.7, 0.7])) is False  # within the tolerance
    assert still_rising(_history([0.5, 0.8, 0.7], [0.5, 0.6, 0.65])) is False  # the best was earlier
    assert still_rising(_history([0.5], [0.6])) is None and still_rising(pd.DataFrame()) is None


def test_a_run_still_rising_at_its_last_epoch_is_marked(bench, three, tmp_path):
    copies = [Path(shutil.copytree(run, tmp_path / run.name)) for run in three]
    rising = copies[1]
    for copy in copies:
        for history in copy.glob("fold-*/history.csv"):
            table = pd.read_csv(history)
            curve = np.linspace(0.2, 0.6, len(table))  # each epoch better than the last, or the reverse
            table["val_dice"] = curve if copy == rising else curve[::-1]
            # every fold 10 s an epoch: real timings vary with the machine's load, and a fold whose
            # first epoch outlasts another run's whole fold has no Dice @T
            table["train_seconds"] = 10.0 * (1 + np.arange(len(table)))
            table.to_csv(history, index=False)
    rows = {row["run"]: row for row in _json(bench, *copies)["groups"][0]["rows"]}
    assert rows[rising.name]["still_rising"] is True
    assert all(rows[run.name]["still_rising"] is not True for run in (copies[0], copies[2]))
    table = bench("compare", *copies)
    assert "↑ still rising: validation Dice gained more than 0.002" in table.out
    assert f"{rows[rising.name]['oof_dice']:.4f} ↑" in table.out
    assert "Dice @T: validation Dice (mean of folds, best epoch so far) after T =" in table.out
    assert any(row["dice_at_equal_time"] is not None for row in rows.values())  # the shortest, at least


def _timed(*folds: list[tuple[float, float]]) -> pd.DataFrame:
    """A history from (training seconds so far, validation Dice) per epoch, per fold."""
    return pd.DataFrame([{"epoch": epoch, "train_seconds": seconds, "val_dice": dice, "fold": fold}
                         for fold, curve in enumerate(folds) for epoch, (seconds, dice) in enumerate(curve)])


def test_runs_are_scored_at_the_shortest_runs_time_budget():
    from harness.evaluate.compare import equal_time
    from harness.evaluate.results import dice_within

    long = _timed([(10, 0.5), (20, 0.9), (30, 0.8)], [(12, 0.6), (24, 0.7), (36, 0.95)])
    short = _timed([(9, 0.7), (21, 0.8)], [(11, 0.75), (19, 0.85)])
    assert equal_time({"long": long, "short": short}) == 19  # the shortest fold of all
    assert dice_within(long, 20.0) == pytest.approx((0.9 + 0.6) / 2)  # the best epoch each fold had by then
    assert dice_within(short, 19.0) == pytest.approx((0.7 + 0.85) / 2)
    assert dice_within(long, 5.0) is None  # a fold that had not finished an epoch cannot be scored
    assert dice_within(pd.DataFrame({"epoch": [0], "val_dice": [0.5], "fold": [0]}), 20.0) is None  # an old run


def test_the_skipped_line_names_a_few_and_counts_the_rest():
    from harness.runs.folder import skipped_line

    assert skipped_line(["a (no run in it)", "b"]) == "skipped: a (no run in it), b"
    assert skipped_line([f"r{i}" for i in range(11)]) == "skipped: r0, r1, r2, and 8 more"
