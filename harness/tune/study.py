"""The Optuna study behind ``bench tune``: where it is stored, who may join it, and what it holds.

A study lives in ``<results>/tune/<study>/``: ``study.db`` (SQLite, unless ``--storage`` names a
shared database or journal file), ``study.json`` (what was tuned), ``trials.csv`` (every trial,
rewritten after each one, for people and for ``bench report``), and one ordinary run folder per
distinct trial recipe, so ``bench compare <results>/tune/<study>`` ranks the trials.

The study is created once, by the ``bench tune`` process, before any worker starts: several
processes creating one fresh SQLite study at the same moment race. It is tied to what it searches
(the baseline recipe, the space and the objectives): tuning a changed recipe into an old study
would mix two searches, so that is refused with a hint to name a new study.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import optuna
import pandas as pd
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from harness.errors import BenchError
from harness.io import atomic_write_json, atomic_write_text, cannot_write
from harness.tune.search_space import SearchSpace

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# bench tune beats the heartbeat itself (harness.tune.tune._Heartbeat); Optuna warns on every ask() otherwise
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
optuna.logging.set_verbosity(optuna.logging.WARNING)  # bench tune prints its own line per trial

HEARTBEAT_SECONDS = 10  # a trial whose worker stopped beating for GRACE_SECONDS is failed and retried
GRACE_SECONDS = 60
MAX_RETRIES = 3  # a trial killed this often is left failed: something about it kills workers
_FINGERPRINT = "segbench_fingerprint"
_RETRY = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)


@dataclass(frozen=True)
class StudyPlace:
    """Where a study is: its folder (run folders, trials.csv) and its storage (the trials themselves)."""

    name: str
    folder: Path
    storage_url: str | None = None  # None: SQLite in the folder

    @property
    def storage_text(self) -> str:
        return self.storage_url or f"sqlite:///{self.folder / 'study.db'}"

    def storage(self) -> optuna.storages.BaseStorage:
        """An RDB URL (``sqlite:///...``, ``postgresql://...``) or a journal file path.

        RDB storages beat a heartbeat, so a trial whose worker died anywhere is failed and retried
        by the next worker; a journal file has no heartbeat (see ``recover_dead_trials``).
        """
        text = self.storage_text
        try:
            if "://" not in text:
                from optuna.storages.journal import JournalFileBackend

                Path(text).parent.mkdir(parents=True, exist_ok=True)
                return optuna.storages.JournalStorage(JournalFileBackend(text))
            engine = {"connect_args": {"timeout": 60}} if text.startswith("sqlite") else {}
            return optuna.storages.RDBStorage(
                text, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=_RETRY)
        except Exception as error:  # a bad URL or path, a missing driver, an unreachable server
            reason = str(error).splitlines()[0] if str(error) else ""
            raise BenchError(f"study storage {text}: cannot open ({type(error).__name__}: {reason})") from None


@contextmanager
def storage_errors(place: StudyPlace) -> Iterator[None]:
    """A study storage that cannot be written (a full disk, a lost database server) is one line.

    Optuna reports a failed RDB commit as StorageInternalError with a generic message ("invalid data
    in the commit"); the database's own reason is its cause. A journal file fails with an OSError.
    A trial left running by the failure is failed and queued again when bench tune next starts.
    """
    try:
        yield
    except optuna.exceptions.StorageInternalError as error:
        reason = str(error.__cause__ or error).splitlines()[0]
        raise BenchError(f"study storage {place.storage_text}: cannot write: {reason}; "
                         "once that is fixed, bench tune again resumes the study") from None
    except OSError as error:
        raise cannot_write(Path(error.filename or place.storage_text), error) from None


def create_or_load(place: StudyPlace, space: SearchSpace) -> optuna.Study:
    """Create the study (with the baseline as its first trial), or load it and check it is this search."""
    place.folder.mkdir(parents=True, exist_ok=True)
    storage = place.storage()
    directions = ["maximize"] * len(space.spec.objectives)
    try:
        study = optuna.create_study(study_name=place.name, storage=storage, directions=directions)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=place.name, storage=storage)
        found = study.user_attrs.get(_FINGERPRINT)
        if found != space.fingerprint():
            raise BenchError(
                f"study {place.name!r} in {place.storage_text} was made for a different recipe, search space or "
                f"objective; pass --study NEW_NAME for a new study (or remove {place.folder} to start over)") from None
        return study
    study.set_user_attr(_FINGERPRINT, space.fingerprint())
    study.set_user_attr("objectives", list(space.spec.objectives))
    study.enqueue_trial(space.baseline_params(), user_attrs={"baseline": True})
    atomic_write_json(place.folder / "study.json", {
        "study": place.name, "storage": place.storage_text, "recipe": space.origin,
        "objectives": list(space.spec.objectives), "fingerprint": space.fingerprint(),
    })
    return study


def load(place: StudyPlace, space: SearchSpace, worker: int) -> optuna.Study:
    """The study as a worker sees it: its own sampler seed, the recipe's pruner."""
    study = optuna.load_study(study_name=place.name, storage=place.storage(), pruner=space.spec.pruner.build())
    study.sampler = space.spec.sampler_for(worker, len(study.get_trials(deepcopy=False)))
    return study


def this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def recover_dead_trials(study: optuna.Study) -> list[int]:
    """Fail and re-queue trials left running by a worker of this machine that no longer exists.

    The heartbeat would find them too, but only after its grace period, and a journal file has no
    heartbeat at all; a worker on this machine is known dead at once. Returns the trials failed.
    """
    host = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        fail_and_retry(study, trial, f"its worker (pid {pid}) died")
        failed.append(trial.number)
    return failed


def fail_and_retry(study: optuna.Study, trial: FrozenTrial | optuna.Trial, why: str) -> None:
    """Record the trial as failed, and queue the same parameters again (its run folder resumes)."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, "error", why)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return  # another process got there first
    _RETRY(study, storage.get_trial(trial._trial_id))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def counted_trials(study: optuna.Study) -> int:
    """Trials that use up the budget: started or finished, except failures that were re-queued
    (their retry counts instead). Waiting trials count once a worker takes them."""
    trials = study.get_trials(deepcopy=False)
    retried = {number for trial in trials for number in RetryHeartbeatStaleTrialCallback.retry_history(trial)}
    return sum(1 for t in trials if t.state != TrialState.WAITING and t.number not in retried)


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, objective values (a pruned trial's Dice so far), params,
    seconds, run folder, and a note (baseline, retry of, error)."""
    objectives = study.user_attrs.get("objectives", ["value"])
    trials = study.get_trials(deepcopy=False)
    retried_as = {}
    for trial in trials:
        history = RetryHeartbeatStaleTrialCallback.retry_history(trial)
        if history:
            retried_as[history[-1]] = trial.number
    rows = []
    for trial in trials:
        row: dict[str, Any] = {"trial": trial.number, "state": trial.state.name.lower()}
        for index, objective in enumerate(objectives):
            complete = trial.state == TrialState.COMPLETE
            row[objective] = trial.values[index] if complete else None
        if "partial_dice" in trial.user_attrs:
            row["partial_dice"] = trial.user_attrs["partial_dice"]
        row.update({f"param:{key}": value for key, value in trial.params.items()})
        if trial.datetime_start and trial.datetime_complete:
            row["seconds"] = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)
        row["run"] = trial.user_attrs.get("run", "")
        row["note"] = _note(trial, retried_as)
        rows.append(row)
    return pd.DataFrame(rows)


def _note(trial: FrozenTrial, retried_as: dict[int, int]) -> str:
    notes = []
    if trial.user_attrs.get("baseline"):
        notes.append("baseline")
    history = RetryHeartbeatStaleTrialCallback.retry_history(trial)
    if history:
        notes.append(f"retry of {history[-1]}")
    if trial.user_attrs.get("pruned"):
        notes.append(trial.user_attrs["pruned"])
    if trial.user_attrs.get("error") and trial.state == TrialState.FAIL:  # a retry inherits its attributes
        notes.append(trial.user_attrs["error"])
    if trial.number in retried_as:
        notes.append(f"retried as {retried_as[trial.number]}")
    return "; ".join(notes)


def write_trials_csv(study: optuna.Study, folder: Path) -> pd.DataFrame:
    """Rewrite ``folder/trials.csv``; return the table written."""
    table = trials_table(study)
    atomic_write_text(folder / "trials.csv", table.to_csv(index=False))
    return table


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial, or the Pareto front (best Dice first) of a multi-objective study."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    return sorted(study.best_trials, key=lambda trial: -trial.values[0])


def write_tuned_recipe(space: SearchSpace, trial: FrozenTrial, out: Path, study_name: str, command: str) -> Path:
    """The best trial as a recipe file that ``bench run`` runs as is (profiles already applied)."""
    recipe = space.recipe_for(trial.params)
    recipe = recipe.model_copy(update={"name": f"{recipe.name}-tuned"})
    values = ", ".join(f"{name} {value:.5g}" for name, value in zip(space.spec.objectives, trial.values))
    header = (f"# Tuned by `{command}`: trial {trial.number} of study {study_name!r} ({values}).\n"
              f"# Tuned from {space.origin}; every profile and --set is already applied.\n"
              f"# Searched: {json.dumps(trial.params)}\n")
    atomic_write_text(out, header + recipe.to_toml())
    return out
