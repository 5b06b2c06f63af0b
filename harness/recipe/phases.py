"""Training phases: from a given epoch on, a recipe may train with another optimizer or augmentation.

The seed recipes change course mid-run: alexander's configs all get a fresh Adam at epoch 23 (his
RMSprop config included), artsiom's VGG drops colour augmentation after epoch 15, and vladimir
builds a new Adam every epoch. A recipe states this with ``[[phases]]`` tables, each naming the
epoch it starts at and what it replaces; what a phase leaves out stays as it was. Everything here is
read from the recipe alone, so ``bench show`` prints the same epochs the engine trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from harness.recipe.schema import ComponentSpec, Recipe


@dataclass(frozen=True)
class Phase:
    """What trains from ``start`` until the next phase starts, and the recipe keys that say it."""

    start: int
    optimizer: ComponentSpec
    optimizer_key: str  # "optimizer" or "phases.N.optimizer"
    augment: tuple[ComponentSpec, ...]
    augment_key: str  # "augment" or "phases.N.augment"
    new_optimizer: bool  # the phase builds a fresh optimizer at its first epoch


def phases_of(recipe: Recipe) -> list[Phase]:
    """The recipe's phases in order, the first one (epoch 0) made of its top-level keys."""
    current = Phase(0, recipe.optimizer, "optimizer", tuple(recipe.augment), "augment", True)
    resolved = [current]
    for index, spec in enumerate(recipe.phases or []):
        key = f"phases.{index}"
        current = Phase(
            start=spec.start_epoch,
            optimizer=spec.optimizer or current.optimizer,
            optimizer_key=f"{key}.optimizer" if spec.optimizer else current.optimizer_key,
            augment=current.augment if spec.augment is None else tuple(spec.augment),
            augment_key=current.augment_key if spec.augment is None else f"{key}.augment",
            new_optimizer=spec.optimizer is not None,
        )
        resolved.append(current)
    return resolved


def phase_at(phases: list[Phase], epoch: int) -> Phase:
    """The phase in force at ``epoch``."""
    return [phase for phase in phases if phase.start <= epoch][-1]


def builds_optimizer(recipe: Recipe, phases: list[Phase], epoch: int) -> bool:
    """Whether ``epoch`` starts with a freshly built optimizer (empty moments)."""
    if recipe.train.new_optimizer_every_epoch:  # unset: false
        return True
    return any(phase.start == epoch and phase.new_optimizer for phase in phases)


def epoch_table(recipe: Recipe, multiplier: Callable[[float], float],
                base_lr: Callable[[Phase], float]) -> list[dict]:
    """One row per epoch: its phase, learning rate, and whether it starts with a new optimizer.

    ``multiplier`` is the recipe's built schedule and ``base_lr`` the lr of a phase's optimizer as
    built; the row's lr is their product at the epoch's first step (per-epoch schedules hold it for
    the whole epoch), the lr the engine sets.
    """
    phases = phases_of(recipe)
    rows = []
    for epoch in range(recipe.train.epochs):
        phase = phase_at(phases, epoch)
        rows.append({
            "epoch": epoch,
            "phase": phases.index(phase),
            "optimizer": phase.optimizer.name,
            "lr": base_lr(phase) * multiplier(epoch),
            "new_optimizer": builds_optimizer(recipe, phases, epoch),
            "augment": [spec.name for spec in phase.augment],
        })
    return rows
