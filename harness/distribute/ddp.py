"""``bench run RECIPE --ddp N``: the same command in N processes on this host, started by torch's
elastic launcher (what ``torchrun --standalone --nproc-per-node N`` runs), each fold trained by all of
them with DistributedDataParallel (``harness.engine.distributed``).

Across hosts, run ``torchrun`` yourself with your rendezvous (``--nnodes``, ``--rdzv-endpoint``) on
``-m harness.cli run RECIPE ...``: each process finds its rank in torchrun's variables, and nothing
here is needed.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid

import torch

from harness.errors import BenchError


def launch(processes: int, bench_args: list[str], device: str | None) -> None:
    """Run ``bench BENCH_ARGS`` in ``processes`` processes under the elastic launcher; one line when one
    fails (its own error line is printed above it by the process itself)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    on_gpu = device != "cpu" and torch.cuda.is_available()
    if device and device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    if on_gpu and processes > torch.cuda.device_count():
        raise BenchError(f"--ddp {processes}: this machine has {torch.cuda.device_count()} CUDA devices, one a process")
    if not on_gpu:  # the cores shared out, as torchrun does (it gives each process one thread)
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)  # its start-up chatter
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    try:
        elastic_launch(config, sys.executable)("-m", "harness.cli", *bench_args)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        raise BenchError(f"--ddp {processes}: process {rank} failed (exit code {failure.exitcode}); the line above "
                         "is its own error, and --resume goes on from the last finished epoch") from None
