"""The ``[tune]`` table of a recipe: what ``bench tune`` searches, for how long, and how it judges.

    [tune]
    trials = 20                  # the study's total, across restarts and workers
    timeout_minutes = 60         # optional: no new trial starts after this, per `bench tune`
    sampler = "tpe"              # tpe, random, gp or nsga2
    pruner = "wilcoxon"          # none, median or wilcoxon; or a table: { name = "wilcoxon", p_threshold = 0.2 }
    objective = "oof_dice"       # or ["oof_dice", "train_images_per_s"] for a Pareto front
    [tune.space]                 # any recipe key, dotted as in --set
    "optimizer.lr" = { type = "float", low = 3e-4, high = 3e-3, log = true }
    "callbacks.0.every" = { type = "int", low = 5, high = 20 }
    "loss.dice_weight" = { type = "categorical", choices = [0.5, 1.0, 2.0] }

This module is the schema and the translation into Optuna objects; how a trial's values become a
recipe is ``harness.tune.search_space``, and the study loop is ``harness.tune.tune``.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, ClassVar, Literal, Union

import numpy as np
import optuna
import pydantic
from pydantic import BaseModel, ConfigDict, Field

# summary.json fields a study may optimise; all are maximised.
OBJECTIVES = ("oof_dice", "train_images_per_s", "inference_images_per_s")
Objective = Literal["oof_dice", "train_images_per_s", "inference_images_per_s"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Range(_Strict):
    """Bounds, both included, sampled uniformly or on a log scale, or on a grid of ``step``."""

    low: float
    high: float
    log: bool = False

    @pydantic.model_validator(mode="after")
    def _check(self) -> _Range:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"expected low < high, got low {self.low} and high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log = true needs low > 0, got {self.low}")
        if self.log and self.stepped:
            raise ValueError("log and step cannot be combined (Optuna samples one or the other)")
        return self

    @property
    def stepped(self) -> bool:
        raise NotImplementedError

    def encode(self, value: Any) -> Any:
        return value

    def probes(self) -> list[Any]:
        """Values checked against the recipe schema before any trial runs."""
        return [self.low, self.high]


class FloatRange(_Range):
    type: Literal["float"]
    step: Annotated[float, Field(gt=0)] | None = None

    @property
    def stepped(self) -> bool:
        return self.step is not None

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def describe(self) -> str:
        return f"{'log-' if self.log else ''}uniform [{self.low:g}, {self.high:g}]"


class IntRange(_Range):
    type: Literal["int"]
    low: int
    high: int
    step: Annotated[int, Field(ge=1)] = 1

    @property
    def stepped(self) -> bool:
        return self.step != 1

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high
                and (value - self.low) % self.step == 0)

    def describe(self) -> str:
        return f"integers {self.low}..{self.high}" + (f" step {self.step}" if self.step != 1 else "")


class Choice(_Strict):
    """Any TOML values; lists and tables (an input size, a whole component) are stored by Optuna as
    their JSON text, since its categorical parameters must be plain numbers, strings or booleans."""

    type: Literal["categorical"]
    choices: Annotated[list[Any], Field(min_length=2)]

    @pydantic.model_validator(mode="after")
    def _check(self) -> Choice:
        encoded = [self.encode(choice) for choice in self.choices]
        if len(set(map(json.dumps, encoded))) != len(encoded):
            raise ValueError(f"choices {self.choices}: each choice once")
        return self

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.CategoricalDistribution([self.encode(c) for c in self.choices])

    @staticmethod
    def encode(value: Any) -> Any:
        return value if isinstance(value, (bool, int, float, str)) else json.dumps(value)

    def contains(self, value: Any) -> bool:
        return any(json.dumps(value) == json.dumps(choice) for choice in self.choices)

    def describe(self) -> str:
        return "one of " + ", ".join(json.dumps(choice) for choice in self.choices)

    def probes(self) -> list[Any]:
        return list(self.choices)


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def decode_params(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's stored params as recipe values (JSON text of list and table choices parsed back)."""
    return {key: _decode(value) for key, value in params.items()}


