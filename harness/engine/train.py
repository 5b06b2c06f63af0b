"""Training one fold: the loop, validation with out-of-fold maps, checkpoints, the NaN guard.

Resume works at epoch granularity: after every epoch the fold's resume checkpoint holds everything
the next epoch needs (weights, optimizer, scaler, callbacks, history, best so far), written
atomically. Because data order, augmentation and the global RNG are all seeded from ``(seed, fold,
epoch)``, an epoch replayed after a crash is the epoch that would have run anyway. A resume checkpoint
that cannot be read back (cut short outside our atomic writes) restarts the fold from its start, with a
warning. Once the fold's marker says it is finished, nothing resumes it any more, so the resume
checkpoint is deleted: with the optimizer's moments it is three times the size of the best weights,
and a tuning study of many runs would otherwise fill the disk.

Each epoch's validation writes its maps into the run's out-of-fold store, so when the last epoch is
the best one (the usual case) the store is already right; otherwise the best weights predict the
validation images once more at the end of the fold. A budgeted run (``train.validate_images``)
validates a fixed sample of the held-out images after each epoch, to choose the best epoch at a cost
that does not grow with the data, and predicts the whole held-out fold once, at the end.
"""

from __future__ import annotations

import math
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from harness.data.geometry import Fit
from harness.data.loading import Normalise, sample_seed
from harness.data.tiling import Tiling
from harness.engine import distributed
from harness.engine.device import Compute
from harness.engine.metrics import dice
from harness.engine.predict import predict_loader
from harness.errors import BenchError
from harness.io import atomic_write, atomic_write_json
from harness.runs.folder import FoldFolder, UnreadableCheckpoint
from harness.runs.probabilities import ProbabilityMaps, binarise, quantise


class TrainingStopped(BenchError):
    """The loss became NaN or infinite; the reason is recorded in the fold's failure.json."""


class Reporter(Protocol):
    """What the training loop tells the user; ``harness.engine.progress`` implements it."""

    def fold_started(self, fold: int, epochs: int, steps_per_epoch: int, first_epoch: int) -> None: ...
    def step_done(self, loss: float) -> None: ...
    def warn(self, message: str) -> None: ...
    def epoch_done(self, fold: int, record: dict[str, float]) -> None: ...


@dataclass
class Validation:
    """Held-out images to predict and score: the whole fold, or the sample validated every epoch."""

    loader: torch.utils.data.DataLoader
    ids: Sequence[str]
    groups: Sequence[str]  # each image's group (its car in Carvana), written beside its Dice
    shapes: Sequence[tuple[int, int]]
    mask: Callable[[int], np.ndarray]  # the ground truth of the loader's index-th image


@dataclass
class FoldSetup:
    """Everything one fold needs, built by ``harness.engine.run``.

    ``optimizer`` is the optimizer in force: ``train_fold`` builds it with ``make_optimizer(epoch,
    parameters)`` at the first epoch and again at every epoch where ``builds_optimizer(epoch)`` says a
    phase starts one (``harness.recipe.phases``).
    """

    fold: int
    seed: int
    epochs: int
    accumulate: int
    grad_clip: float | None
    threshold: float
    tta: str
    average: str
    compute: Compute
    fit: Fit
    normalise: Normalise
    model: torch.nn.Module
    make_optimizer: Callable[[int, Any], torch.optim.Optimizer]
    multiplier: Callable[[float], float]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    callbacks: list[Any]
    train_loader: torch.utils.data.DataLoader
    validation: Validation | None  # the whole held-out fold; None when the run only estimates its duration
    oof: ProbabilityMaps | None  # None with it: an estimate stops before validating
    folder: FoldFolder
    compile: bool = False
    tiling: Tiling | None = None
    epoch_validation: Validation | None = None  # a sample validated after each epoch; None: the whole fold
    builds_optimizer: Callable[[int], bool] = lambda epoch: False
    accumulation: str = "mean"  # or "sum_from_first" (train.accumulation)
    checkpoint: str = "best_val_dice"  # or "best_val_loss", "last" (train.checkpoint)
    optimizer: torch.optim.Optimizer | None = None
    ranks: distributed.Ranks | None = None  # the processes that train this fold together (--ddp)

    @property
    def main(self) -> bool:
        """This process validates and writes: the only one, or rank 0 of several (``distributed``)."""
        return self.ranks is None or self.ranks.main


