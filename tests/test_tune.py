"""`bench tune`: real studies of a tiny recipe: parallel workers on one SQLite study, pruning,
kill and restart, the tuned recipe, and the one-line errors for a bad [tune] table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from harness.tune.study import counted_trials

pytestmark = pytest.mark.slow

# The recipe's lr (3e-3) is at the top of a wide log range, so most trials learn far too slowly:
# the Wilcoxon pruner, comparing car by car with the baseline, has clear losers to stop.
TUNE = """
[tune]
trials = {trials}
sampler = "random"
pruner = {{ name = "wilcoxon", p_threshold = 0.5 }}
[tune.space]
"optimizer.lr" = {{ type = "float", low = 1e-9, high = 3e-3, log = true }}
"loss.dice_weight" = {{ type = "categorical", choices = [0.5, 1.0] }}
"""


def _load(results: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{results / 'tune' / name / 'study.db'}")


def test_two_workers_share_one_study_prune_and_write_a_runnable_recipe(bench, tune_set, tiny_recipe, tmp_path):
    recipe = tiny_recipe(tmp_path / "tiny.toml", tune_set, epochs=2, extra=TUNE.format(trials=5))
    results, tuned = tmp_path / "results", tmp_path / "tuned"

    done = bench("tune", recipe, "--workers", 2, "--results", results, "--tuned", tuned)

    assert done.code == 0, done.err
    study = _load(results, "tiny")
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]  # none lost, none twice, budget exact
    assert counted_trials(study) == 5
    states = [t.state for t in trials]
    assert set(states) <= {TrialState.COMPLETE, TrialState.PRUNED} and TrialState.PRUNED in states
    assert trials[0].user_attrs["baseline"] and trials[0].params["optimizer.lr"] == 3e-3
    workers = {t.user_attrs["worker"] for t in trials[1:]}
    assert len(workers) == 2, "both worker processes took trials"
    for trial in trials:  # every trial is an ordinary run folder of its own recipe
        folder = results / "tune" / "tiny" / trial.user_attrs["run"]
        ran = tomllib.loads((folder / "recipe.toml").read_text())
        assert ran["optimizer"]["lr"] == pytest.approx(trial.params["optimizer.lr"])
        assert (folder / "summary.json").exists() == (trial.state == TrialState.COMPLETE)
    table = pd.read_csv(results / "tune" / "tiny" / "trials.csv")
    assert list(table["trial"]) == [0, 1, 2, 3, 4] and "param:optimizer.lr" in table

    written = tuned / "tiny.toml"
    best = study.best_trial
    assert f"trial {best.number} of study 'tiny'" in written.read_text()
    assert f"wrote {written}" in done.out and "study tiny" in done.out
    best_run = tomllib.loads((results / "tune" / "tiny" / best.user_attrs["run"] / "recipe.toml").read_text())
    assert tomllib.loads(written.read_text()) == {**best_run, "name": "tiny-tuned"}
    again = bench("run", written, "--results", tmp_path / "rerun")
    assert again.code == 0 and "tiny-tuned: out-of-fold Dice" in again.out, again.err

    compared = bench("compare", results / "tune" / "tiny", "--format", "csv")
    assert compared.code == 0 and compared.out.count("\n") >= 2
    page = tmp_path / "report.html"
    assert bench("report", results / "tune" / "tiny", "--out", page).code == 0
    assert 'id="study-tiny"' in page.read_text() and "Optimisation history of study tiny" in page.read_text()


def _start_and_wait_for_a_fold(command: list[str], study_folder: Path) -> subprocess.Popen:
    """Start ``bench tune`` in a session of its own; return once the first trial has finished a fold.

    Its output goes to ``tune.log`` beside the results, which a failing assertion can show. Ctrl-C is
    given back its default in the child: a suite started in the background (``make test &``, nohup)
    ignores SIGINT, every child inherits that, and Python then installs no KeyboardInterrupt."""
    with open(study_folder.parent.parent.parent / "tune.log", "w") as log:  # the child keeps its own copy
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not list(study_folder.glob("tiny-*/fold-0/fold.json")):
        assert process.poll() is None and time.monotonic() < deadline, "tune ended before it could be stopped"
        time.sleep(0.05)
    return process


@pytest.fixture
def untuned(tune_set, tiny_recipe, tmp_path):
    """``bench tune`` of a 2-trial study, unpruned, as a command line, and where its study lives."""
    extra = TUNE.format(trials=2).replace('{ name = "wilcoxon", p_threshold = 0.5 }', '"none"')
    recipe = tiny_recipe(tmp_path / "tiny.toml", tune_set, epochs=2, extra=extra)
    results = tmp_path / "results"
    command = [sys.executable, "-m", "harness.cli", "tune", str(recipe), "--results", str(results),
               "--tuned", str(tmp_path / "tuned")]
    return command, results


def test_killed_tune_continues_the_same_study_and_resumes_the_killed_trial(untuned):
    command, results = untuned
    study_folder = results / "tune" / "tiny"
    process = _start_and_wait_for_a_fold(command, study_folder)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_run = next(study_folder.glob("tiny-*/fold-0/fold.json")).parent.parent
    fold_zero = (killed_run / "fold-0" / "fold.json").read_bytes()
    assert _load(results, "tiny").get_trials()[0].state == TrialState.RUNNING

    restarted = subprocess.run(command, capture_output=True, text=True, timeout=300)

    assert restarted.returncode == 0, restarted.stderr
    assert "trial 0 was left running by a worker that died" in restarted.stdout
    trials = _load(results, "tiny").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].params == trials[0].params and trials[1].user_attrs["run"] == killed_run.name
    assert (killed_run / "fold-0" / "fold.json").read_bytes() == fold_zero, "the killed trial's run resumed"
    notes = pd.read_csv(study_folder / "trials.csv")["note"].fillna("")
    assert "died" in notes[0] and "retried as 1" in notes[0]
    assert "retry of 0" in notes[1] and "died" not in notes[1]


def test_ctrl_c_records_the_running_trial_and_queues_it_again(untuned):
    command, results = untuned
    process = _start_and_wait_for_a_fold(command, results / "tune" / "tiny")
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=60) == 130, (results.parent / "tune.log").read_text()
    trials = _load(results, "tiny").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].user_attrs["error"] == "interrupted" and trials[1].params == trials[0].params


def test_a_full_disk_stops_the_study_and_queues_the_trial_again(bench, untuned, monkeypatch):
    import shutil

    # the disk is too small for the run's probability maps
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    command, results = untuned
    stopped = bench(*command[3:])
    assert stopped.code == 2 and len(stopped.err.strip().splitlines()) == 1
    assert "probability maps need about" in stopped.err and "1.0 kB free" in stopped.err, stopped.err
    trials = _load(results, "tiny").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].user_attrs["error"] == "disk full" and trials[1].params == trials[0].params


def test_a_disk_too_small_for_the_trials_left_is_said_after_the_first(bench, untuned, monkeypatch):
    import shutil
    from types import SimpleNamespace

    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=10**6))
    command, results = untuned
    done = bench(*command[3:])
    assert done.code == 0, done.err
    assert "warning: a finished trial keeps" in done.out and "1 more trial may need up to" in done.out
    assert "and its disk has 1.0 MB free" in done.out


def test_the_median_pruner_judges_every_epoch(bench, tune_set, tiny_recipe, tmp_path):
    extra = TUNE.format(trials=2).replace('{ name = "wilcoxon", p_threshold = 0.5 }',
                                          '{ name = "median", startup_trials = 1 }')
    extra = extra.replace('sampler = "random"', 'sampler = "random"\nseed = 1')  # trial 1 draws lr 9.6e-7
    recipe = tiny_recipe(tmp_path / "tiny.toml", tune_set, epochs=2, extra=extra)
    done = bench("tune", recipe, "--results", tmp_path / "results", "--tuned", tmp_path / "tuned")
    assert done.code == 0, done.err
    trial = _load(tmp_path / "results", "tiny").get_trials()[1]
    assert trial.state == TrialState.PRUNED and trial.params["optimizer.lr"] < 1e-4
    assert trial.user_attrs["pruned"].startswith("at fold 1, epoch")
    assert set(trial.intermediate_values) <= {0, 1}  # steps are fold x epochs + epoch
    pruned_run = tmp_path / "results" / "tune" / "tiny" / trial.user_attrs["run"]
    assert (pruned_run / "fold-0" / "best.pt").exists() and not list(pruned_run.glob("fold-*/last.pt"))


def test_a_journal_file_can_hold_the_study(bench, tune_set, tiny_recipe, tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    extra = TUNE.format(trials=2).replace('{ name = "wilcoxon", p_threshold = 0.5 }', '"none"')
    recipe = tiny_recipe(tmp_path / "tiny.toml", tune_set, epochs=1, extra=extra)
    journal = tmp_path / "shared" / "study.log"
    done = bench("tune", recipe, "--storage", journal, "--results", tmp_path / "results", "--tuned", tmp_path / "tuned")
    assert done.code == 0, done.err
    study = optuna.load_study(study_name="tiny", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
    assert not (tmp_path / "results" / "tune" / "tiny" / "study.db").exists()


def test_two_objectives_give_a_pareto_front(bench, tune_set, tiny_recipe, tmp_path):
    extra = """