Param = Annotated[Union[FloatRange, IntRange, Choice], Field(discriminator="type")]


class NoPruning(_Strict):
    name: Literal["none"]
    reports: ClassVar[str | None] = None  # what a trial reports as it trains (harness.tune.tune.PruningMonitor)

    def build(self) -> optuna.pruners.BasePruner:
        return optuna.pruners.NopPruner()


class MedianPruning(_Strict):
    """Stop a trial whose validation Dice, at the same fold and epoch, is below the median of the
    earlier trials'. Reports every epoch."""

    name: Literal["median"]
    startup_trials: Annotated[int, Field(ge=0)] = 5
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    reports: ClassVar[str] = "epoch"

    def build(self) -> optuna.pruners.BasePruner:
        return optuna.pruners.MedianPruner(n_startup_trials=self.startup_trials, n_warmup_steps=self.warmup_epochs)


class WilcoxonPruning(_Strict):
    """After each fold, compare the trial with the best trial car by car (each car's mean Dice is one
    paired instance: views of one car are not independent) and stop it when the Wilcoxon
    signed-rank test says it is worse at ``p_threshold``. Reports every fold; no epoch-level guess."""

    name: Literal["wilcoxon"]
    p_threshold: Annotated[float, Field(gt=0, lt=1)] = 0.1
    startup_cars: Annotated[int, Field(ge=2)] = 2
    reports: ClassVar[str] = "fold"

    def build(self) -> optuna.pruners.BasePruner:
        return optuna.pruners.WilcoxonPruner(p_threshold=self.p_threshold, n_startup_steps=self.startup_cars)


Pruning = Annotated[Union[NoPruning, MedianPruning, WilcoxonPruning], Field(discriminator="name")]


class TuneSpec(_Strict):
    trials: Annotated[int, Field(ge=1)] | None = None
    timeout_minutes: Annotated[float, Field(gt=0)] | None = None
    sampler: Literal["tpe", "random", "gp", "nsga2"] = "tpe"
    pruner: Pruning = NoPruning(name="none")
    objective: Objective | Annotated[list[Objective], Field(min_length=1)] = "oof_dice"
    seed: int = 0
    space: Annotated[dict[str, Param], Field(min_length=1)]

    @pydantic.field_validator("pruner", mode="before")
    @classmethod
    def _pruner_by_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @pydantic.model_validator(mode="after")
    def _check(self) -> TuneSpec:
        if self.trials is None and self.timeout_minutes is None:
            raise ValueError("give tune.trials, tune.timeout_minutes, or both")
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objective {self.objective}: each objective once")
        if len(self.objectives) > 1 and self.pruner.name != "none":
            raise ValueError(f"pruner {self.pruner.name!r} with {len(self.objectives)} objectives: "
                             "Optuna cannot prune multi-objective studies; use pruner = \"none\"")
        for key in self.space:
            if key.split(".")[0] in ("name", "tune") or not all(key.split(".")):
                raise ValueError(f"space key {key!r}: expected a recipe key like optimizer.lr (not name or tune.*)")
        return self

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """What ``Study.ask`` samples: every key of the space at once."""
        return {key: param.distribution() for key, param in self.space.items()}

    @property
    def objectives(self) -> tuple[str, ...]:
        return (self.objective,) if isinstance(self.objective, str) else tuple(self.objective)

    def sampler_for(self, worker: int, trials_so_far: int) -> optuna.samplers.BaseSampler:
        """A seed of its own for each worker and each start: parallel workers seeded alike would
        propose the same trials, and so would a worker started again on a resumed study."""
        seed = int(np.random.SeedSequence([self.seed, worker, trials_so_far]).generate_state(1)[0])
        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if self.sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        if self.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        # constant_liar: a running trial counts as a bad result, so parallel workers spread out
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
