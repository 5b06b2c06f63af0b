"""Merging full-size test maps into a submission: throughput, and memory that stays flat.

A Carvana submission merges 100,064 maps of 1918x1280 from each member, so the merge must stream:
``test_memory_is_flat`` writes fake stores of two sizes and checks that the peak of traced allocations
(tracemalloc: NumPy reports its buffers to it) does not grow with the number of images.
``test_merge_and_encode`` times one image: read 4 maps, weighted mean, threshold, keep-largest,
RLE. Disabled timing by default (pyproject); measure with
``pytest tests/benchmarks/test_bench_ensemble.py --benchmark-enable -s``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from rich.console import Console

from harness.ensemble.ensemble import Ensemble, Post, write_test_submission
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