@dataclass
class TrainState:
    epoch: int = 0  # the next epoch to run
    step: int = 0
    best_score: float = -math.inf  # of train.checkpoint's rule, higher is better
    best_epoch: int = -1
    oof_epoch: int = -1  # the epoch whose predictions of the whole fold the out-of-fold store holds
    oof_dice: float = -1.0  # their mean Dice
    train_seconds: float = 0.0
    train_images: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def train_fold(setup: FoldSetup, reporter: Reporter) -> dict[str, Any]:
    """Train (or finish training) one fold; return its summary, also written to ``fold.json``."""
    compute, model = setup.compute, setup.model
    model.to(compute.device, memory_format=compute.memory_format)
    setup.normalise.to(compute.device)
    scaler = torch.amp.GradScaler(compute.device.type, enabled=compute.precision == "fp16")
    state, saved = _read_resume(setup, reporter)
    # the optimizer that wrote the resume checkpoint: the one in force at the last finished epoch
    base_lrs = _build_optimizer(setup, max(state.epoch - 1, 0))
    if saved is not None:
        _restore(setup, scaler, saved)
    trained = model if setup.ranks is None else distributed.wrap(model, compute.device)
    trained = torch.compile(trained) if setup.compile else trained
    if setup.main:
        reporter.fold_started(setup.fold, setup.epochs, len(setup.train_loader), state.epoch)

    for epoch in range(state.epoch, setup.epochs):
        started = time.perf_counter()
        if epoch > 0 and setup.builds_optimizer(epoch):
            base_lrs = _build_optimizer(setup, epoch)
        losses = train_epoch(setup, state, epoch, trained, scaler, base_lrs, reporter)
        if not setup.main:  # rank 0 validates and writes; the others go on to the next epoch's first step
            state.epoch = epoch + 1
            continue
        model.eval()
        record = {"epoch": epoch, "lr": base_lrs[0] * setup.multiplier(epoch), "train_loss": float(np.mean(losses))}
        record.update(_validate(model, setup, setup.epoch_validation or setup.validation))
        record["seconds"] = round(time.perf_counter() - started, 3)
        # where the curve stands in the budget: optimizer steps and training seconds so far
        record.update(step=state.step, train_seconds=round(state.train_seconds, 3))
        state.history.append(record)
        if setup.epoch_validation is None:
            state.oof_epoch, state.oof_dice = epoch, record["val_dice"]
        score = checkpoint_score(setup.checkpoint, record)
        if score > state.best_score:
            state.best_score, state.best_epoch = score, epoch
            _save(setup.folder.best, {"model": model.state_dict(), "epoch": epoch})
        state.epoch = epoch + 1
        _checkpoint(setup, scaler, state)
        reporter.epoch_done(setup.fold, record)

    if not setup.main:
        setup.ranks.barrier()  # until rank 0 has written the fold's marker
        return {}
    if state.oof_epoch != state.best_epoch:
        model.load_state_dict(setup.folder.read_checkpoint(setup.folder.best)["model"])
        model.eval()
        state.oof_dice = _validate(model, setup, setup.validation)["val_dice"]
        state.oof_epoch = state.best_epoch
    summary = _finish(setup, state, scaler)
    if setup.ranks is not None:
        setup.ranks.barrier()
    return summary


def checkpoint_score(rule: str, record: dict[str, float]) -> float:
    """How good an epoch is under ``train.checkpoint``, higher better: a later epoch always wins under 'last'."""
    if rule == "best_val_dice":
        return record["val_dice"]
    if rule == "best_val_loss":
        return -record["val_loss"]
    return record["epoch"]


def _build_optimizer(setup: FoldSetup, epoch: int) -> list[float]:
    """Put the optimizer of ``epoch``'s phase, freshly built, in force; return its base lrs (the lrs
    it was built with, which the schedule multiplies)."""
    setup.optimizer = setup.make_optimizer(epoch, setup.model.parameters())
    return [group["lr"] for group in setup.optimizer.param_groups]