[tune]
trials = 2
objective = ["oof_dice", "inference_images_per_s"]
sampler = "nsga2"
[tune.space]
"optimizer.lr" = { type = "float", low = 1e-4, high = 3e-3, log = true }
"""
    recipe = tiny_recipe(tmp_path / "tiny.toml", tune_set, epochs=1, extra=extra)
    done = bench("tune", recipe, "--results", tmp_path / "results", "--tuned", tmp_path / "tuned")
    assert done.code == 0, done.err
    study = _load(tmp_path / "results", "tiny")
    assert [len(t.values) for t in study.get_trials()] == [2, 2]
    assert "inference_images_per_s" in done.out and (tmp_path / "tuned" / "tiny.toml").exists()


def test_a_worker_started_again_on_a_resumed_study_proposes_new_parameters(synthetic_set, tiny_recipe, plugins,
                                                                           tmp_path):
    from harness.recipe.schema import load_recipe
    from harness.tune import study as studies
    from harness.tune.search_space import SearchSpace

    extra = '[tune]\ntrials = 3\nsampler = "random"\n[tune.space]\n"optimizer.lr" = { type = "float", low = 1e-4, high = 1e-2 }'
    recipe = load_recipe(tiny_recipe(tmp_path / "tiny.toml", synthetic_set, extra=extra), plugins)
    space = SearchSpace(recipe, plugins, "tiny.toml")
    place = studies.StudyPlace("tiny", tmp_path / "study")
    studies.create_or_load(place, space)
    proposed = []
    for _ in range(2):  # the same worker, started twice on the study, each time after the baseline
        study = studies.load(place, space, worker=0)
        if not proposed:
            study.tell(study.ask(), 0.5)  # the enqueued baseline
        trial = study.ask(space.spec.distributions())
        proposed.append(trial.params["optimizer.lr"])
        study.tell(trial, 0.5)
    assert proposed[0] != proposed[1]


def test_list_choices_are_stored_as_json_and_come_back_as_lists(synthetic_set, tiny_recipe, plugins, tmp_path):
    from harness.recipe.schema import load_recipe
    from harness.tune.search_space import SearchSpace

    extra = '[tune]\ntrials = 2\n[tune.space]\n"input.size" = { type = "categorical", choices = ["original", [64, 64]] }'
    recipe = load_recipe(tiny_recipe(tmp_path / "tiny.toml", synthetic_set, extra=extra), plugins)
    space = SearchSpace(recipe, plugins, "tiny.toml")
    space.check()
    assert space.baseline_params() == {"input.size": "original"}
    assert space.spec.distributions()["input.size"].choices == ("original", "[64, 64]")
    assert space.recipe_for({"input.size": "[64, 64]"}).input.size == (64, 64)
    assert space.recipe_for({"input.size": "[64, 64]"}).tune is None  # a trial's recipe is a plain recipe


@pytest.mark.parametrize("tune_table, message", [
    ('[tune]\ntrials = 2\n[tune.space]\n"optimizer.lrr" = { type = "float", low = 1e-4, high = 1e-2 }',
     "'optimizer.lrr': the recipe has no value at optimizer.lrr"),
    ('[tune]\ntrials = 2\n[tune.space]\n"optimizer.lr" = { type = "float", low = 1e-5, high = 1e-4 }',
     "the recipe's own value 0.003 is outside uniform [1e-05, 0.0001]"),
    ('[tune]\ntrials = 2\n[tune.space]\n"train.epochs" = { type = "int", low = 0, high = 3 }',
     "train.epochs=0: key 'train.epochs'"),
    ('[tune]\ntrials = 2\n[tune.space]\n"optimizer.lr" = { type = "float", low = 1e-2, high = 1e-4 }',
     "expected low < high"),
    ('[tune]\n[tune.space]\n"optimizer.lr" = { type = "float", low = 1e-4, high = 1e-2 }',
     "give tune.trials, tune.timeout_minutes, or both"),
    ('[tune]\ntrials = 2\nobjective = ["oof_dice", "train_images_per_s"]\npruner = "median"\n'
     '[tune.space]\n"optimizer.lr" = { type = "float", low = 1e-4, high = 1e-2 }',
     "Optuna cannot prune multi-objective studies"),
    ("", "no [tune] table"),
])
def test_a_bad_tune_table_is_one_line_and_starts_nothing(bench, synthetic_set, tiny_recipe, tmp_path, tune_table, message):
    recipe = tiny_recipe(tmp_path / "tiny.toml", synthetic_set, extra=tune_table)
    failed = bench("tune", recipe, "--results", tmp_path / "results")
    assert failed.code == 2
    assert message in failed.err and str(recipe) in failed.err and len(failed.err.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("storage, message", [
    ("sqlite:////nonexistent/folder/study.db", "unable to open database file"),
    ("/proc/no-such-folder/study.log", "No such file or directory"),
])
def test_a_storage_that_cannot_open_is_one_line(bench, synthetic_set, tiny_recipe, tmp_path, storage, message):
    recipe = tiny_recipe(tmp_path / "tiny.toml", synthetic_set, extra=TUNE.format(trials=2))
    failed = bench("tune", recipe, "--storage", storage, "--results", tmp_path / "results")
    assert failed.code == 2 and f"study storage {storage}: cannot open" in failed.err and message in failed.err
    assert len(failed.err.strip().splitlines()) == 1


def test_a_changed_search_is_refused_an_old_study(bench, synthetic_set, tiny_recipe, tmp_path):
    space = '[tune]\ntimeout_minutes = 1e-9\n[tune.space]\n"optimizer.lr" = {{ type = "float", low = 1e-4, high = {high} }}'
    first = tiny_recipe(tmp_path / "tiny.toml", synthetic_set, extra=space.format(high=1e-2))
    made = bench("tune", first, "--results", tmp_path / "results", "--tuned", tmp_path / "tuned")
    assert made.code == 0 and "no trial has completed yet" in made.out  # the time budget was spent at once
    changed = tiny_recipe(tmp_path / "tiny.toml", synthetic_set, extra=space.format(high=5e-2))
    refused = bench("tune", changed, "--results", tmp_path / "results")
    assert refused.code == 2 and "--study NEW_NAME" in refused.err
    assert bench("tune", changed, "--results", tmp_path / "results", "--study", "wider",
                 "--tuned", tmp_path / "tuned").code == 0


def test_a_storage_that_fails_to_write_is_one_line_with_the_database_s_reason(tmp_path):
    import sqlite3

    from harness.errors import BenchError
    from harness.tune.study import StudyPlace, storage_errors

    place = StudyPlace("tiny", tmp_path / "study")
    with pytest.raises(BenchError) as raised, storage_errors(place):
        try:  # what optuna's RDB storage raises when SQLite finds the disk full
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as error:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from error
    assert str(raised.value).startswith(f"study storage sqlite:///{tmp_path}/study/study.db: cannot write: "
                                        "database or disk is full; ")
