"""A run's folds in several processes: ``--folds`` started together, killed and resumed, ``--devices``
and submitit's local executor; each must give the one-process run's results.

Every run here goes through the installed ``bench`` in a subprocess, from a folder that is not the
checkout, with one thread each (``OMP_NUM_THREADS=1``), so the runs compared do the same arithmetic.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(sys.executable).parent / "bench"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not BENCH.exists(), reason="no installed bench command: make install")]
K = 3


@pytest.fixture(scope="module")
def project(tmp_path_factory, synthetic_set, tiny_recipe) -> Path:
    """A user's folder holding a 3-fold tiny recipe: two epochs of four steps (a resume point after each)."""
    folder = tmp_path_factory.mktemp("project")
    recipe = tiny_recipe(folder / "tiny.toml", synthetic_set, epochs=2, batch_size=4, extra="steps_per_epoch = 4")
    recipe.write_text(recipe.read_text().replace("k = 2", f"k = {K}"))
    return folder


def bench(project: Path, *args, wait: bool = True):
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "SEGBENCH_CACHE")}
    env.update(OMP_NUM_THREADS="1", COLUMNS="80", NO_ALBUMENTATIONS_UPDATE="1",
               SEGBENCH_CACHE=str(project / ".cache"))
    command = [str(BENCH), *map(str, args)]
    process = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    if not wait:
        return process
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0 and "Traceback" not in err, f"{command}\n{out}\n{err}"
    return out


def run_args(name: str, *more) -> list:
    return ["run", "tiny.toml", "--results", "results", "--name", name, *more]


@pytest.fixture(scope="module")
def reference(project) -> Path:
    """The run in one process, the way every run trained before folds could be spread."""
    bench(project, *run_args("one"))
    return project / "results" / "one"


def assert_same_results(run: Path, reference: Path) -> None:
    summary, expected = (json.loads((folder / "summary.json").read_text()) for folder in (run, reference))
    assert summary["oof_dice"] == expected["oof_dice"]
    assert (run / "per_image.csv").read_bytes() == (reference / "per_image.csv").read_bytes()
    assert sorted(p.name for p in (run / "test_maps").iterdir()) == sorted(p.name for p in (reference / "test_maps").iterdir())


def test_three_processes_started_together_assemble_the_one_process_run(project, reference):
    processes = [bench(project, *run_args("three", "--folds", fold), wait=False) for fold in range(K)]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0 and "Traceback" not in err, out + err
    assemblers = [out for out, _ in outputs if "out-of-fold Dice" in out]
    assert assemblers, "the process that finished the last fold assembles the run and says its Dice"
    waiting = [out for out, _ in outputs if "The process that finishes the last fold assembles the run" in out]
    assert len(assemblers) + len(waiting) == K
    assert_same_results(project / "results" / "three", reference)
    folds = json.loads((project / "results" / "three" / "environment.json").read_text())["folds"]
    assert sorted(folds) == ["0", "1", "2"] and all(f["device"].startswith("cpu") for f in folds.values())


def test_a_process_killed_mid_fold_is_resumed_by_devices_cpu_cpu_and_the_run_is_the_same(project, reference):
    run = project / "results" / "killed"
    killed = bench(project, *run_args("killed", "--folds", "0"), wait=False)
    deadline = time.monotonic() + 120
    while not (run / "fold-0" / "last.pt").exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the resume point after fold 0's first epoch
    assert killed.poll() is None, "fold 0 ended before it could be killed mid-fold"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (run / "fold-0" / "fold.json").exists()
    out = bench(project, *run_args("killed", "--devices", "cpu,cpu"))  # one worker a device, each taking a fold
    for fold in range(K):
        assert f"fold {fold} -> cpu (log: " in out and f"fold {fold} on cpu" in out, out
        assert (run / f"fold-{fold}" / "train.log").is_file()
    assert "fold 1/3: resumed from its checkpoint after epoch 1" in (run / "fold-0" / "train.log").read_text()
    assert "out-of-fold Dice" in out
    assert_same_results(run, reference)


def test_devices_go_on_to_the_pseudo_label_stage_and_train_each_of_its_folds_once(project, synthetic_set,
                                                                                  tiny_recipe):
    tiny_recipe(project / "pseudo.toml", synthetic_set, name="pseudo", epochs=1, batch_size=4, extra=(
        "steps_per_epoch = 2\n[pseudo_label]\nuncertain = [0.05, 0.95]\nmax_uncertain_share = 1.0\nmax_images = 5"))
    out = bench(project, "run", "pseudo.toml", "--results", "results", "--name", "pseudo", "--devices", "cpu,cpu")
    run = project / "results" / "pseudo"
    assert "the run: 2 folds to train" in out and "the pseudo-label stage: 2 folds to train" in out, out
    assert (run / "summary.json").is_file() and (run / "pseudo" / "summary.json").is_file()
    for fold in range(2):  # a first-stage worker stops at its stage: the pseudo folds are the second round's
        assert "pseudo labelling:" not in (run / f"fold-{fold}" / "train.log").read_text()
        assert (run / "pseudo" / f"fold-{fold}" / "train.log").read_text().count(f"fold {fold + 1}/2: val Dice") == 1


def test_submitit_local_executor_runs_the_folds_as_jobs(project, reference):
    out = bench(project, *run_args("jobs", "--launcher", "local", "--slurm-cpus", "1"))  # one thread, as the others
    run = project / "results" / "jobs"
    assert out.count("-> local job") == K and "out-of-fold Dice" in out
    assert len(list((run / "jobs").glob("*_log.out"))) == K
    assert_same_results(run, reference)