def train_epoch(setup: FoldSetup, state: TrainState, epoch: int, trained: torch.nn.Module, scaler,
                base_lrs: list[float], reporter: Reporter) -> list[float]:
    """One pass over the training loader; returns the per-step losses.

    This is the hot loop: per step it sets the learning rate, moves and normalises the batch, runs
    forward and backward, and steps the optimizer; nothing else (``bench benchmark`` compares it with
    a bare PyTorch loop). Gradients left from the last epoch (``sum_from_first`` drops them) are
    cleared first.
    """
    compute, model = setup.compute, setup.model
    steps_per_epoch = len(setup.train_loader)
    setup.train_loader.sampler.epoch = epoch
    torch.manual_seed(sample_seed(setup.seed, setup.fold, epoch))
    summed = setup.accumulation == "sum_from_first"
    started, losses = time.perf_counter(), []
    model.train()
    setup.optimizer.zero_grad(set_to_none=True)
    for index, (images, masks) in enumerate(setup.train_loader):
        lr_factor = setup.multiplier(epoch + index / steps_per_epoch)
        for group, base in zip(setup.optimizer.param_groups, base_lrs):
            group["lr"] = base * lr_factor
        images = setup.normalise(images.to(compute.device, non_blocking=True), compute.memory_format)
        masks = masks.to(compute.device, non_blocking=True).float()
        loss = _backward(trained, setup, scaler, images, masks, 1 if summed else setup.accumulate)
        if setup.ranks is not None:  # the whole batch's loss, the same on every rank (and for the NaN check)
            loss = setup.ranks.mean(loss)
        losses.append(loss)
        state.train_images += len(images) * (1 if setup.ranks is None else setup.ranks.world)
        if not math.isfinite(loss):
            _stop(setup, epoch, index, loss)
        if steps_after(index, setup.accumulate, steps_per_epoch, summed):
            _optimizer_step(model, setup, scaler)
            state.step += 1
            for callback in setup.callbacks:
                replay = getattr(callback, "after_train_step", lambda *_: None)((images, masks), loss, state.step)
                if replay is not None:
                    _backward(trained, setup, scaler, *replay, accumulate=1)
                    _optimizer_step(model, setup, scaler)
        if setup.main:
            reporter.step_done(loss)
    state.train_seconds += time.perf_counter() - started
    return losses


def steps_after(index: int, accumulate: int, batches: int, summed: bool) -> bool:
    """Whether the optimizer steps after batch ``index`` of an epoch of ``batches``.

    Averaged accumulation steps after every ``accumulate`` batches and after the last one; artsiom's
    summed accumulation (``run_train.py:58-64``) steps after batches 0, k, 2k, ... (the first step
    after one batch) and leaves what follows the last of them unstepped.
    """
    if summed:
        return index % accumulate == 0
    return (index + 1) % accumulate == 0 or index + 1 == batches


def _backward(model, setup: FoldSetup, scaler, images, masks, accumulate: int) -> float:
    with setup.compute.autocast():
        logits = model(images)
    loss = setup.loss(logits.float(), masks)
    scaler.scale(loss / accumulate).backward()
    return loss.item()


def _optimizer_step(model: torch.nn.Module, setup: FoldSetup, scaler) -> None:
    if setup.grad_clip is not None:
        scaler.unscale_(setup.optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), setup.grad_clip)
    scaler.step(setup.optimizer)
    scaler.update()
    setup.optimizer.zero_grad(set_to_none=True)


def _validate(model: torch.nn.Module, setup: FoldSetup, validation: Validation) -> dict[str, float]:
    """Predict held-out images into the out-of-fold store; per-image Dice on the stored maps, and the
    recipe's own loss.

    The loss is taken on each image at its own size, from its predicted map (TTA included) turned
    back into logits, and averaged over images: the same figure whatever the batch, the input fit or
    the device, which ``train.checkpoint = 'best_val_loss'`` compares from epoch to epoch.
    """
    started, scores, losses = time.perf_counter(), {}, []
    outputs = predict_loader([model], validation.loader, validation.shapes, setup.fit, setup.normalise,
                             setup.tta, setup.average, setup.compute, setup.tiling)
    for index, probability in outputs:
        image_id, truth = validation.ids[index], validation.mask(index)
        losses.append(_map_loss(setup, probability, truth))
        levels = quantise(probability.cpu().numpy())
        setup.oof.put(image_id, levels)
        scores[image_id] = dice(binarise(levels, setup.threshold), truth)
    seconds = time.perf_counter() - started
    _write_per_image(setup.folder.per_image_last, scores, dict(zip(validation.ids, validation.groups)))
    return {
        "val_dice": float(np.mean(list(scores.values()))),
        "val_loss": float(np.mean(losses)),
        "val_images": len(scores),
        "val_images_per_s": round(len(scores) / max(seconds, 1e-9), 2),
    }


