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

import importlib.util
import json
import os
import socket
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import optuna
import pandas as pd
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import text as sql
from sqlalchemy.engine import make_url

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
    """Where a study is: its folder (run folders, trials.csv) and its storage (the trials themselves).

    ``host`` names this machine in the study: a trial left running by a dead process of the same
    host is retried at once (``recover_dead_trials``), another host's once its heartbeat is
    ``grace_seconds`` old.
    """

    name: str
    folder: Path
    storage_url: str | None = None  # None: SQLite in the folder
    host: str = field(default_factory=socket.gethostname)
    grace_seconds: int = GRACE_SECONDS

    @property
    def storage_text(self) -> str:
        """The storage as said to people and written to study.json: a URL's password hidden."""
        if self.storage_url is None:
            return f"sqlite:///{self.folder / 'study.db'}"
        if "://" not in self.storage_url:
            return self.storage_url
        try:
            return make_url(self.storage_url).render_as_string(hide_password=True)
        except Exception:  # not a URL SQLAlchemy parses: storage() says so
            return self.storage_url

    def storage(self) -> optuna.storages.BaseStorage:
        """An RDB URL (``sqlite:///...``, ``postgresql://...``) or a journal file path.

        RDB storages beat a heartbeat, so a trial whose worker died anywhere is failed and retried
        by the next worker; a journal file has no heartbeat (see ``recover_dead_trials``).
        """
        text = self.storage_url or self.storage_text
        try:
            if "://" not in text:
                from optuna.storages.journal import JournalFileBackend

                Path(text).parent.mkdir(parents=True, exist_ok=True)
                return optuna.storages.JournalStorage(JournalFileBackend(text))
            text = _with_driver(text)
            engine = {"connect_args": {"timeout": 60}} if text.startswith("sqlite") else {}
            return optuna.storages.RDBStorage(
                text, engine_kwargs=engine, heartbeat_interval=self.heartbeat_seconds, grace_period=self.grace_seconds,
                heartbeat_stale_trial_callback=_RETRY)
        except BenchError:
            raise
        except Exception as error:  # a bad URL or path, an unreachable server, a wrong password, no database
            raise BenchError(f"study storage {self.storage_text}: cannot open ({_reason(error)})") from None

    @property
    def heartbeat_seconds(self) -> int:
        """A live worker beats at least three times within the grace period, so it is never taken for dead."""
        return max(1, min(HEARTBEAT_SECONDS, self.grace_seconds // 3))


def _with_driver(url: str) -> str:
    """``postgresql://`` with psycopg 3, segbench's PostgreSQL driver (SQLAlchemy would look for psycopg2);
    a URL that names its driver (``postgresql+psycopg2://``) is used as it is."""
    scheme, _, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        return url
    if importlib.util.find_spec("psycopg") is None:
        raise BenchError(f"study storage {scheme}://...: the PostgreSQL driver is not installed; "
                         "pip install segbench[postgres]")
    return f"postgresql+psycopg://{rest}"


def _reason(error: Exception) -> str:
    """The driver's own first line (SQLAlchemy wraps it in a paragraph with a link), without the URL."""
    cause = getattr(error, "orig", None) or error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


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


def this_worker(place: StudyPlace) -> str:
    return f"{place.host}:{os.getpid()}"


def budget_lock(study: optuna.Study):
    """Held while a worker counts the trials and asks for one, by every host that shares the study.

    The study folder's file lock (``harness.tune.tune.Worker``) is one host's: two hosts on one
    PostgreSQL study would each count 9 of 10 and both start the tenth. A PostgreSQL advisory lock,
    keyed by the study and held by one connection, spans them, and the server drops it when the
    connection dies with its process. Other storages are one host's (SQLite, a journal file).
    """
    storage = getattr(study._storage, "_backend", study._storage)  # Optuna wraps an RDB in a cache
    engine = getattr(storage, "engine", None)
    if engine is None or engine.dialect.name != "postgresql":
        return nullcontext()
    return _advisory_lock(engine, study._study_id)


@contextmanager
def _advisory_lock(engine, study_id: int) -> Iterator[None]:
    key = (_ADVISORY_NAMESPACE << 32) + study_id
    with engine.connect() as connection:
        connection.execute(sql("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            connection.execute(sql("SELECT pg_advisory_unlock(:key)"), {"key": key})


_ADVISORY_NAMESPACE = 0x5E6B  # segbench's advisory locks: the high half of the key, the study's id the low


def recover_dead_trials(study: optuna.Study, place: StudyPlace) -> list[int]:
    """Fail and re-queue trials left running by a worker of this host that no longer exists.

    The heartbeat would find them too, but only after its grace period, and a journal file has no
    heartbeat at all; a worker on this host is known dead at once. Returns the trials failed.
    """
    host = place.host
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
