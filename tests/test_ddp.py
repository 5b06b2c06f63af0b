"""``bench run --ddp 2``: each fold trained by two processes (DistributedDataParallel, gloo on the CPU)
steps like one process of the whole batch.

Through the installed ``bench``, from a folder that is not the checkout, with a model of a one-file
plugin: three convolutions and no batch norm, whose statistics would be the slice's in each process
(``harness.engine.distributed`` says what segbench does about batch norm). SGD and a loss that is a
mean over the batch's pixels, so two halves averaged are exactly the whole batch, up to float sums.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

BENCH = Path(sys.executable).parent / "bench"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not BENCH.exists(), reason="no installed bench command: make install")]

PLUGIN = '''"""A network without batch norm, for the DDP test."""
from torch import nn

from harness.api import hookimpl


def plain_cnn(*, width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(width, 1, 1))


@hookimpl
def bench_models():
    return {"plain_cnn": plain_cnn}
'''


def write_project(tmp_path: Path, synthetic_set: Path, tiny_recipe, epochs: int) -> dict[str, str]:
    """The plugin, a recipe of ``epochs`` epochs of three SGD steps (the last epoch's weights kept), and
    the environment of every run here."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "plain_cnn.py").write_text(PLUGIN)
    tiny_recipe(tmp_path / "ddp.toml", synthetic_set, name="ddp", model='name = "plain_cnn"', epochs=epochs,
                batch_size=8, extra='steps_per_epoch = 3\ncheckpoint = "last"')
    recipe = (tmp_path / "ddp.toml").read_text()
    recipe = recipe.replace('name = "bce_dice"', 'name = "top_k_bce"\ntop_k = 1.0')
    (tmp_path / "ddp.toml").write_text(recipe.replace('name = "adam"\nlr = 3e-3', 'name = "sgd"\nlr = 0.1'))
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH",)}
    env.update(OMP_NUM_THREADS="1", COLUMNS="80", NO_ALBUMENTATIONS_UPDATE="1")
    return env


def run_args(name: str, *more) -> list[str]:
    return [str(BENCH), "--plugins-dir", "plugins", "run", "ddp.toml", "--results", "results", "--name", name, *more]


def bench(tmp_path: Path, env: dict[str, str], name: str, *more) -> str:
    done = subprocess.run(run_args(name, *more), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    return done.stdout


def weight_difference(tmp_path: Path, fold: int) -> float:
    one, two = (torch.load(tmp_path / "results" / name / f"fold-{fold}" / "best.pt")["model"] for name in ("one", "ddp"))
    return max((one[key] - two[key]).abs().max().item() for key in one)


def test_two_processes_of_half_a_batch_reach_the_weights_of_one_process(tmp_path, synthetic_set, tiny_recipe):
    env = write_project(tmp_path, synthetic_set, tiny_recipe, epochs=1)
    bench(tmp_path, env, "one")
    out = bench(tmp_path, env, "ddp", "--ddp", "2", "--device", "cpu")
    assert "DistributedDataParallel over 2 processes of 4 images each a batch" in out
    assert out.count("ddp: out-of-fold Dice") == 1, "rank 0 speaks for both processes"
    run = tmp_path / "results" / "ddp"
    assert json.loads((run / "environment.json").read_text())["ddp"] == {"processes": 2, "backend": "gloo"}
    for fold in range(2):  # one epoch of three SGD steps
        difference = weight_difference(tmp_path, fold)
        assert difference <= 1e-5, f"fold {fold}: weights differ by up to {difference}"
        assert json.loads((run / f"fold-{fold}" / "fold.json").read_text())["optimizer_steps"] == 3
    summaries = [json.loads((tmp_path / "results" / name / "summary.json").read_text()) for name in ("one", "ddp")]
    assert summaries[1]["complete"] and abs(summaries[0]["oof_dice"] - summaries[1]["oof_dice"]) < 1e-3


def test_a_killed_ddp_run_resumes_from_rank_0s_checkpoint_to_the_same_weights(tmp_path, synthetic_set, tiny_recipe):
    """The launcher SIGKILLed after fold 0's first epoch (its ranks end with it, PR_SET_PDEATHSIG);
    --resume goes on from the checkpoint, and after two epochs the weights are one process's."""
    env = write_project(tmp_path, synthetic_set, tiny_recipe, epochs=2)
    bench(tmp_path, env, "one")
    run = tmp_path / "results" / "ddp"
    launcher = subprocess.Popen(run_args("ddp", "--ddp", "2", "--device", "cpu"), cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run / "fold-0" / "last.pt").exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert launcher.poll() is None, "the run ended before it could be killed"
    launcher.kill()
    launcher.wait()
    time.sleep(1)  # the ranks, told by the kernel that their parent died, stop
    assert not (run / "summary.json").exists()
    out = bench(tmp_path, env, "ddp", "--ddp", "2", "--device", "cpu", "--resume")
    assert "fold 1/2: resumed from its checkpoint after epoch 1 of 2" in out and "ddp: out-of-fold Dice" in out, out
    for fold in range(2):
        difference = weight_difference(tmp_path, fold)
        assert difference <= 1e-5, f"fold {fold}: weights differ by up to {difference}"
        assert json.loads((run / f"fold-{fold}" / "fold.json").read_text())["optimizer_steps"] == 6
