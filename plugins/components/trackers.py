"""Experiment trackers (``bench run --track mlflow``, ``--track tensorboard``), written against the
``bench_trackers`` contract of ``harness.recipe.hookspecs``: each library's own client and its own
settings, nothing of ours in between.

MLflow: the run goes to MLflow's tracking URI (``MLFLOW_TRACKING_URI``; unset, MLflow's default, a
``mlflow.db`` SQLite file with artefacts under ``mlruns/`` in the current folder) and experiment
(``MLFLOW_EXPERIMENT_NAME``, else ``segbench``). A server that does not answer is given 2 retries of
20 s, not MLflow's 7 of 120 s, unless ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` or ``..._TIMEOUT`` say otherwise:
tracking that is down should not hold a training run for minutes.

TensorBoard: event files in ``RUN/tensorboard`` (or ``$SEGBENCH_TENSORBOARD_DIR/RUN``), so that
``tensorboard --logdir results`` shows every run; the recipe, tags and summary as text (TensorBoard
keeps no files).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from harness.api import BenchError, TrackedRun


def mlflow():
    """The MLflow tracker; one line naming the extra when MLflow is not installed."""
    try:
        importlib.import_module("mlflow")
    except ImportError:
        raise BenchError("--track mlflow needs MLflow: pip install 'segbench[mlflow]'") from None
    for logger in ("mlflow", "alembic"):  # their INFO lines (database set-up, experiment created) are noise here
        logging.getLogger(logger).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    return MlflowTracker()


class MlflowTracker:
    """One MLflow run per segbench run folder: params, per-epoch metrics, summary, files."""

    EXPERIMENT = "segbench"

    def start(self, run: TrackedRun, state: dict | None) -> dict:
        import mlflow
        from mlflow.entities import Param

        uri = state["tracking_uri"] if state else mlflow.get_tracking_uri()
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        if state:  # a resumed run: the same MLflow run, running again
            self.run_id = state["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return state
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", self.EXPERIMENT)
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        tags = {**run.tags, "segbench.run_folder": str(run.folder)}
        self.run_id = self.client.create_run(experiment_id, run_name=run.name, tags=tags).info.run_id
        params = [Param(key, value[:6000]) for key, value in sorted(run.params.items())]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        return {"run_id": self.run_id, "tracking_uri": uri, "experiment_id": experiment_id}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, step) for key, value in metrics.items()])

    def log_files(self, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, {"finished": "FINISHED", "pruned": "KILLED"}.get(status, "FAILED"))


def tensorboard():
    """The TensorBoard tracker; one line naming the extra when TensorBoard is not installed."""
    try:
        importlib.import_module("tensorboard")  # what torch.utils.tensorboard writes with
    except ImportError:
        raise BenchError("--track tensorboard needs TensorBoard: pip install 'segbench[tensorboard]'") from None
    return TensorBoardTracker()


class TensorBoardTracker:
    """Event files per run folder: each epoch's numbers as scalars, the recipe and summary as text."""

    def start(self, run: TrackedRun, state: dict | None) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        root = os.environ.get("SEGBENCH_TENSORBOARD_DIR")
        logdir = state["logdir"] if state else str(Path(root) / run.name if root else run.folder / "tensorboard")
        self.writer = SummaryWriter(logdir)
        if not state:
            self.writer.add_text("recipe", _table(run.params))
            self.writer.add_text("tags", _table(run.tags))
        return {"logdir": logdir}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_files(self, paths: list[Path]) -> None:
        for path in paths:
            if path.name == "summary.json":
                self.writer.add_text("summary", "```\n" + json.dumps(json.loads(path.read_text()), indent=1) + "\n```")

    def end(self, status: str) -> None:
        self.writer.add_text("status", status)
        self.writer.close()


def _table(values: dict[str, Any]) -> str:
    return "\n".join(["| key | value |", "|---|---|"] + [f"| {key} | {value} |" for key, value in sorted(values.items())])
