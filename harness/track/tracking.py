"""A run's trackers, fed from the run: its recipe when it starts, every epoch of every fold, its summary,
files and report page when it ends.

``Tracking`` is a run monitor (``harness.engine.run.RunMonitor``): in the process that trains, each
epoch reaches the trackers as it ends. Whatever was not sent live (folds trained by workers of
``--devices``, ``--launcher`` or ``--ddp``, folds finished before a resume, a run found complete) is
sent from the fold's ``history.csv`` when the fold is reported done or when the run ends, each epoch
once: ``RUN/tracking.json`` (owned by ``harness.runs.folder``) keeps, per tracker, what identifies
its tracked run and the last epoch sent of each fold, so a resumed run continues the same tracked run.

Tracking never stops a run: a tracker that raises is switched off with one line, and the run goes on.
"""

from __future__ import annotations

import numbers
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.markup import escape

from harness.errors import BenchError
from harness.io import atomic_write_json
from harness.recipe.components import build_component, describe_exception
from harness.recipe.hookspecs import TrackedRun
from harness.recipe.plugins import Plugins
from harness.recipe.schema import Recipe
from harness.runs.folder import PSEUDO_STAGE, FoldFolder, RunFolder, open_run, read_json

SUMMARY_NUMBERS = ("oof_dice", "fold_dice_mean", "fold_dice_std", "train_seconds", "train_images_per_s",
                   "inference_images_per_s", "parameters")


def trackers(plugins: Plugins, names: list[str]) -> dict[str, Any]:
    """The trackers ``--track`` names, built; an unknown name or a missing library is one line."""
    return {name: build_component(plugins, "tracker", name, {}, f"--track {name}") for name in dict.fromkeys(names)}


class Tracking:
    """The trackers of one run folder; a ``RunMonitor`` for the run that trains it."""

    def __init__(self, built: dict[str, Any], folder: RunFolder, recipe: Recipe, console: Console,
                 tags: dict[str, str] | None = None):
        self.trackers, self.folder, self.recipe, self.console = dict(built), folder, recipe, console
        self.tags = {"recipe": recipe.name, **(tags or {})}
        self.kept: dict[str, dict[str, Any]] = {}  # tracker -> {"state": ..., "sent": {fold: last epoch}}
        self.saved: dict[str, Any] = {}  # tracking.json as found: a tracker off this time keeps its run for the next
        self.started = False

    # -- the run monitor's calls -----------------------------------------------------------------

    def estimated(self, seconds: float) -> None:
        self._start()

    def epoch_done(self, fold: int, record: dict[str, float]) -> None:
        self._start()
        self._send_epochs(fold, [record])

    def fold_done(self, fold: int, folder: FoldFolder) -> None:
        self._start()
        self._send_epochs(fold, _history(folder))

    # -- the caller's ----------------------------------------------------------------------------

    def finish(self) -> None:
        """The run is complete: every epoch not sent yet (a pseudo-label stage's as ``pseudo/fold{K}/...``),
        the summary of the stage it is judged by, the files and the report page."""
        self._start()
        stage = self.folder.scored()
        for trained, prefix in ((self.folder, ""), (self.folder.pseudo, f"{PSEUDO_STAGE}/")):
            for fold in trained.folds():
                self._send_epochs(fold.index, _history(fold), prefix)
        summary = stage.read_summary()
        numbers = {key: float(summary[key]) for key in SUMMARY_NUMBERS if isinstance(summary.get(key), (int, float))}
        self._each("log_metrics", numbers, 0)
        from harness.evaluate.report import write_report  # matplotlib: only when a run ends tracked

        with tempfile.TemporaryDirectory() as scratch:
            report = Path(scratch) / "report.html"
            run = open_run(stage.path)
            files = [stage.summary_path, self.folder.recipe_toml, stage.per_image, self.folder.environment]
            try:
                write_report([run], report)
                files.append(report)
            except Exception as error:  # a figure that cannot be drawn must not lose the rest
                self._warn(f"no report page ({describe_exception(error)})")
            self._each("log_files", [path for path in files if path.is_file()])
        self._each("end", "finished")

    def failed(self, status: str = "failed") -> None:
        """The run stopped on an error (``failed``), or a tuning trial was pruned (``pruned``)."""
        if self.started:
            self._each("end", status)

    # -- inside ----------------------------------------------------------------------------------

    def _start(self) -> None:
        if self.started:
            return
        self.started = True
        if self.folder.tracking.is_file():
            try:
                self.saved = read_json(self.folder.tracking)
            except BenchError as error:  # a damaged file: new tracked runs rather than no run
                self._warn(f"{error}; starting new tracked runs")
        run = TrackedRun(self.folder.name, self.folder.path.absolute(), flat_params(self.recipe), self.tags)
        for name in list(self.trackers):
            before = self.saved.get(name, {})
            state = self._call(name, "start", run, before.get("state"))
            if name in self.trackers:
                self.kept[name] = {"state": state, "sent": before.get("sent", {})}
        self._keep()

    def _send_epochs(self, fold: int, records: list[dict[str, float]], prefix: str = "") -> None:
        sent_any = False
        for name in list(self.trackers):
            sent = self.kept[name]["sent"]
            for record in records:
                epoch = int(record["epoch"])
                if epoch <= sent.get(f"{prefix}{fold}", -1):
                    continue
                metrics = {f"{prefix}fold{fold}/{key}": float(value) for key, value in record.items()
                           if key != "epoch" and _is_number(value)}
                if self._call(name, "log_metrics", metrics, epoch) is _OFF:
                    break
                sent[f"{prefix}{fold}"] = epoch
                sent_any = True
        if sent_any:
            self._keep()

    def _each(self, method: str, *args: Any) -> None:
        for name in list(self.trackers):
            self._call(name, method, *args)

    def _call(self, name: str, method: str, *args: Any) -> Any:
        try:
            return getattr(self.trackers[name], method)(*args)
        except Exception as error:  # a tracker's library, its server, a plugin's bug: never the run's end
            del self.trackers[name]
            self.kept.pop(name, None)
            self.console.print(f"[yellow]warning:[/] tracking with {escape(name)} is off: {escape(describe_exception(error))}",
                               highlight=False)
            return _OFF

    def _warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] tracking: {escape(message)}", highlight=False)

    def _keep(self) -> None:
        if self.folder.path.is_dir():
            atomic_write_json(self.folder.tracking, {**self.saved, **self.kept})


_OFF = object()  # what ``_call`` returns for a tracker it has just switched off


def flat_params(recipe: Recipe) -> dict[str, str]:
    """The resolved recipe as its ``recipe.toml`` says it, ``table.key`` -> value text, lists of tables
    numbered (``augment.0.name``)."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            for index, item in enumerate(value):
                walk(f"{prefix}.{index}", item)
        elif value is not None:
            flat[prefix] = str(value)

    walk("", tomllib.loads(recipe.to_toml()))
    return flat


def _history(fold: FoldFolder) -> list[dict[str, float]]:
    if not fold.history.is_file():
        return []
    try:
        return pd.read_csv(fold.history).to_dict("records")
    except (OSError, ValueError):
        return []


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value  # NaN is not sent