@torch.inference_mode()
def _map_loss(setup: FoldSetup, probability: torch.Tensor, truth: np.ndarray) -> float:
    """The recipe's loss of one predicted map (on the device) against its ground truth."""
    eps = torch.finfo(torch.float32).eps  # keeps the logits finite: |logit| <= 16
    logits = torch.logit(probability.float().clamp(eps, 1 - eps))[None, None]
    target = torch.from_numpy(truth).to(probability.device).float()[None, None]
    return setup.loss(logits, target).item()


def _write_per_image(path: Path, scores: dict[str, float], groups: dict[str, str]) -> None:
    lines = ["image,car,dice"] + [f"{image_id},{groups[image_id]},{score:.6f}" for image_id, score in scores.items()]
    atomic_write(path, lambda handle: handle.write(("\n".join(lines) + "\n").encode()))


def _save(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, lambda handle: torch.save(payload, handle))


def _checkpoint(setup: FoldSetup, scaler, state: TrainState) -> None:
    _save(setup.folder.last, {
        "model": setup.model.state_dict(),
        "optimizer": setup.optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "callbacks": [getattr(c, "state_dict", dict)() for c in setup.callbacks],
        "state": vars(state),
    })
    _write_history(setup.folder.history, state.history)


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    columns = list(history[0]) if history else []
    lines = [",".join(columns)] + [",".join(str(row[c]) for c in columns) for row in history]
    atomic_write(path, lambda handle: handle.write(("\n".join(lines) + "\n").encode()))


def _read_resume(setup: FoldSetup, reporter: Reporter) -> tuple[TrainState, dict | None]:
    """The fold's state and resume checkpoint, or a fresh state (and the initial seed) without one."""
    path = setup.folder.last
    saved = None
    if path.exists():
        try:
            saved = setup.folder.read_checkpoint(path)
        except UnreadableCheckpoint as error:
            reporter.warn(f"{error.path} cannot be read back; fold {setup.fold} starts again from its first epoch")
    if saved is not None:
        try:
            return TrainState(**saved["state"]), saved
        except TypeError:  # fields renamed since (best_dice became best_score)
            reporter.warn(f"{path} was written by an older segbench; fold {setup.fold} starts again from its "
                          "first epoch")
    torch.manual_seed(sample_seed(setup.seed, setup.fold))
    return TrainState(), None


def _restore(setup: FoldSetup, scaler, saved: dict) -> None:
    setup.model.load_state_dict(saved["model"])
    setup.optimizer.load_state_dict(saved["optimizer"])
    scaler.load_state_dict(saved["scaler"])
    for callback, callback_state in zip(setup.callbacks, saved["callbacks"]):
        if hasattr(callback, "load_state_dict"):
            callback.load_state_dict(callback_state)


def _stop(setup: FoldSetup, epoch: int, index: int, loss: float) -> None:
    reason = f"the loss became {loss} at epoch {epoch}, step {index} of fold {setup.fold}"
    if setup.main:
        atomic_write_json(setup.folder.failure, {"reason": reason, "epoch": epoch, "step": index, "loss": str(loss)})
    raise TrainingStopped(f"{reason}; training stopped (recorded in {setup.folder.failure}). "
                          "Lower optimizer.lr, set train.grad_clip, or use train.precision = 'fp32'")


def _finish(setup: FoldSetup, state: TrainState, scaler) -> dict[str, Any]:
    per_image = setup.folder.per_image_last.read_text()
    atomic_write(setup.folder.per_image, lambda handle: handle.write(per_image.encode()))
    summary = {
        "fold": setup.fold,
        "best_epoch": state.best_epoch,
        "checkpoint": setup.checkpoint,  # the rule that chose best_epoch
        "val_dice": state.oof_dice,  # the whole held-out fold, predicted by the best epoch's weights
        "epochs": len(state.history),
        "optimizer_steps": state.step,
        "train_images": len(setup.train_loader.dataset),
        "train_seconds": round(state.train_seconds, 3),
        "train_images_per_s": round(state.train_images / max(state.train_seconds, 1e-9), 2),
        "val_images_per_s": state.history[-1]["val_images_per_s"] if state.history else None,
        # folds of one run may train on several devices and hosts (--devices, --folds, --launcher)
        "device": setup.compute.describe(),
        "host": socket.gethostname(),
        "processes": 1 if setup.ranks is None else setup.ranks.world,  # --ddp: rank 0's device and host
    }
    if scaler.is_enabled():  # fp16: the loss scale the fold ended with (65536 at the start, halved on overflow)
        summary["grad_scale"] = scaler.get_scale()
    atomic_write_json(setup.folder.marker, summary)
    setup.folder.last.unlink(missing_ok=True)
    return summary
