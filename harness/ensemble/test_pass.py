"""The test pass of ``bench ensemble``: the chosen ensemble's RLE mask of every test image, in order,
computed by a pool of worker processes.

It is the hot pass (100,064 Carvana images, every member's map of each). Per image a worker reads
every run's uint8 map, merges through ``harness.ensemble.exact`` when the merger declares itself
pixelwise (bit for bit the float path, ``Ensemble.mask``, which other mergers take), applies the kept
post-processors and encodes the mask. The main process only writes the rows.

Workers are spawned, not forked, as in ``harness.tune`` and ``harness.data.synthetic``: a fork of a
process whose torch or OpenCV threads run can hang. Each worker gets the ensemble with unopened runs
and opens their stores itself (an open store is never pickled); unpickling the merger imports its
plugin, and through ``harness.api`` torch, once per worker (about 2 s). Images go out in chunks, in
order, at most ``IN_FLIGHT`` chunks per worker at a time, and come back in order, so memory stays
flat whatever the number of images.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from multiprocessing import get_context
from typing import TYPE_CHECKING, Iterator

import cv2
import numpy as np

from harness.data import rle
from harness.ensemble.exact import ExactMerge
from harness.ensemble.members import Group, runs_of
from harness.errors import BenchError
from harness.memory import keep_freed_memory
from harness.runs.folder import Run

if TYPE_CHECKING:
    from harness.ensemble.ensemble import Ensemble

CHUNK = 16  # images per task: large enough that a task's overhead is small, small enough to keep order cheap
IN_FLIGHT = 2  # chunks queued per worker: one being computed, one waiting, so no worker idles


def default_workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pool_size(images: int, asked: int) -> int:
    """No more workers than chunks: this process encodes a chunk in well under the 2 s a worker takes to start."""
    return max(1, min(asked, -(-images // CHUNK)))


class SubmissionMasks:
    """One test image's mask: the exact merge when the merger is pixelwise, else ``Ensemble.mask``."""

    def __init__(self, ensemble: Ensemble):
        self.ensemble = ensemble
        members = ensemble.members()
        self.runs = [run for i in members for run in runs_of(ensemble.runs[i])]
        self.exact = ExactMerge.build([len(runs_of(ensemble.runs[i])) for i in members],
                                      [ensemble.weights[i] for i in members], ensemble.merge, ensemble.cutoff)

    def __call__(self, image_id: str) -> np.ndarray:
        if self.exact is None:
            return self.ensemble.mask("test", image_id)
        split = self.exact.disagreement([run.test.quantised(image_id) for run in self.runs])
        mask = self.exact.mask(split)
        if not self.ensemble.post:
            return mask
        return self.ensemble.postprocess("test", image_id, self.exact.probability(split), mask)


def encoded_rows(ensemble: Ensemble, workers: int, ids: list[str] | None = None) -> Iterator[tuple[str, str]]:
    """``(image id, RLE)`` of every test image (or of ``ids``), in that order; ``workers`` > 1: that many processes."""
    ids = ensemble.runs[0].test.ids if ids is None else ids
    if workers <= 1:
        keep_freed_memory()
        masks = SubmissionMasks(ensemble)
        return ((image_id, rle.encode(masks(image_id))) for image_id in ids)
    return _pooled(unopened(ensemble), ids, workers)


def unpoolable(ensemble: Ensemble) -> str | None:
    """Why worker processes could not rebuild ``ensemble``, or ``None``.

    A worker imports the merger and post-processors by module name; a plugin loaded from a plugins
    folder lives under a private name that a fresh interpreter cannot import, and a closure does not pickle.
    """
    for part in (ensemble.merge, *(post.apply for post in ensemble.post)):
        module = getattr(part, "func", part).__module__
        if not importable_by_name(module.partition(".")[0]):
            return f"{module} is not importable by name in a worker process"
    try:
        pickle.dumps(unopened(ensemble))
    except (pickle.PicklingError, TypeError, AttributeError) as error:
        return f"the ensemble does not pickle ({error})"
    return None


def importable_by_name(package: str) -> bool:
    """Whether a fresh interpreter finds ``package`` by name, as a spawned worker will.

    Every finder on ``sys.meta_path`` is asked, not only ``PathFinder``: ``pip install -e .`` (what
    ``make install`` does) installs its own finder there, and a worker gets it too from the same
    ``.pth`` file. ``sys.modules`` is not consulted: a plugin loaded from a file is in it under a
    private name that no finder knows.
    """
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is not None and find_spec(package, None) is not None:
            return True
    return False


def unopened(ensemble: Ensemble) -> Ensemble:
    """``ensemble`` with fresh ``Run``s, whose stores a worker opens itself."""
    def fresh(member: Run | Group) -> Run | Group:
        if isinstance(member, Group):
            return Group(member.name, tuple(Run(run.folder, run.summary) for run in member.runs))
        return Run(member.folder, member.summary)

    return replace(ensemble, runs=[fresh(member) for member in ensemble.runs])


def _pooled(ensemble: Ensemble, ids: list[str], workers: int) -> Iterator[tuple[str, str]]:
    # pickled here, by pickle itself: multiprocessing's own pickler rebuilds a functools.partial
    # without its attributes, so a merger's ``pixelwise`` would be lost on the way to the workers
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_start_worker,
                               initargs=(pickle.dumps(ensemble),))
    pending: deque = deque()
    try:
        for start in range(0, len(ids), CHUNK):
            pending.append(pool.submit(_encode_chunk, ids[start:start + CHUNK]))
            if len(pending) >= IN_FLIGHT * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    except BrokenProcessPool:
        raise BenchError("a worker process of the test pass died (out of memory?); --workers 1 runs the pass "
                         "in this process") from None
    finally:
        pool.shutdown(cancel_futures=True)


_masks: SubmissionMasks | None = None  # a worker's own, built once by _start_worker


def _start_worker(ensemble: bytes) -> None:
    global _masks
    keep_freed_memory()
    # One OpenCV thread: the workers already fill the cores (one each), where OpenCV's own pool in every
    # worker (its labelling and lookups run in parallel) would have them contend for the same cores.
    cv2.setNumThreads(1)
    _masks = SubmissionMasks(pickle.loads(ensemble))


def _encode_chunk(ids: list[str]) -> list[tuple[str, str]]:
    return [(image_id, rle.encode(_masks(image_id))) for image_id in ids]
