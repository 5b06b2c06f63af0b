"""``bench tune``: an Optuna study over a recipe's ``[tune]`` space, pruned, resumable and parallel.

Every trial is an ordinary ``bench run`` of the trial's recipe into the study folder (see
``harness.tune.study``), named by the recipe's hash: a trial retried after its worker died finds its
own folder and resumes it, and a trial that repeats earlier parameters finds the finished run.

Workers do not use ``Study.optimize``: it creates the trial inside the call, so the trial budget
could not be checked and spent in one step, and parallel workers would overshoot it. Each worker
asks for a trial while holding a lock on the study folder, beats Optuna's heartbeat while the
trial runs, and tells the result. On a fresh study the baseline (the recipe's own values) runs
alone first, so every later trial has a complete trial to be pruned against.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock
from optuna.storages._heartbeat import BaseHeartbeat  # not re-exported by optuna.storages
from optuna.trial import TrialState
from rich.console import Console
from rich.markup import escape

from harness.engine.run import Monitors, RunRequest, run, run_folder, run_id, run_recipe
from harness.errors import BenchError, DiskFull
from harness.io import atomic_write_text, readable_size
from harness.recipe.plugins import load_plugins
from harness.recipe.schema import load_recipe
from harness.runs.folder import RunFolder
from harness.track.tracking import Tracking, trackers
from harness.tune import study as studies
from harness.tune.pruning import PruningMonitor
from harness.tune.search_space import SearchSpace


@dataclass(frozen=True)
class TuneJob:
    """Everything a worker process needs to rebuild the search on its own (it must pickle)."""

    recipe: Path
    profiles: tuple[str, ...]
    overrides: tuple[str, ...]
    plugins_dirs: tuple[Path, ...]
    strict_plugins: bool | None
    place: studies.StudyPlace
    device: str | None
    workers: int = 1
    trackers: tuple[str, ...] = ()  # --track: every trial's run is sent to these, tagged with the study and trial
    started: float = field(default_factory=time.time)

    def search_space(self) -> SearchSpace:
        plugins = load_plugins(list(self.plugins_dirs), strict=self.strict_plugins)
        recipe = load_recipe(self.recipe, plugins, list(self.profiles), list(self.overrides))
        origin = " ".join([str(self.recipe)] + [f"--profile {p}" for p in self.profiles]
                          + [f"--set {s}" for s in self.overrides])
        return SearchSpace(recipe, plugins, origin)


def prepare(job: TuneJob, console: Console) -> tuple[SearchSpace, optuna.Study]:
    """Check the space, create or load the study, recover trials of dead workers: before any worker."""
    space = job.search_space()
    space.check()
    study = studies.create_or_load(job.place, space)
    for number in studies.recover_dead_trials(study, job.place):
        console.print(f"trial {number} was left running by a worker that died: recorded as failed, queued again "
                      "(its run folder resumes)", highlight=False)
    return space, study


def tune(job: TuneJob, console: Console) -> tuple[SearchSpace, optuna.Study]:
    """Run workers until the study's trial budget (or this call's time budget) is spent."""
    with studies.storage_errors(job.place):
        return _tune(job, console)


def _tune(job: TuneJob, console: Console) -> tuple[SearchSpace, optuna.Study]:
    space, study = prepare(job, console)
    spent = studies.counted_trials(study)
    console.print(f"study {job.place.name!r} in {job.place.storage_text}: {spent} trials so far, "
                  f"{_budget_text(space)}; runs in {job.place.folder}", highlight=False)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if job.workers > 1:
            console.print("the first trial runs alone, so later trials have a finished one to be pruned against",
                          highlight=False)
        Worker(job, space, 0, console, max_trials=1).loop()
    _warn_if_the_disk_is_short(job, space, study, console)
    if job.workers == 1:
        Worker(job, space, 0, console).loop()
    elif space.spec.trials is None or studies.counted_trials(study) < space.spec.trials:
        _run_processes(job)  # not for a budget already spent: each worker process takes seconds to start
    return space, studies.load(job.place, space, 0)


def _warn_if_the_disk_is_short(job: TuneJob, space: SearchSpace, study: optuna.Study, console: Console) -> None:
    """Say so when the trials left, at the size of the first finished one, would not fit on the disk:
    better now than when the study stops on a full disk an hour in (pruned trials keep less)."""
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if space.spec.trials is None or not finished:
        return
    left = space.spec.trials - studies.counted_trials(study)
    run = job.place.folder / finished[0].user_attrs["run"]
    kept = sum(path.stat().st_blocks * 512 for path in run.rglob("*") if path.is_file())
    free = shutil.disk_usage(job.place.folder).free
    if left > 0 and kept * left > free:
        console.print(f"[yellow]warning:[/] a finished trial keeps {readable_size(kept)} ({escape(str(run))}); "
                      f"{left} more trial{'s' if left > 1 else ''} may need up to {readable_size(kept * left)}, "
                      f"and its disk has {readable_size(free)} free", highlight=False)


def _budget_text(space: SearchSpace) -> str:
    parts = []
    if space.spec.trials is not None:
        parts.append(f"budget {space.spec.trials} trials")
    if space.spec.timeout_minutes is not None:
        parts.append(f"no new trial after {space.spec.timeout_minutes:g} min")
    return ", ".join(parts)


def _run_processes(job: TuneJob) -> None:
    """``job.workers`` processes on one study; each prints a line per trial, its runs' logs go to files."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads
    processes = [context.Process(target=_worker_process, args=(job, index), name=f"bench-tune-{index}")
                 for index in range(job.workers)]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:  # the workers got the same SIGINT; they record their trials and stop
        for process in processes:
            process.join(timeout=60)
        raise
    stopped = [f"worker {i} (exit code {p.exitcode})" for i, p in enumerate(processes) if p.exitcode]
    if stopped:
        raise BenchError(f"{', '.join(stopped)} stopped before the budget was spent (see {job.place.folder}/logs); "
                         "bench tune again resumes the study")


