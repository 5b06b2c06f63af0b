"""Training in phases, the checkpoint rule, and summed gradient accumulation (``harness.recipe.phases``,
``harness.engine.train``): tiny runs on the tiny synthetic set, and the training loop on fixed batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console

from harness.data.carvana import open_carvana
from harness.data.geometry import Fit
from harness.data.loading import EpochSampler, Images, Normalise, PhasedAugment, TrainingSamples
from harness.engine.assembly import Assembly
from harness.engine.device import Compute
from harness.engine.run import RunRequest, run
from harness.engine.train import FoldSetup, TrainState, steps_after, train_epoch
from harness.recipe.schema import load_recipe
from harness.speed.overhead import InMemorySamples

CPU = Compute(torch.device("cpu"), "fp32", channels_last=False)
PHASED = """steps_per_epoch = 2
checkpoint = "{checkpoint}"
new_optimizer_every_epoch = {every_epoch}
[[augment]]
name = "hflip"
p = 0.5
[[phases]]             # alexander's switch in small: a new optimizer of another type, no augmentation
start_epoch = 2
optimizer = {{ name = "rmsprop", lr = 1e-3 }}
augment = []
"""


class _OptimizerSpy:
    """A run monitor that reads the fold's resume checkpoint after every epoch: the optimizer's kind
    (Adam keeps ``exp_avg``, RMSprop ``square_avg``) and how many steps its moments have seen."""

    def __init__(self, fold_folder: Path):
        self.fold_folder, self.seen = fold_folder, []

    def estimated(self, seconds: float) -> None:
        pass

    def epoch_done(self, fold: int, record: dict) -> None:
        if fold == 0:
            state = torch.load(self.fold_folder / "last.pt", weights_only=True)["optimizer"]["state"][0]
            self.seen.append(("adam" if "exp_avg" in state else "rmsprop", int(state["step"])))

    def fold_done(self, fold, folder) -> None:
        pass


def _run(tmp_path, synthetic_set, tiny_recipe, plugins, checkpoint: str, every_epoch: bool):
    extra = PHASED.format(checkpoint=checkpoint, every_epoch=str(every_epoch).lower())
    recipe = load_recipe(tiny_recipe(tmp_path / "phased.toml", synthetic_set, epochs=4, extra=extra), plugins)
    spy = _OptimizerSpy(tmp_path / "results" / "phased" / "fold-0")
    folder = run(RunRequest(recipe, tmp_path / "results", name="phased", monitor=spy), plugins, Console(quiet=True))
    return folder, spy.seen


def test_a_phase_builds_a_fresh_optimizer_of_its_own_kind_and_best_val_loss_is_kept(
        tmp_path, synthetic_set, tiny_recipe, plugins):
    folder, seen = _run(tmp_path, synthetic_set, tiny_recipe, plugins, "best_val_loss", every_epoch=False)
    # two steps an epoch: Adam's moments grow over epochs 0-1, RMSprop's start empty at epoch 2
    assert seen == [("adam", 2), ("adam", 4), ("rmsprop", 2), ("rmsprop", 4)]
    for fold in range(2):
        history = pd.read_csv(folder / f"fold-{fold}" / "history.csv")
        assert list(history["lr"]) == pytest.approx([3e-3, 3e-3, 1e-3, 1e-3])
        assert np.isfinite(history["val_loss"]).all()
        kept = json.loads((folder / f"fold-{fold}" / "fold.json").read_text())
        assert kept["checkpoint"] == "best_val_loss"
        assert kept["best_epoch"] == int(history["val_loss"].idxmin())
        assert torch.load(folder / f"fold-{fold}" / "best.pt", weights_only=True)["epoch"] == kept["best_epoch"]


def test_a_new_optimizer_every_epoch_and_the_last_epoch_kept(tmp_path, synthetic_set, tiny_recipe, plugins):
    folder, seen = _run(tmp_path, synthetic_set, tiny_recipe, plugins, "last", every_epoch=True)
    assert seen == [("adam", 2), ("adam", 2), ("rmsprop", 2), ("rmsprop", 2)]
    assert all(json.loads((folder / f"fold-{f}" / "fold.json").read_text())["best_epoch"] == 3 for f in range(2))


def test_the_augmentation_list_switches_at_its_phase(synthetic_set, tiny_recipe, plugins, tmp_path):
    extra = PHASED.format(checkpoint="last", every_epoch="false").replace("p = 0.5", "p = 1.0")
    recipe = load_recipe(tiny_recipe(tmp_path / "phased.toml", synthetic_set, epochs=4, extra=extra), plugins)
    phases = PhasedAugment(Assembly(recipe, plugins).augment_phases())
    assert [start for start, _ in phases.phases] == [0, 2] and phases.at(3) is None
    dataset = open_carvana(synthetic_set)
    samples = TrainingSamples(Images(dataset, dataset.train[:1], None, cache_bytes=1 << 20), [0], phases,
                              Fit("pad", None), seed=0)
    flipped, plain = samples[(1, 1, 0)][0], samples[(2, 2, 0)][0]  # epochs 1 and 2 (draws do not matter here)
    assert torch.equal(flipped, plain.flip(-1))


def test_show_prints_the_phases_and_the_lr_of_every_epoch(bench):
    shown = bench("show", "recipes/alexander.toml")
    assert shown.code == 0
    table = [line for line in shown.out.splitlines() if line.startswith("# ") and line[2].isdigit()]
    covered = []
    for line in table:
        first, _, last = line.split()[1].partition("-")
        covered += list(range(int(first), int(last or first) + 1))
    assert covered == list(range(40))


@pytest.mark.parametrize("extra, message", [
    ("[[phases]]\nstart_epoch = 4\naugment = []\n",
     "key 'phases.0.start_epoch' = 4 starts past the last epoch (train.epochs = 4"),
    ("[[phases]]\nstart_epoch = 2\naugment = []\n[[phases]]\nstart_epoch = 2\naugment = []\n",
     "key 'phases.1.start_epoch' = 2: phases start in increasing order"),
    ("[[phases]]\nstart_epoch = 2\n", "key 'phases.0': the phase starting at epoch 2 changes nothing"),
    ("[[phases]]\nstart_epoch = 2\noptimizer = { name = 'adma' }\n", "unknown optimizer 'adma' at key 'phases.0.optimizer.name'"),
])
def test_a_bad_phase_is_one_line_naming_the_file_and_key_and_writes_nothing(
        bench, synthetic_set, tiny_recipe, tmp_path, extra, message):
    recipe = tiny_recipe(tmp_path / "r.toml", synthetic_set, epochs=4, extra=extra)
    result = bench("run", recipe, "--results", tmp_path / "results")
    assert result.code == 2 and message in result.err and str(recipe) in result.err
    assert len(result.err.strip().splitlines()) == 1 and not (tmp_path / "results").exists()


class _RecordingSGD(torch.optim.SGD):
    """SGD with lr 0 (the model never changes) that records the gradient of every step."""

    def __init__(self, parameters):
        super().__init__(parameters, lr=0.0)
        self.gradients = []

    def step(self, closure=None):
        self.gradients.append(torch.cat([p.grad.flatten() for p in self.param_groups[0]["params"]]).clone())
        return super().step(closure)


def _accumulated_steps(accumulation: str) -> list[torch.Tensor]:
    """The gradients stepped in one epoch of 7 identical batches with ``train.accumulate = 4``."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 1, 3, padding=1)
    images = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8).repeat(7, 1, 1, 1)
    masks = (torch.rand(1, 1, 8, 8) > 0.5).to(torch.uint8).repeat(7, 1, 1, 1)
    samples = InMemorySamples(images, masks)
    loader = torch.utils.data.DataLoader(samples, batch_size=1, sampler=EpochSampler(7, 0, shuffle=False))
    optimizer = _RecordingSGD(model.parameters())
    setup = FoldSetup(
        fold=0, seed=0, epochs=1, accumulate=4, grad_clip=None, threshold=0.5, tta="none", average="logits",
        compute=CPU, fit=None, normalise=Normalise("none"), model=model, make_optimizer=None,
        multiplier=lambda epoch: 1.0, loss=torch.nn.BCEWithLogitsLoss(), callbacks=[], train_loader=loader,
        validation=None, oof=None, folder=None, accumulation=accumulation, optimizer=optimizer,
    )
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train_epoch(setup, TrainState(), 0, model, scaler, [0.0], _Silent())
    return optimizer.gradients


class _Silent:
    def step_done(self, loss):
        pass


def test_summed_accumulation_steps_after_the_first_batch_with_four_times_the_mean_gradient():
    mean, summed = _accumulated_steps("mean"), _accumulated_steps("sum_from_first")
    # mean: steps after batches 3 and 6 (the epoch's end); summed: after batch 0, then after 4 (1-4 summed),
    # and batches 5-6 are dropped
    assert [i for i in range(7) if steps_after(i, 4, 7, False)] == [3, 6]
    assert [i for i in range(7) if steps_after(i, 4, 7, True)] == [0, 4]
    assert len(mean) == 2 and len(summed) == 2
    one_batch = summed[0]  # every batch is the same: one batch's gradient is the mean of four
    assert torch.allclose(mean[0], one_batch, atol=1e-6)
    assert torch.allclose(summed[1], 4 * mean[0], atol=1e-5)
