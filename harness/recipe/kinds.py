"""The one table of component kinds: everything else about a kind derives from it.

A kind is registered by one hook (``harness.recipe.hookspecs``), named in recipes under one key (or
on the command line, for the ensemble's kinds), called with the harness's run-time arguments first,
and, when its factory is cheap and takes no run-time argument, built once when the recipe loads so
that a value the factory rejects is reported before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    name: str  # as recipes and messages say it
    hook: str
    recipe_key: str | None  # the recipe table (or list of tables) whose `name` picks the factory
    runtime_args: str  # what the harness passes before the recipe's parameters ("" for nothing)
    builds: str  # what the factory returns (the contract in hookspecs.py)
    built_at_load: bool


KINDS: tuple[Kind, ...] = (
    Kind("dataset", "bench_datasets", "data.source", "", "Path of a Carvana-layout folder", False),
    Kind("model", "bench_models", "model", "", "torch.nn.Module", False),
    Kind("loss", "bench_losses", "loss", "", "Loss", True),
    Kind("optimizer", "bench_optimizers", "optimizer", "the model's parameters", "torch.optim.Optimizer", False),
    Kind("schedule", "bench_schedules", "schedule", "", "Schedule", True),
    Kind("augmentation", "bench_augmentations", "augment", "", "albumentations transform", True),
    Kind("preprocessor", "bench_preprocessors", "preprocess", "", "albumentations transform", True),
    Kind("callback", "bench_callbacks", "callbacks", "", "callback object", True),
    Kind("merger", "bench_mergers", None, "", "Merge", False),  # bench ensemble --merger
    Kind("postprocessor", "bench_postprocessors", None, "", "PostProcess", False),  # bench ensemble --post
    Kind("tracker", "bench_trackers", None, "", "tracker object", False),  # bench run --track
)
BY_NAME: dict[str, Kind] = {kind.name: kind for kind in KINDS}
RECIPE_KEYS: dict[str, str] = {kind.recipe_key: kind.name for kind in KINDS if kind.recipe_key}
