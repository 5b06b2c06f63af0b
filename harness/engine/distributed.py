"""One fold trained by several processes with DistributedDataParallel, under ``torchrun``.

``bench run RECIPE --ddp N`` starts ``torchrun --standalone --nproc-per-node N`` on the same command
(or run torchrun yourself, across hosts: every process of it runs ``bench run`` as usual and finds its
rank in torchrun's variables). Each process trains the same folds in step, on its own device
(``cuda:LOCAL_RANK``, or the CPU with the gloo backend), with a share of every batch:

* ``RankSampler`` cuts every batch of ``train.batch_size`` that one process would draw into N
  contiguous slices, one a rank. The samples keep their ``(epoch, draw, i)`` keys, so each image gets
  the augmentation it gets in one process. DDP averages the gradients over the ranks, so with a loss
  that is a mean over the batch's pixels, N processes of B/N images step like one process of B.
* Rank 0 alone validates and writes (checkpoints, history, the out-of-fold and test maps, the
  summary); the others wait for it at the end of each fold and of each stage. A resumed fold starts
  every rank from rank 0's last checkpoint.
* Batch norm: on CUDA, BatchNorm layers become SyncBatchNorm, whose statistics are those of the
  whole batch, as in one process (at Carvana's size a GPU holds a few images, too few for statistics
  of their own). PyTorch has no SyncBatchNorm on the CPU: there each rank normalises with the
  statistics of its own slice, and the run says so.
* The compute (precision, memory format) is rank 0's choice, sent to every rank, so that all train
  alike.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist

from harness.errors import BenchError

# Rank 0 validates a whole fold while the others wait at the next collective: at full size that is
# minutes, longer than the default timeouts of some backends.
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes that train one fold together."""

    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """Each rank on a GPU of its own (``cuda:LOCAL_RANK``), or all on the CPU."""
        return torch.device("cuda", self.local_rank) if requested.type == "cuda" else requested

    def barrier(self) -> None:
        dist.barrier()

    def mean(self, value: float) -> float:
        """``value`` averaged over the ranks (the loss of the whole batch, which every rank then reports)."""
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor)
        return tensor.item() / self.world

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def split_batch(self, batch_size: int) -> int:
        if batch_size % self.world:
            raise BenchError(f"train.batch_size {batch_size} cannot be shared by {self.world} processes (--ddp): "
                             f"make it a multiple of {self.world}")
        return batch_size // self.world


def ranks_from_environment() -> Ranks | None:
    """The ranks torchrun started this process among, or None for a process of its own."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 2:
        return None
    return Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def start(ranks: Ranks, device: torch.device) -> None:
    """Join the process group (once a process): NCCL between GPUs, gloo between CPU processes."""
    if dist.is_initialized():
        return
    _end_with_the_launcher()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)


def _end_with_the_launcher() -> None:
    """On Linux, have this process stopped when its launcher dies: a launcher killed outright (SIGKILL,
    which it cannot pass on) would otherwise leave its ranks training, and a ``--resume`` started
    next would train the same folds beside them."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before the request took effect
        raise SystemExit(1)


_PR_SET_PDEATHSIG = 1


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model as DDP trains it: gradients averaged over the ranks at every backward pass."""
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def has_batch_norm(model: torch.nn.Module) -> bool:
    return any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in model.modules())


class RankSampler(torch.utils.data.Sampler):
    """This rank's slice of every batch that ``sampler`` would give one process.

    A batch of ``batch_size`` keys is cut into ``world`` contiguous slices of equal size. A last batch
    smaller than that (an epoch of one pass over images that are not a multiple of it) is padded with
    its own first keys, as torch's DistributedSampler pads, so that every rank steps the same number
    of times.
    """

    def __init__(self, sampler, batch_size: int, ranks: Ranks):
        self.sampler, self.batch_size, self.ranks = sampler, batch_size, ranks
        self.share = ranks.split_batch(batch_size)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.sampler.epoch = value

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size) * self.share

    def __iter__(self) -> Iterator:
        keys = list(self.sampler)
        for start_ in range(0, len(keys), self.batch_size):
            batch = keys[start_:start_ + self.batch_size]
            while len(batch) < self.batch_size:
                batch += batch[: self.batch_size - len(batch)]
            yield from batch[self.ranks.rank * self.share:(self.ranks.rank + 1) * self.share]
