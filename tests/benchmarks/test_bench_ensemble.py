"""Merging full-size test maps into a submission: throughput, and memory that stays flat.

A Carvana submission merges 100,064 maps of 1918x1280 from each member, so the merge must stream:
``test_memory_is_flat`` writes fake stores of two sizes and checks that the peak of traced allocations
(tracemalloc: NumPy reports its buffers to it) does not grow with the number of images.
``test_merge_and_encode`` times one image: read 4 maps, weighted mean, threshold, keep-largest,
RLE. ``test_test_pass_rate`` runs the whole test pass (``harness.ensemble.test_pass``) over 4 members'
car-like maps with 1 and 2 worker processes, with and without post-processing, beside the float path
it replaces, and prints images/s with the CPU's capability. Disabled timing by default (pyproject:
``make test`` runs each once on 32 images);
measure with ``pytest tests/benchmarks/test_bench_ensemble.py --benchmark-enable -s``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
from rich.console import Console

from harness.ensemble import test_pass
from harness.ensemble.ensemble import Ensemble, Post, write_test_submission
from harness.data.submission import write_submission
from harness.runs.folder import Run, RunFolder, Summary
from harness.runs.probabilities import ProbabilityMaps, quantise
from plugins.components import merging as merge

HEIGHT, WIDTH = 1280, 1918
RUNS = 4


def _car_map(shift: int) -> np.ndarray:
    """A car-like probability map (cabin ellipse over a body), soft at the edges, shifted per run."""
    rows, cols = np.ogrid[:HEIGHT, :WIDTH]
    cabin = 1 - np.sqrt(((rows - 520) / 260) ** 2 + ((cols - 960 - shift) / 520) ** 2)
    body = np.minimum(np.minimum(rows - 560, 980 - rows), np.minimum(cols - 180 - shift, 1740 + shift - cols)) / 20
    return np.clip(np.maximum(cabin * 20, body) + 0.5, 0, 1).astype(np.float32)


def _fake_runs(folder: Path, images: int) -> list[Run]:
    """``RUNS`` run folders whose test stores hold ``images`` copies of one full-size map each."""
    ids = [f"{index:012x}_{1 + index % 16:02d}" for index in range(images)]
    runs = []
    for run in range(RUNS):
        store = ProbabilityMaps.create(folder / f"run{run}" / "test_maps", {i: (HEIGHT, WIDTH) for i in ids})
        levels = quantise(_car_map(shift=8 * run))
        for image_id in ids:
            store.put(image_id, levels)
        runs.append(Run(RunFolder(folder / f"run{run}"), Summary({})))  # its test store opens from disk
    return runs


def _ensemble(runs: list[Run]) -> Ensemble:
    return Ensemble(runs, [0.25] * RUNS, merge.mean(), 128, [Post("keep_largest", merge.keep_largest())])


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Iterator[dict[int, list[Run]]]:
    """50 and 200 images of 4 runs (compressed maps), removed afterwards (pytest keeps old temp folders)."""
    root = tmp_path_factory.mktemp("ensemble_bench")
    yield {images: _fake_runs(root / str(images), images) for images in (50, 200)}
    shutil.rmtree(root)


def test_memory_is_flat(stores, tmp_path) -> None:
    outcomes = {}
    for images, runs in stores.items():
        outcomes[images] = write_test_submission(_ensemble(runs), tmp_path / f"{images}.csv.gz", Console(quiet=True))
        assert outcomes[images].images == images
    small, large = outcomes[min(outcomes)], outcomes[max(outcomes)]
    print(f"\npeak traced memory: {small.peak_traced_mb:.1f} MiB at {small.images} images, "
          f"{large.peak_traced_mb:.1f} MiB at {large.images} images; "
          f"{large.images / large.seconds:.1f} images/s")
    # One image's working set (4 maps as float32, merged, mask, labels: ~100 MiB) and nothing that grows.
    assert large.peak_traced_mb < small.peak_traced_mb * 1.1 + 1


def test_merge_and_encode(benchmark, stores) -> None:
    from harness.data import rle

    ensemble = _ensemble(stores[50])
    image_id = ensemble.runs[0].test.ids[0]
    text = benchmark(lambda: rle.encode(ensemble.mask("test", image_id)))
    assert text.count(" ") % 2 == 1  # start/length pairs


DISTINCT = 8  # distinct images per run; the others are hard links to them, so the stores stay small on disk


def _soft_car(shape: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """A car (cabin ellipse over a body box) drawn at 1/8 of the size with a sigmoid edge, upsampled
    bilinearly: levels between 1 and 254 over a band of about 35 pixels along the outline, wider than a
    trained model's. ``shape`` varies the car per image, ``jitter`` (low-resolution pixels) per run."""
    rows, cols = np.ogrid[:HEIGHT // 8, :WIDTH // 8]
    rows, cols = rows - jitter[0], cols - jitter[1]
    cabin = (1 - np.sqrt(((rows - 65 - shape[0]) / 32) ** 2 + ((cols - 120 - shape[1]) / 65) ** 2)) * 32
    body = np.minimum(np.minimum(rows - 70 - shape[0], 122 + shape[2] - rows),
                      np.minimum(cols - 22 - shape[1], 218 + shape[3] - cols))
    low = 1 / (1 + np.exp(-np.maximum(cabin, body) / (0.35 + 0.05 * jitter[2])))
    return cv2.resize(low.astype(np.float32), (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)


def _car_runs(folder: Path, images: int) -> list[Run]:
    """``RUNS`` runs, each image's map the same car with run-specific jitter, ``DISTINCT`` real files per run."""
    ids = [f"{index:012x}_{1 + index % 16:02d}" for index in range(images)]
    shapes = np.random.default_rng(0).uniform(-6, 6, (DISTINCT, 4))
    runs = []
    for run in range(RUNS):
        store = ProbabilityMaps.create(folder / f"run{run}" / "test_maps", {i: (HEIGHT, WIDTH) for i in ids})
        jitters = np.random.default_rng(100 + run).normal(0, 0.4, (DISTINCT, 3))
        for index, image_id in enumerate(ids):
            if index < DISTINCT:
                store.put(image_id, quantise(_soft_car(shapes[index], jitters[index])))
            else:
                os.link(store.file(ids[index % DISTINCT]), store.file(image_id))
        runs.append(Run(RunFolder(folder / f"run{run}"), Summary({})))
    return runs


@pytest.fixture(scope="module")
def car_runs(tmp_path_factory) -> Iterator[list[Run]]:
    root = tmp_path_factory.mktemp("test_pass_bench")
    yield _car_runs(root, 1024)
    shutil.rmtree(root)


def _undeclared(maps, weights):
    """``mean`` without its ``pixelwise`` declaration: the float path, as before the exact merge."""
    return merge.mean()(maps, weights)


POSTS = {"none": [], "convex_hull,keep_largest": [Post("convex_hull", merge.convex_hull()),
                                                  Post("keep_largest", merge.keep_largest())],
         "seed_hull": [Post("seed_hull", merge.seed_hull())]}


@pytest.mark.parametrize("path,workers,post,images", [
    ("float", 1, "none", 64), ("exact", 1, "none", 1024), ("exact", 2, "none", 1024),
    ("exact", 1, "convex_hull,keep_largest", 256), ("exact", 2, "convex_hull,keep_largest", 512),
    ("exact", 2, "seed_hull", 512),
])
def test_test_pass_rate(benchmark, car_runs, tmp_path, path, workers, post, images) -> None:
    import torch

    if benchmark.disabled:  # make test: once, as a test, on two chunks (both workers start) rather than a timing's worth
        images = min(images, 2 * test_pass.CHUNK)
    posts = POSTS[post]
    ensemble = Ensemble(car_runs, [0.45, 0.1, 0.3, 0.15], merge.mean() if path == "exact" else _undeclared, 128, posts)
    ids = car_runs[0].test.ids[:images]
    arrivals = []

    def timed(rows):
        for row in rows:
            arrivals.append(time.perf_counter())
            yield row

    def whole_pass():
        rows = test_pass.encoded_rows(ensemble, workers)
        return write_submission(tmp_path / "submission.csv.gz", timed(row for _, row in zip(ids, rows)))

    arrivals.clear()
    started = time.perf_counter()
    assert benchmark.pedantic(whole_pass, rounds=1, iterations=1) == images
    quarter = images // 4  # from a quarter in: the workers' start (spawn, imports) and first chunks left out
    steady = (images - 1 - quarter) / (arrivals[-1] - arrivals[quarter])
    exact = test_pass.SubmissionMasks(ensemble).exact
    levels = [run.test.quantised(ids[0]) for run in car_runs]
    share = exact.disagreement(levels).pixels() / levels[0].size if exact else float("nan")
    print(f"\n{path} path, {workers} worker(s), post-processing {post}: "
          f"{steady:.1f} images/s steady, {images / (arrivals[-1] - started):.1f} with the start; "
          f"{images} images of {WIDTH}x{HEIGHT}, {RUNS} members, {share:.1%} of pixels disagree; "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, {len(os.sched_getaffinity(0))} cores")
