"""Harness overhead: the engine's training epoch against a bare PyTorch loop.

Same model (alexander's LinkNet-ResNet34), same batches of in-memory data (144x96 padded to 160x96,
batch 8), same precision and memory format (bf16 autocast, channels_last on a CPU). The bare loop gets
ready-made float tensors; the engine's ``train_epoch`` gets uint8 samples through its DataLoader and
sampler, converts and normalises them, sets the learning rate, checks the loss, calls callbacks and
reports progress. ``make bench`` times both; the ratio of their means is the harness overhead.
Under ``make test`` each runs once, as a test.
"""

from __future__ import annotations

import copy

import pytest
import torch

from harness.data import EpochSampler, Normalise
from harness.device import resolve_compute
from harness.train import FoldSetup, TrainState, train_epoch
from plugins.losses import bce_dice
from plugins.nets.smp_models import linknet

STEPS, BATCH, HEIGHT, WIDTH = 6, 8, 96, 160


class InMemory(torch.utils.data.Dataset):
    """uint8 samples already decoded and fitted, addressed like the engine's (epoch, index) keys."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor):
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        _, index = key
        return self.images[index], self.masks[index]


class Silent:
    def fold_started(self, *args) -> None: ...
    def step_done(self, loss: float) -> None: ...
    def epoch_done(self, *args) -> None: ...


@pytest.fixture(scope="module")
def workload():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (STEPS * BATCH, 3, HEIGHT, WIDTH), dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.arange(HEIGHT), torch.arange(WIDTH), indexing="ij")
    ellipse = (((yy - HEIGHT / 2) / 30) ** 2 + ((xx - WIDTH / 2) / 60) ** 2 < 1).to(torch.uint8)
    masks = ellipse.expand(STEPS * BATCH, 1, HEIGHT, WIDTH).clone()
    compute = resolve_compute("cpu", "auto", "auto")
    model = linknet(encoder="resnet34").to(memory_format=compute.memory_format)
    return images, masks, compute, model


def bare_loop(model, optimizer, loss, batches, compute) -> None:
    model.train()
    for images, masks in batches:
        with compute.autocast():
            logits = model(images)
        value = loss(logits.float(), masks)
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.benchmark(group="harness-overhead")
def test_bare_pytorch_loop(benchmark, workload):
    images, masks, compute, model = workload
    model = copy.deepcopy(model)
    normalise = Normalise("imagenet")
    batches = [
        (normalise(images[i : i + BATCH]).contiguous(memory_format=compute.memory_format), masks[i : i + BATCH].float())
        for i in range(0, len(images), BATCH)
    ]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    benchmark.pedantic(bare_loop, args=(model, optimizer, bce_dice(), batches, compute), rounds=3, warmup_rounds=1)


@pytest.mark.benchmark(group="harness-overhead")
def test_harness_train_epoch(benchmark, workload):
    images, masks, compute, model = workload
    model = copy.deepcopy(model)
    samples = InMemory(images, masks)
    loader = torch.utils.data.DataLoader(samples, batch_size=BATCH, sampler=EpochSampler(len(samples), 0, shuffle=False))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    setup = FoldSetup(
        fold=0, seed=0, epochs=1, accumulate=1, grad_clip=None, threshold=0.5, tta="none", average="logits",
        compute=compute, fit=None, normalise=Normalise("imagenet"), model=model, optimizer=optimizer,
        multiplier=lambda epoch: 1.0, loss=bce_dice(), callbacks=[], train_loader=loader, val_loader=None,
        val_ids=[], val_shapes=[], val_mask=None, oof=None, folder=None,
    )
    state, scaler = TrainState(), torch.amp.GradScaler("cpu", enabled=False)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    losses = benchmark.pedantic(
        train_epoch, args=(setup, state, 0, model, scaler, base_lrs, Silent()), rounds=3, warmup_rounds=1
    )
    assert len(losses) == STEPS and all(loss == loss for loss in losses)
