"""`bench run`: real training on tiny synthetic data, the run folder, resume after SIGKILL, NaN stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.data.carvana import open_carvana
from harness.data.dataset import data_hash
from harness.data.splits import read_splits
from harness.runs.probabilities import ProbabilityMaps

RUN_EXTRAS = """
[schedule]  # not constant from the first epoch on, so a resume that lost the base lr would show
name = "piecewise_cyclic"
lead = [[0.5, 1]]
cycle = [[1.0, 3], [0.3, 2]]
[[augment]]
name = "hflip"
p = 0.5
[predict]
tta = "hflip"
"""
PHASE = """
[[phases]]  # the resume after SIGKILL crosses it: a fresh optimizer, no augmentation from epoch 3 on
start_epoch = 3
optimizer = { name = "adam", lr = 3e-3 }
augment = []
"""


@pytest.fixture(scope="module")
def run_recipe(tiny_recipe):
    """``run_recipe(folder, data_root, epochs=6)``: the tiny recipe with a schedule, an augmentation and TTA,
    and a phase when it has the epochs for one."""
    def write(folder: Path, root: Path, epochs: int = 6) -> Path:
        return tiny_recipe(folder / "tiny.toml", root, epochs=epochs, extra=RUN_EXTRAS + (PHASE if epochs > 3 else ""))
    return write


@pytest.fixture(scope="module")
def finished_run(synthetic_set, tmp_path_factory, run_recipe):
    """One complete tiny run, shared by the tests that only read it."""
    from harness.cli import main

    tmp = tmp_path_factory.mktemp("run")
    recipe = run_recipe(tmp, synthetic_set)
    results = tmp / "results"
    argv = sys.argv
    sys.argv = ["bench", "run", str(recipe), "--results", str(results), "--name", "done"]
    try:
        with pytest.raises(SystemExit) as exited:
            main()
    finally:
        sys.argv = argv
    assert exited.value.code == 0
    return results / "done"


def test_run_trains_to_a_useful_dice_and_writes_a_complete_folder(finished_run, synthetic_set):
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["complete"] and summary["recipe"] == "tiny"
    assert summary["oof_dice"] > 0.8, summary["oof_dice"]  # 4 cars, 64x40, a minute of CPU
    for name in ("recipe.toml", "environment.json", "splits.json", "per_image.csv", "test.json"):
        assert (finished_run / name).exists(), name
    assert read_splits(finished_run / "splits.json").hash == summary["splits_hash"]
    assert summary["data_hash"] == data_hash(open_carvana(synthetic_set))  # what bench compare groups runs by
    for fold in range(2):
        history = (finished_run / f"fold-{fold}" / "history.csv").read_text().splitlines()
        assert history[0].startswith("epoch,lr,train_loss,val_dice") and len(history) == 7
        assert (finished_run / f"fold-{fold}" / "best.pt").exists()
        assert not (finished_run / f"fold-{fold}" / "last.pt").exists(), "a finished fold keeps no resume state"


def test_oof_and_test_maps_cover_every_image_at_its_own_size(finished_run, synthetic_set):
    train_ids = sorted(p.stem for p in (synthetic_set / "train").glob("*.jpg"))
    oof = ProbabilityMaps.open(finished_run / "oof_maps")
    assert sorted(oof.ids) == train_ids
    assert all(oof.shapes[i] == (40, 64) for i in train_ids)
    rows = (finished_run / "per_image.csv").read_text().splitlines()
    assert rows[0] == "image,car,fold,dice" and len(rows) == len(train_ids) + 1
    per_image = np.array([float(r.split(",")[3]) for r in rows[1:]])
    summary = json.loads((finished_run / "summary.json").read_text())
    assert per_image.mean() == pytest.approx(summary["oof_dice"], abs=1e-6)
    test = ProbabilityMaps.open(finished_run / "test_maps")
    assert len(test) == 16 and 0.0 <= test[test.ids[0]].min() and test[test.ids[0]].max() <= 1.0


def test_complete_run_is_not_redone_and_unfinished_needs_resume(bench, finished_run, tmp_path):
    recipe = finished_run / "recipe.toml"
    again = bench("run", recipe, "--results", finished_run.parent, "--name", "done")
    assert again.code == 0 and "already complete" in again.out
    (finished_run.parent / "half").mkdir()
    refused = bench("run", recipe, "--results", finished_run.parent, "--name", "half")
    assert refused.code == 2 and "--resume" in refused.err


def test_sigkill_mid_fold_then_resume_across_a_phase_equals_an_uninterrupted_run(synthetic_set, finished_run, tmp_path):
    recipe = finished_run / "recipe.toml"  # the same resolved recipe as the finished run
    results = tmp_path / "results"
    command = [sys.executable, "-m", "harness.cli", "run", str(recipe), "--results", str(results), "--name", "killed"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fold_one_epoch = results / "killed" / "fold-1" / "last.pt"  # written after its first epoch, before the phase
    deadline = time.monotonic() + 240
    while not fold_one_epoch.exists():
        assert process.poll() is None and time.monotonic() < deadline, "run ended before it could be killed"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed = results / "killed"
    assert not (killed / "summary.json").exists()
    fold_zero = {p.name: p.read_bytes() for p in (killed / "fold-0").iterdir()}

    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "fold 2/2 epoch" in resumed.stdout  # counted among the run's folds, not the ones left
    assert {p.name: p.read_bytes() for p in (killed / "fold-0").iterdir()} == fold_zero
    assert (killed / "per_image.csv").read_text() == (finished_run / "per_image.csv").read_text()
    oof_killed, oof_clean = ProbabilityMaps.open(killed / "oof_maps"), ProbabilityMaps.open(finished_run / "oof_maps")
    assert all(np.array_equal(oof_killed.quantised(i), oof_clean.quantised(i)) for i in oof_clean.ids)


NAN_PLUGIN = '''
from harness.api import hookimpl

def explodes(*, after: int = 2):
    calls = []
    def loss(logits, target):
        calls.append(1)
        value = (logits.float() - target).abs().mean()
        return value * float("nan") if len(calls) > after else value
    return loss

@hookimpl
def bench_losses():
    return {"explodes": explodes}
'''


def test_a_disk_too_small_for_the_maps_stops_the_run_before_training(bench, synthetic_set, tmp_path, run_recipe,
                                                                     monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    result = bench("run", run_recipe(tmp_path, synthetic_set), "--results", tmp_path / "results", "--name", "full")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    folder = tmp_path / "results" / "full"
    assert f"{folder}: its out-of-fold and test probability maps need about " in result.err, result.err
    assert "its disk has 1.0 kB free" in result.err, result.err
    assert not list(folder.glob("fold-*")) and not list(folder.glob("*_maps")), "nothing trained, nothing half-made"


def test_nan_loss_stops_the_fold_with_the_reason_recorded(bench, synthetic_set, tmp_path, run_recipe):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "explodes.py").write_text(NAN_PLUGIN)
    result = bench("--plugins-dir", tmp_path / "plugins", "run", run_recipe(tmp_path, synthetic_set),
                   "--results", tmp_path / "results", "--name", "nan", "--set", "loss={name = 'explodes'}")
    assert result.code == 2
    assert "the loss became nan at epoch 0, step 2 of fold 0" in result.err
    assert len(result.err.strip().splitlines()) == 1
    failure = json.loads((tmp_path / "results/nan/fold-0/failure.json").read_text())
    assert failure["epoch"] == 0 and failure["step"] == 2 and "nan" in failure["reason"]
    assert not (tmp_path / "results/nan/summary.json").exists()


def test_images_not_a_multiple_of_32_train_and_predict_at_their_own_size(bench, tmp_path, run_recipe):
    from harness.data.synthetic import write_synthetic_carvana

    root = write_synthetic_carvana(tmp_path / "odd", cars=2, test_cars=1, size=(110, 75), seed=3)
    result = bench("run", run_recipe(tmp_path, root, epochs=1), "--results", tmp_path / "results",
                   "--name", "odd", "--set", "data.root=" + str(root))
    assert result.code == 0, result.err
    for store in ("oof", "test"):
        maps = ProbabilityMaps.open(tmp_path / "results/odd" / f"{store}_maps")
        assert set(maps.shapes.values()) == {(75, 110)}
        assert maps[maps.ids[0]].shape == (75, 110)


def test_estimate_prints_a_duration_and_writes_no_run(bench, synthetic_set, tmp_path, run_recipe):
    result = bench("run", run_recipe(tmp_path, synthetic_set), "--results", tmp_path / "results", "--estimate")
    assert result.code == 0, result.err
    assert "estimate: about" in result.out and "s/step" in result.out
    assert not (tmp_path / "results").exists()


def test_workers_do_not_change_the_result(bench, finished_run, tmp_path):
    """Augmentation is seeded per (epoch, image), so two DataLoader workers train the same model."""
    result = bench("run", finished_run / "recipe.toml", "--results", tmp_path, "--name", "workers",
                   "--set", "train.workers=2")
    assert result.code == 0, result.err
    assert (tmp_path / "workers/per_image.csv").read_text() == (finished_run / "per_image.csv").read_text()


@pytest.mark.parametrize("cars", [4, 32])  # 64 and 512 labelled images
def test_a_budget_in_steps_costs_the_same_on_small_and_large_data(bench, tmp_path, tiny_recipe, cars):
    """The same optimizer steps, and the same validation every epoch (a sample of 8 held-out images);
    the whole held-out fold is still predicted and scored once, for the out-of-fold result."""
    from harness.data.synthetic import write_synthetic_carvana

    root = write_synthetic_carvana(tmp_path / "set", cars=cars, test_cars=0, size=(64, 40), seed=0)
    recipe = tiny_recipe(tmp_path / "r.toml", root, epochs=2, batch_size=4)
    result = bench("run", recipe, "--set", "train.steps_per_epoch=3", "--set", "train.validate_images=8",
                   "--results", tmp_path, "--name", "budget")
    assert result.code == 0, result.err
    budget = ("budget: 2 folds x 2 epochs of 3 optimizer steps, 6 in all (24 images), 4 images a step at 64x64; "
              "each epoch validates up to 8 held-out images")
    assert budget in result.out
    for fold in range(2):
        fold_json = json.loads((tmp_path / f"budget/fold-{fold}/fold.json").read_text())
        assert fold_json["optimizer_steps"] == 6
        history = pd.read_csv(tmp_path / f"budget/fold-{fold}/history.csv")
        assert history["step"].tolist() == [3, 6] and history["val_images"].tolist() == [8, 8]
        per_image = pd.read_csv(tmp_path / f"budget/fold-{fold}/per_image.csv")
        assert len(per_image) == cars * 16 // 2  # the whole held-out fold
        assert fold_json["val_dice"] == pytest.approx(per_image["dice"].mean(), abs=1e-6)
    summary = json.loads((tmp_path / "budget/summary.json").read_text())
    assert summary["oof_dice"] == pytest.approx(summary["fold_dice_mean"], abs=1e-6)


def test_a_short_side_trains_small_and_predicts_at_full_size(bench, tmp_path, tiny_recipe):
    from harness.data.synthetic import write_synthetic_carvana

    root = write_synthetic_carvana(tmp_path / "set", cars=2, test_cars=1, size=(150, 100), seed=1)
    recipe = tiny_recipe(tmp_path / "r.toml", root, epochs=1, extra='[input]\nfit = "resize"\nsize = 64')
    result = bench("run", recipe, "--results", tmp_path, "--name", "small")
    assert result.code == 0, result.err
    assert "at 96x64" in result.out  # 150x100 scaled by 0.64 and rounded to multiples of 32
    for store in ("oof", "test"):
        maps = ProbabilityMaps.open(tmp_path / "small" / f"{store}_maps")
        assert set(maps.shapes.values()) == {(100, 150)} and maps[maps.ids[0]].shape == (100, 150)
