"""The engine's training loop against a bare PyTorch loop: the harness overhead, as a ratio.

Same model, optimizer, loss, batches of in-memory data, precision and memory format. The bare loop
gets ready-made normalised float tensors; the engine's ``train_epoch`` gets uint8 samples through its
DataLoader and sampler, converts and normalises them, sets the learning rate, checks the loss and
reports progress: everything it does per step in a real run.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np
import torch

from harness.data.loading import EpochSampler, Normalise
from harness.engine.device import Compute
from harness.engine.timing import time_steps, train_step
from harness.engine.train import FoldSetup, TrainState, train_epoch


class InMemorySamples(torch.utils.data.Dataset):
    """uint8 samples already decoded and fitted, addressed by the engine's ``(epoch, draw, index)`` keys."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor):
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        *_, index = key
        return self.images[index], self.masks[index]


class _Silent:
    def fold_started(self, *args: Any) -> None: ...
    def step_done(self, loss: float) -> None: ...
    def epoch_done(self, *args: Any) -> None: ...
    def warn(self, message: str) -> None: ...


def random_samples(count: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and an elliptical 0/1 mask: enough for timing, the values do not matter."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, height, width), dtype=torch.uint8, generator=generator)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ellipse = (((yy - height / 2) / (height / 3)) ** 2 + ((xx - width / 2) / (width / 3)) ** 2 < 1)
    return images, ellipse.to(torch.uint8).expand(count, 1, height, width).clone()


def bare_loop(model, optimizer, loss, batches, compute: Compute) -> None:
    model.train()
    for images, masks in batches:
        train_step(model, optimizer, loss, images, masks, compute)


def bare_epoch(model, make_optimizer, loss, images, masks, batch: int, compute: Compute) -> Callable[[], None]:
    model = copy.deepcopy(model).to(compute.device, memory_format=compute.memory_format)
    optimizer = make_optimizer(model.parameters())
    normalise = Normalise("imagenet").to(compute.device)
    batches = [
        (normalise(images[i : i + batch].to(compute.device), compute.memory_format),
         masks[i : i + batch].to(compute.device).float())
        for i in range(0, len(images), batch)
    ]
    return lambda: bare_loop(model, optimizer, loss, batches, compute)


def harness_epoch(model, make_optimizer, loss, images, masks, batch: int, compute: Compute) -> Callable[[], list]:
    model = copy.deepcopy(model).to(compute.device, memory_format=compute.memory_format)
    optimizer = make_optimizer(model.parameters())
    samples = InMemorySamples(images, masks)
    loader = torch.utils.data.DataLoader(samples, batch_size=batch, sampler=EpochSampler(len(samples), 0, shuffle=False))
    setup = FoldSetup(
        fold=0, seed=0, epochs=1, accumulate=1, grad_clip=None, threshold=0.5, tta="none", average="logits",
        compute=compute, fit=None, normalise=Normalise("imagenet"), model=model,
        make_optimizer=lambda epoch, parameters: optimizer, optimizer=optimizer,
        multiplier=lambda epoch: 1.0, loss=loss, callbacks=[], train_loader=loader, validation=None,
        oof=None, folder=None,
    )
    setup.normalise.to(compute.device)
    scaler = torch.amp.GradScaler(compute.device.type, enabled=compute.precision == "fp16")
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    return lambda: train_epoch(setup, TrainState(), 0, model, scaler, base_lrs, _Silent())


def overhead_ratio(model, make_optimizer, loss, compute: Compute, batch: int, height: int, width: int,
                   steps: int = 6, repeats: int = 3) -> dict[str, float]:
    """Median seconds of ``steps`` training steps, bare and through the engine, and their ratio.

    The two loops alternate (bare, engine, bare, ...) rather than running one after the other, so a
    machine that speeds up or slows down during the measurement (a shared VM, a CPU warming up)
    moves both alike: measured back to back, the ratio of the same loop swung from 0.85 to 1.13.
    """
    images, masks = random_samples(steps * batch, height, width)
    loops = {"bare": bare_epoch(model, make_optimizer, loss, images, masks, batch, compute),
             "harness": harness_epoch(model, make_optimizer, loss, images, masks, batch, compute)}
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    for name, loop in loops.items():
        time_steps(loop, compute.device, warmup=1, repeats=0)
    for _ in range(repeats):
        for name, loop in loops.items():
            seconds[name] += time_steps(loop, compute.device, warmup=0, repeats=1)
    bare_s, harness_s = float(np.median(seconds["bare"])), float(np.median(seconds["harness"]))
    return {"bare_seconds": round(bare_s, 4), "harness_seconds": round(harness_s, 4),
            "ratio": round(harness_s / bare_s, 4)}
