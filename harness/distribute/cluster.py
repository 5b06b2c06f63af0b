"""Folds and prediction shards as cluster jobs through submitit, the library research labs submit to
SLURM with.

``bench run RECIPE --launcher slurm --slurm-partition P`` submits one job per unfinished fold, each
``bench run RECIPE --folds K`` on the GPU its job gets; the job that finishes the last fold assembles
the run (``harness.engine.run``), so no assembly job waits on the others. ``--launcher local`` runs
the same jobs as processes on this machine (submitit's local executor): how it is tested here.
The submitting command waits for the jobs and reports each; if it is stopped, the jobs go on, and
the same command run again submits only the folds still unfinished.

Each job's output is in ``STAGE/jobs/`` (submitit's folder: ``<job id>_0_log.out`` and ``.err``).

``bench predict ... --launcher slurm --shards N`` submits one job per shard the same way, each a
``bench predict ... --shard i/N``, into ``OUT/shards/jobs/``; the shard that finishes last merges.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from harness.distribute.folds import Ended, Start, Worker
from harness.errors import BenchError
from harness.runs.folder import RunFolder

LAUNCHERS = ("slurm", "local")


@dataclass(frozen=True)
class Cluster:
    """What every fold's job asks for (``--launcher`` and the ``--slurm-*`` options)."""

    launcher: str
    partition: str | None
    minutes: int
    gpus: int
    cpus: int | None  # None: 8 on SLURM, this machine's cores shared out among local jobs
    setup: list[str]
    device: str | None  # --device, passed to every job (default: the job's GPU when it has one)

    def cpus_per_job(self, jobs: int) -> int:
        if self.cpus is not None:
            return self.cpus
        return 8 if self.launcher == "slurm" else max(1, (os.cpu_count() or 1) // jobs)

    def parameters(self, jobs: int) -> dict:
        """submitit's AutoExecutor parameters; those of SLURM only are ignored by the local executor."""
        params = {"timeout_min": self.minutes, "cpus_per_task": self.cpus_per_job(jobs), "name": "segbench"}
        if self.launcher == "slurm":
            params.update(gpus_per_node=self.gpus, tasks_per_node=1, nodes=1, slurm_setup=self.setup)
            if self.partition:
                params["slurm_partition"] = self.partition
        return params


def on_cluster(worker: Worker, cluster: Cluster, console: Console) -> Start:
    """``start`` for ``harness.distribute.folds.train_folds``: one submitit job per fold, waited for."""
    submitit = _submitit(cluster)

    def start(stage: RunFolder, folds: list[int]) -> list[Ended]:
        commands = {f"fold {fold}": worker.command(fold, cluster.device) for fold in folds}
        ended = run_jobs(submitit, cluster, stage.jobs, commands, console)
        return [replace(ended[f"fold {fold}"], fold=fold) for fold in folds]

    return start


def predict_shards(cluster: Cluster, shards: int, bench_args: list[str], out: Path, console: Console) -> None:
    """``bench predict ... --launcher L --shards N``: one job per shard (``bench predict ... --shard i/N``),
    waited for; the shard that finishes last merges them (``harness.distribute.shards``)."""
    submitit = _submitit(cluster)
    commands = {f"shard {i}/{shards}": [sys.executable, "-m", "harness.cli", *bench_args, "--shard", f"{i}/{shards}"]
                for i in range(1, shards + 1)}
    ended = run_jobs(submitit, cluster, out / "shards" / "jobs", commands, console)
    failed = [f"{label} ({job.where}): {job.error} (log: {job.log})" for label, job in ended.items() if job.failed]
    if failed:
        raise BenchError("; ".join(failed) + ". The finished shards are kept: run the same command again to retry")


def run_jobs(submitit, cluster: Cluster, folder: Path, commands: dict[str, list[str]],
             console: Console) -> dict[str, Ended]:
    """Submit one job per command (each labelled), wait for them all, say how each ended (``fold`` is
    left for the caller to fill in)."""
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster.launcher)
    executor.update_parameters(**cluster.parameters(len(commands)))
    threads = cluster.cpus_per_job(len(commands))
    submitted = time.perf_counter()
    jobs = {}
    for label, command in commands.items():
        # the job's own environment (its GPU, SLURM's variables), with as many threads as cores asked
        # for: torch would otherwise start one per core of the node, shared with other jobs
        job = executor.submit(submitit.helpers.CommandFunction(["env", f"OMP_NUM_THREADS={threads}", *command],
                                                               cwd=os.getcwd()))
        jobs[label] = job
        console.print(f"{label} -> {cluster.launcher} job {job.job_id} (log: {job.paths.stdout})", highlight=False)
    ended = {}
    for job in submitit.helpers.as_completed(list(jobs.values()), poll_frequency=_poll_seconds(cluster)):
        label = next(name for name, submitted_job in jobs.items() if submitted_job is job)
        error = _job_error(job)
        ended[label] = Ended(-1, f"job {job.job_id}", Path(job.paths.stdout), time.perf_counter() - submitted, error)
        console.print(f"{label} ({ended[label].where}): {'failed: ' + error if error else 'finished'}",
                      highlight=False)
    return ended


def _submitit(cluster: Cluster):
    """The submitit module, once the launcher is known good; one line for what is missing."""
    if cluster.launcher not in LAUNCHERS:
        raise BenchError(f"--launcher {cluster.launcher}: expected {' or '.join(LAUNCHERS)}")
    try:
        import submitit
    except ImportError:
        raise BenchError(f"--launcher {cluster.launcher} needs submitit, which is not installed: "
                         "pip install 'segbench[cluster]'") from None
    if cluster.launcher == "slurm" and not cluster.partition:
        raise BenchError("--launcher slurm needs --slurm-partition (the partition its jobs go to)")
    return submitit


def _poll_seconds(cluster: Cluster) -> float:
    """How often job states are read: squeue is shared by everyone on a cluster, local processes are not."""
    return 30 if cluster.launcher == "slurm" else 1


def _job_error(job) -> str | None:
    """None for a job that finished; else one line: the worker's own error line, or why the job died."""
    failure = job.exception()
    if failure is None:
        return None
    lines = [line.strip() for line in str(failure).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [f"{job.state}"])[-1]