@pytest.mark.parametrize("args, says", [
    (["--folds", "2"], "--folds 2: the recipe has 2 folds, numbered 0 to 1"),
    (["--folds", "0,x"], "--folds 0,x: expected fold numbers separated by commas"),
    (["--devices", "cuda:0"], "--devices cuda:0: CUDA is not available on this machine"),
    (["--devices", "cuda,cuda:0"], "--devices names cuda:0 twice: one fold per GPU"),
    (["--devices", "cpu,gpu"], "--devices gpu: expected cpu, cuda or cuda:N"),
    (["--devices", ""], "--devices '': expected devices separated by commas"),
    (["--devices", "cpu", "--estimate"], "--devices and --estimate cannot be used together"),
    (["--launcher", "pbs"], "--launcher pbs: expected slurm or local"),
    (["--launcher", "slurm"], "--launcher slurm needs --slurm-partition"),
    (["--ddp", "3"], "train.batch_size 8 cannot be shared by 3 processes (--ddp): make it a multiple of 3"),
    (["--ddp", "2", "--devices", "cpu"], "--devices and --ddp cannot be used together"),
])
def test_bad_spreads_are_one_line_and_write_nothing(bench, tiny_recipe, synthetic_set, tmp_path, args, says):
    recipe = tiny_recipe(tmp_path / "tiny.toml", synthetic_set)
    result = bench("run", recipe, "--results", tmp_path / "results", *args)
    assert result.code == 2 and says in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert not (tmp_path / "results").exists()


def test_a_folder_of_another_recipe_is_not_joined(bench, tiny_recipe, synthetic_set, tmp_path):
    recipe = tiny_recipe(tmp_path / "tiny.toml", synthetic_set)
    (tmp_path / "results" / "x").mkdir(parents=True)
    (tmp_path / "results" / "x" / "recipe.toml").write_text('name = "another"\n')
    for spread in (["--folds", "0"], ["--devices", "cpu"]):
        result = bench("run", recipe, "--results", tmp_path / "results", "--name", "x", *spread)
        assert result.code == 2 and "the folder holds another recipe's folds" in result.err, result.err
    assert sorted(p.name for p in (tmp_path / "results" / "x").iterdir()) == ["recipe.toml"]


def test_launcher_without_submitit_says_how_to_install_it(bench, tiny_recipe, synthetic_set, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # what an environment without it gives
    result = bench("run", tiny_recipe(tmp_path / "tiny.toml", synthetic_set), "--results", tmp_path / "results",
                   "--launcher", "local")
    assert result.code == 2 and "pip install 'segbench[cluster]'" in result.err, result.err


@pytest.mark.parametrize("format_, output", [("rle", "submission.csv.gz"), ("png", "masks")])
def test_three_shards_write_what_one_prediction_writes(bench, tiny_runs, synthetic_set, tmp_path, format_, output):
    run, images = tiny_runs["unet"], synthetic_set / "test"
    common = ["--format", format_, "--workers", "0"]
    assert bench("predict", run, images, "--out", tmp_path / "one", *common).code == 0
    for index in (2, 1, 3):  # in any order: the last to finish merges
        result = bench("predict", run, images, "--out", tmp_path / "sharded", "--shard", f"{index}/3", *common)
        assert result.code == 0, result.err
        assert ("merged 3 shards" in result.out) == (index == 3)
    one, sharded = tmp_path / "one" / output, tmp_path / "sharded" / output
    if format_ == "rle":
        assert sharded.read_bytes() == one.read_bytes()
    else:
        assert sorted(p.name for p in sharded.iterdir()) == sorted(p.name for p in one.iterdir())
        assert all((sharded / p.name).read_bytes() == p.read_bytes() for p in one.iterdir())
    report = json.loads((tmp_path / "sharded" / "predict.json").read_text())
    assert report["shards"] == 3 and report["predicted"] == len(list(images.iterdir()))
    again = bench("predict", "--merge-shards", tmp_path / "sharded")
    assert again.code == 0 and "merged 3 shards" in again.out
    if format_ == "rle":
        assert sharded.read_bytes() == one.read_bytes()
        # the shards as jobs of submitit's local executor: the same submission again
        jobs = bench("predict", run, images, "--out", tmp_path / "jobs", "--launcher", "local", "--shards", "2", *common)
        assert jobs.code == 0 and jobs.out.count("-> local job") == 2, jobs.out + jobs.err
        assert (tmp_path / "jobs" / "submission.csv.gz").read_bytes() == one.read_bytes()


def test_bad_shards_are_one_line(bench, tiny_runs, synthetic_set, tmp_path):
    run, images = tiny_runs["unet"], synthetic_set / "test"
    for args, says in [(["--shard", "3/2"], "--shard 3/2: expected i/N with 1 <= i <= N"),
                       (["--shards", "2"], "--shards N and --launcher go together: one job per shard"),
                       (["--shard", "0/2"], "--shard 0/2: expected i/N"),
                       (["--shard", "1/99"], "16 images cannot make 99 shards")]:
        result = bench("predict", run, images, "--out", tmp_path / "out", *args)
        assert result.code == 2 and says in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert bench("predict", run, images, "--out", tmp_path / "out", "--shard", "1/2", "--workers", "0").code == 0
    result = bench("predict", "--merge-shards", tmp_path / "out")
    assert result.code == 2 and "shard 2 of 2 not finished" in result.err, result.err
    result = bench("predict", run, images, "--out", tmp_path / "out", "--shard", "1/3", "--workers", "0")
    assert result.code == 2 and "holds the shards of another prediction" in result.err, result.err
    (tmp_path / "out" / "shards" / "plan.json").write_text('{"shards": 2}')  # edited by hand
    result = bench("predict", "--merge-shards", tmp_path / "out")
    assert result.code == 2 and "not a plan of shards" in result.err, result.err