def _worker_process(job: TuneJob, index: int) -> None:
    logs = job.place.folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"worker-{index}.log", "a", encoding="utf-8") as log:
        run_console = Console(file=log, soft_wrap=True, width=160)
        try:
            with studies.storage_errors(job.place):
                Worker(job, job.search_space(), index, run_console, lines=Console(soft_wrap=True),
                       device=_share_devices(job, index)).loop()
        except KeyboardInterrupt:
            pass
        except BenchError as error:  # one line, as from bench itself; the exit code tells the parent
            errors = Console(stderr=True, soft_wrap=True, highlight=False)
            errors.print(f"[red]error:[/] {escape(f'[worker {index}] {error}')}")
            sys.exit(2)


def _share_devices(job: TuneJob, index: int) -> str | None:
    """Worker ``index``'s device: the CPU's cores split between workers (more threads than cores make
    PyTorch's OpenMP threads spin against each other), or one GPU each, round robin, when there are several."""
    import torch

    device = job.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // job.workers))
    elif device == "cuda" and torch.cuda.device_count() > 1:
        return f"cuda:{index % torch.cuda.device_count()}"
    return job.device


class Worker:
    """Takes trials from the study until the budget is spent; ``lines`` gets one line per trial."""

    def __init__(self, job: TuneJob, space: SearchSpace, index: int, console: Console,
                 lines: Console | None = None, max_trials: int | None = None, device: str | None = None):
        self.job, self.space = job, space
        self.device = device or job.device
        self.console, self.lines = console, lines or console
        self.max_trials = max_trials
        self.prefix = f"[worker {index}] " if job.workers > 1 and lines is not None else ""
        self.study = studies.load(job.place, space, index)
        self.lock = FileLock(job.place.folder / ".locks" / "study.lock")
        self.deadline = (job.started + space.spec.timeout_minutes * 60) if space.spec.timeout_minutes else None

    def loop(self) -> None:
        done = 0
        while self.max_trials is None or done < self.max_trials:
            trial = self._next_trial()
            if trial is None:
                return
            self._run_trial(trial)
            done += 1

    def _next_trial(self) -> optuna.Trial | None:
        (self.job.place.folder / ".locks").mkdir(parents=True, exist_ok=True)
        with self.lock, studies.budget_lock(self.study):
            optuna.storages.fail_stale_trials(self.study)  # a dead worker's trial is queued again first
            if self.deadline is not None and time.time() >= self.deadline:
                return None
            if self.space.spec.trials is not None and studies.counted_trials(self.study) >= self.space.spec.trials:
                return None
            trial = self.study.ask(self.space.spec.distributions())
            trial.set_user_attr("worker", studies.this_worker(self.job.place))
            return trial

    def _run_trial(self, trial: optuna.Trial) -> None:
        settings = ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                             for key, value in trial.params.items())
        baseline = " (the recipe's own values)" if trial.user_attrs.get("baseline") else ""
        self.lines.print(f"{escape(self.prefix)}trial {trial.number}: {escape(settings)}{baseline}", highlight=False)
        try:
            with _Heartbeat(self.study, trial):
                values = self._evaluate(trial)
        except optuna.TrialPruned as pruned:
            # nothing resumes a pruned trial's fold (the same parameters again would start it afresh),
            # and its resume state is three times the size of its weights
            for fold in RunFolder(self.job.place.folder / trial.user_attrs["run"]).folds():
                fold.last.unlink(missing_ok=True)
            trial.set_user_attr("pruned", str(pruned))
            self.study.tell(trial, state=TrialState.PRUNED)
            self._say(trial, f"pruned {pruned} (Dice so far {trial.user_attrs.get('partial_dice', float('nan')):.4f})")
        except KeyboardInterrupt:
            studies.fail_and_retry(self.study, trial, "interrupted")
            self._say(trial, "interrupted: recorded as failed and queued again; bench tune again resumes it")
            raise
        except DiskFull:  # every later trial would fail the same way and spend the budget for nothing
            studies.fail_and_retry(self.study, trial, "disk full")
            self._say(trial, "stopped: the disk is full; recorded as failed and queued again")
            raise
        except BenchError as error:
            trial.set_user_attr("error", str(error))
            self.study.tell(trial, state=TrialState.FAIL)
            self._say(trial, f"failed: {error}")
        except Exception as error:  # a bug or an out-of-memory: recorded with its traceback, and the study goes on
            where = self.job.place.folder / "logs" / f"trial-{trial.number}-error.txt"
            atomic_write_text(where, traceback.format_exc())
            trial.set_user_attr("error", f"{type(error).__name__}: {error} (traceback in {where})")
            self.study.tell(trial, state=TrialState.FAIL)
            self._say(trial, f"failed: {trial.user_attrs['error']}")
        else:
            self.study.tell(trial, values)
            self._say(trial, ", ".join(f"{name} {value:.4f}" for name, value in zip(self.space.spec.objectives, values)))

    def _evaluate(self, trial: optuna.Trial) -> list[float]:
        recipe = self.space.recipe_for(trial.params)
        folder_name = run_id(recipe)
        trial.set_user_attr("run", folder_name)
        monitor = PruningMonitor(trial, self.space.spec.pruner.reports, recipe.folds.k, recipe.train.epochs)
        request = RunRequest(recipe, self.job.place.folder, resume=True, device=self.device, monitor=monitor)
        tracking = None
        if self.job.trackers:
            tracking = Tracking(trackers(self.space.plugins, list(self.job.trackers)), run_folder(request),
                                run_recipe(request), self.console,
                                tags={"study": self.job.place.name, "trial": str(trial.number)})
            request = replace(request, monitor=Monitors(tracking, monitor))  # the epoch is sent, then judged
        # one writer per run folder: two workers may be handed the same parameters
        with FileLock(self.job.place.folder / ".locks" / f"{folder_name}.lock"):
            try:
                folder = run(request, self.space.plugins, self.console)
            except BaseException as error:
                if tracking is not None:
                    tracking.failed("pruned" if isinstance(error, optuna.TrialPruned) else "failed")
                raise
        if tracking is not None:
            tracking.finish()
        monitor.finish(folder)
        summary = RunFolder(folder).scored().read_summary()  # a two-stage recipe is judged by its last stage
        return [float(summary[name]) for name in self.space.spec.objectives]

    def _say(self, trial: optuna.Trial, outcome: str) -> None:
        self.lines.print(f"{escape(self.prefix)}trial {trial.number}: {escape(outcome)}", highlight=False)
        studies.write_trials_csv(self.study, self.job.place.folder)


class _Heartbeat:
    """Optuna's heartbeat for a trial we asked for ourselves (``Study.optimize`` does this for its own)."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial):
        storage = study._storage
        enabled = isinstance(storage, BaseHeartbeat) and storage.get_heartbeat_interval() is not None
        self.beat = (lambda: storage.record_heartbeat(trial._trial_id)) if enabled else None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            try:
                self.beat()
            except optuna.exceptions.StorageInternalError:
                pass  # a missed beat; the trial's own writes to the storage will report the failure
            if self.stop.wait(studies.HEARTBEAT_SECONDS):
                return

    def __enter__(self) -> None:
        if self.beat is not None:
            self.thread.start()

    def __exit__(self, *_: Any) -> None:
        if self.beat is not None:
            self.stop.set()
            self.thread.join()
