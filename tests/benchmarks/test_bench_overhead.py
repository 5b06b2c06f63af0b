"""Harness overhead: the engine's training epoch against a bare PyTorch loop (see harness.speed.overhead).

Alexander's LinkNet-ResNet34 at 160x96, batch 8, fp32 on a CPU (fp32 because bf16 is emulated,
and 10x slower, on a CPU without native bf16). ``make bench`` times both; the ratio of their means
is the overhead. Under ``make test`` each runs once, as a test.
"""

from __future__ import annotations

import pytest
import torch

from harness.engine.device import Compute
from harness.speed.overhead import bare_epoch, harness_epoch, random_samples
from plugins.components.losses import bce_dice
from plugins.components.nets.smp_models import linknet

STEPS, BATCH, HEIGHT, WIDTH = 6, 8, 96, 160


@pytest.fixture(scope="module")
def workload():
    torch.manual_seed(0)
    images, masks = random_samples(STEPS * BATCH, HEIGHT, WIDTH)
    return images, masks, Compute(torch.device("cpu"), "fp32", channels_last=False), linknet(encoder="resnet34")


def adam(params):
    return torch.optim.Adam(params, lr=1e-4)


@pytest.mark.benchmark(group="harness-overhead")
def test_bare_pytorch_loop(benchmark, workload):
    images, masks, compute, model = workload
    benchmark.pedantic(bare_epoch(model, adam, bce_dice(), images, masks, BATCH, compute), rounds=3, warmup_rounds=1)


@pytest.mark.benchmark(group="harness-overhead")
def test_harness_train_epoch(benchmark, workload):
    images, masks, compute, model = workload
    losses = benchmark.pedantic(harness_epoch(model, adam, bce_dice(), images, masks, BATCH, compute),
                                rounds=3, warmup_rounds=1)
    assert len(losses) == STEPS and all(loss == loss for loss in losses)
