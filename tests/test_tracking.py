"""bench run --track mlflow / tensorboard: a tiny run read back with each library's own reader; a resumed
run continues the same tracked run; tuning trials tagged; a tracker that is missing or down is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(sys.executable).parent / "bench"
mlflow = pytest.importorskip("mlflow", reason="pip install 'segbench[mlflow]'")
pytest.importorskip("tensorboard", reason="pip install 'segbench[tensorboard]'")


class StopAfterFirstFold:
    """A monitor that interrupts the run once fold 0 is done: a run killed between folds."""

    def estimated(self, seconds):
        pass

    def epoch_done(self, fold, record):
        pass

    def fold_done(self, fold, folder):
        if fold == 0:
            raise KeyboardInterrupt


def interrupted_then_resumed(tracker: str, recipe_path: Path, results: Path, bench) -> Path:
    """Fold 0 trained with tracking and interrupted (in this process), then ``bench run --resume --track``."""
    from rich.console import Console

    from harness.engine.run import Monitors, RunRequest, run, run_folder, run_recipe
    from harness.recipe.plugins import load_plugins
    from harness.recipe.schema import load_recipe
    from harness.track.tracking import Tracking, trackers

    plugins = load_plugins()
    request = RunRequest(load_recipe(recipe_path, plugins), results)
    tracking = Tracking(trackers(plugins, [tracker]), run_folder(request), run_recipe(request), Console(quiet=True))
    with pytest.raises(KeyboardInterrupt):
        try:
            run(RunRequest(request.recipe, results, monitor=Monitors(tracking, StopAfterFirstFold())), plugins,
                Console(quiet=True))
        except BaseException:
            tracking.failed()
            raise
    said = bench("run", recipe_path, "--results", results, "--resume", "--track", tracker)
    assert said.code == 0, said.out + said.err
    return run_folder(request).path


@pytest.mark.slow
@pytest.mark.skipif(not BENCH.exists(), reason=f"no installed bench command beside {sys.executable}")
def test_mlflow_gets_params_every_epoch_of_every_fold_the_summary_and_the_report(synthetic_set, tiny_recipe, tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    tiny_recipe(user / "tiny.toml", synthetic_set)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env.update(COLUMNS="80", NO_ALBUMENTATIONS_UPDATE="1")
    done = subprocess.run([str(BENCH), "run", "tiny.toml", "--track", "mlflow"], cwd=user, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert "warning" not in done.stdout + done.stderr
    assert (user / "mlflow.db").is_file()  # MLflow's own default store, in the user's folder

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{user / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("segbench")
    (tracked,) = client.search_runs([experiment.experiment_id])
    folder = next((user / "results").glob("tiny-*"))
    summary = json.loads((folder / "summary.json").read_text())
    assert tracked.info.run_name == folder.name and tracked.info.status == "FINISHED"
    assert tracked.data.params["train.epochs"] == "2" and tracked.data.params["model.arch"] == "unet"
    assert tracked.data.tags["recipe"] == "tiny"
    for fold in (0, 1):
        history = client.get_metric_history(tracked.info.run_id, f"fold{fold}/val_dice")
        assert [m.step for m in history] == [0, 1]
    assert tracked.data.metrics["oof_dice"] == pytest.approx(summary["oof_dice"])
    files = {item.path for item in client.list_artifacts(tracked.info.run_id)}
    assert {"summary.json", "recipe.toml", "per_image.csv", "report.html"} <= files


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_mlflow_run(synthetic_set, tiny_recipe, tmp_path, bench, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow puts its artefacts under ./mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    folder = interrupted_then_resumed("mlflow", tiny_recipe(tmp_path / "tiny.toml", synthetic_set),
                                      tmp_path / "results", bench)
    client = mlflow.MlflowClient()
    (tracked,) = client.search_runs([client.get_experiment_by_name("segbench").experiment_id])
    assert json.loads((folder / "tracking.json").read_text())["mlflow"]["state"]["run_id"] == tracked.info.run_id
    assert tracked.info.status == "FINISHED"
    for fold in (0, 1):  # fold 0 sent before the interruption, not again after it
        assert [m.step for m in client.get_metric_history(tracked.info.run_id, f"fold{fold}/train_loss")] == [0, 1]
    assert "oof_dice" in tracked.data.metrics


@pytest.mark.slow
def test_tensorboard_gets_every_epoch_of_every_fold_and_a_resume_adds_no_step_twice(synthetic_set, tiny_recipe,
                                                                                     tmp_path, bench):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = interrupted_then_resumed("tensorboard", tiny_recipe(tmp_path / "tiny.toml", synthetic_set),
                                      tmp_path / "results", bench)
    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for fold in (0, 1):
        assert [event.step for event in events.Scalars(f"fold{fold}/val_dice")] == [0, 1]
    summary = json.loads((folder / "summary.json").read_text())
    assert events.Scalars("oof_dice")[-1].value == pytest.approx(summary["oof_dice"])
    assert "fold0/train_loss" in scalars and "recipe/text_summary" in events.Tags()["tensors"]


@pytest.mark.slow
def test_tuning_trials_are_tagged_with_their_study_and_trial(synthetic_set, tiny_recipe, tmp_path, bench, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow puts its artefacts under ./mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    extra = ('[tune]\ntrials = 2\nsampler = "random"\n[tune.space]\n'
             '"optimizer.lr" = { type = "float", low = 1e-4, high = 1e-2 }')
    recipe = tiny_recipe(tmp_path / "tiny.toml", synthetic_set, epochs=1, extra=extra)
    said = bench("tune", recipe, "--results", tmp_path / "results", "--track", "mlflow")
    assert said.code == 0, said.out + said.err
    client = mlflow.MlflowClient()
    tracked = client.search_runs([client.get_experiment_by_name("segbench").experiment_id])
    assert sorted(run.data.tags["trial"] for run in tracked) == ["0", "1"]
    assert {run.data.tags["study"] for run in tracked} == {"tiny"}
    assert all(run.info.status == "FINISHED" for run in tracked)


def test_a_tracker_not_installed_or_unknown_is_one_line(bench, synthetic_set, tiny_recipe, tmp_path, monkeypatch):
    recipe = tiny_recipe(tmp_path / "tiny.toml", synthetic_set)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    said = bench("run", recipe, "--results", tmp_path / "results", "--track", "mlflow")
    assert said.code == 2 and said.err.strip().endswith("pip install 'segbench[mlflow]'")
    assert len(said.err.strip().splitlines()) == 1
    said = bench("run", recipe, "--results", tmp_path / "results", "--track", "wandb")
    assert said.code == 2 and "--track wandb: unknown tracker" in said.err
    assert not (tmp_path / "results").exists()  # refused before anything was written


@pytest.mark.slow
def test_an_unreachable_tracking_server_turns_tracking_off_and_the_run_goes_on(bench, synthetic_set, tiny_recipe,
                                                                               tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port: nothing answers
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    recipe = tiny_recipe(tmp_path / "tiny.toml", synthetic_set, epochs=1)
    said = bench("run", recipe, "--results", tmp_path / "results", "--track", "mlflow")
    assert said.code == 0, said.err
    warnings = [line for line in said.out.splitlines() if "tracking with mlflow is off" in line]
    assert len(warnings) == 1, said.out
    assert (next((tmp_path / "results").glob("tiny-*")) / "summary.json").is_file()
