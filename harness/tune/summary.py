"""What ``bench tune`` shows and writes when its workers stop: the trials, the parameters that
mattered, and the best trial as a recipe."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState
from rich.console import Console

from harness.tables import print_table
from harness.tune import study as studies
from harness.tune.search_space import SearchSpace

MIN_TRIALS_FOR_IMPORTANCE = 4


def summarise(study: optuna.Study, space: SearchSpace, place: studies.StudyPlace, tuned_dir: Path, command: str,
              console: Console, wide: bool = False) -> Path | None:
    """Print the trials and parameter importances; write trials.csv and the best trial as a recipe.
    Their tables split to fit the console unless ``wide`` (``harness.tables``)."""
    table = studies.write_trials_csv(study, place.folder)
    _print_trials(table, place.name, space.spec.objectives, console, wide)
    _print_importances(study, console, wide)
    best = studies.best_trials(study)
    if not best:
        console.print("no trial has completed yet; nothing to write", highlight=False)
        return None
    out = tuned_dir / f"{place.name}.toml"
    studies.write_tuned_recipe(space, best[0], out, place.name, command)
    first = space.spec.objectives[0]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    baseline = next((trial for trial in complete if trial.user_attrs.get("baseline")), None)
    versus = f" (the recipe's own values: {baseline.values[0]:.4f})" if baseline else ""
    front = f"; Pareto front: trials {', '.join(str(t.number) for t in best)}" if len(best) > 1 else ""
    console.print(f"best trial {best[0].number}: {first} {best[0].values[0]:.4f}{versus}{front}\n"
                  f"wrote {out}: bench run {out}", highlight=False)
    return out


def _print_trials(table: pd.DataFrame, name: str, objectives: Sequence[str], console: Console, wide: bool) -> None:
    """The trials as trials.csv has them, less the run folder names (long hashes; they are in the file);
    a complete trial's partial Dice is its final Dice, so it is shown for unfinished trials only.
    A trial is read for its state and objective values: those stay in the first table."""
    shown = table.drop(columns=["run"])
    if "partial_dice" in shown:
        shown["partial_dice"] = shown["partial_dice"].where(shown["state"] != "complete")
    headers = [column.removeprefix("param:") for column in shown.columns]
    rows = [[_cell(column, value) for column, value in row.items()] for row in shown.to_dict("records")]
    print_table(console, f"study {name} (run folders in trials.csv)", headers, rows, key=("trial",),
                decisive=("state", *objectives), left=("note",), wide=wide)


def _cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if column == "seconds":
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.4g}" if column.startswith("param:") else f"{value:.4f}"
    return str(value)


def _print_importances(study: optuna.Study, console: Console, wide: bool) -> None:
    """PED-ANOVA importances (Optuna's default); they say nothing until a few trials have completed."""
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if complete < MIN_TRIALS_FOR_IMPORTANCE:
        console.print(f"parameter importances: not yet ({complete} complete trials; they need "
                      f"{MIN_TRIALS_FOR_IMPORTANCE})", highlight=False)
        return
    try:
        with warnings.catch_warnings():  # "importances will be equal" when trials barely differ: the table shows it
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as error:
        console.print(f"parameter importances: not yet ({error})", highlight=False)
        return
    if not importances:
        return
    print_table(console, "parameter importances (PED-ANOVA)", ("parameter", "importance"),
                [[key, f"{value:.3f}"] for key, value in importances.items()], key=("parameter",),
                decisive=("importance",), left=("parameter",), wide=wide)
