"""Hard negative mining by batch replay, alexander's recipe, as a factory for ``bench_callbacks``.

The pixel-level variant (BCE over the hardest pixels only) is a loss: ``plugins.components.losses.top_k_bce``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def _detached_copy(batch: Any) -> Any:
    """A copy of ``batch`` whose tensors are detached clones (dicts, lists, tuples walked through).

    A copy, not a reference: the engine or the DataLoader may reuse or modify a batch's buffers in
    place after the step, and the replay must see the batch exactly as it was when its loss was seen.
    """
    if isinstance(batch, torch.Tensor):
        return batch.detach().clone()
    if isinstance(batch, Mapping):
        return type(batch)({key: _detached_copy(value) for key, value in batch.items()})
    if isinstance(batch, (list, tuple)):
        return type(batch)(_detached_copy(value) for value in batch)
    return batch


class HardNegativeMining:
    """Remembers the highest-loss batch since the last replay and replays it every ``every`` steps.

    alexander's LinkNet recipe: every 10 iterations, one extra optimisation step on the worst batch
    of those 10, so rare hard views (dark cars, thin antennas) are seen more often without changing
    the sampler. Steps are counted by calls, so the base of ``step`` (0 or 1) does not matter; a call
    that reports the replay step itself (the very batch just returned) is ignored.
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self._steps = 0
        self._worst_loss = float("-inf")
        self._worst_batch: Any = None
        self._replayed: Any = None

    def after_train_step(self, batch: Any, loss: float, step: int) -> Any | None:
        """Record ``batch`` if it is the worst so far; every ``every`` calls, return the worst."""
        replayed, self._replayed = self._replayed, None
        if batch is replayed:
            return None
        self._steps += 1
        if loss > self._worst_loss:
            self._worst_loss = loss
            self._worst_batch = _detached_copy(batch)
        if self._steps < self.every:
            return None
        replay = self._worst_batch
        self._steps, self._worst_loss, self._worst_batch = 0, float("-inf"), None
        self._replayed = replay
        return replay

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to replay the same batch as an uninterrupted one."""
        return {"steps": self._steps, "worst_loss": self._worst_loss, "worst_batch": self._worst_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._steps, self._worst_loss = state["steps"], state["worst_loss"]
        self._worst_batch = state["worst_batch"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(every={self.every})"


def hard_negative_mining(*, every: int = 10) -> HardNegativeMining:
    """alexander's batch replay: one extra step on the highest-loss batch of every ``every`` steps."""
    if every < 1:
        raise ValueError(f"every must be a positive number of steps, got {every}")
    return HardNegativeMining(every)
