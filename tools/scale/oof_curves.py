"""The out-of-fold search's cost per image (docs/scale.md): every candidate mixture's Dice curve from the
pixels where the runs disagree (the exact path of ``bench ensemble``) against whole merged maps.

Inputs: 4 runs of full-size car-like out-of-fold maps (the ensemble benchmark's, 9.3% of pixels
disagreeing), 32 distinct images, and 7 mixtures (each run alone, run 0 with each other): what a greedy
step scores. The truth of an image is its undisturbed car, handed to the search in place of a data
folder's masks. Prints milliseconds an image and a mixture for both paths.

    python tools/scale/oof_curves.py        (from the checkout, with its .venv)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "benchmarks")]

import test_bench_ensemble as cars  # noqa: E402  (the benchmark's car-like maps)

from harness.ensemble import ensemble  # noqa: E402
from harness.runs.folder import Run, RunFolder, Summary  # noqa: E402
from harness.runs.probabilities import ProbabilityMaps, quantise  # noqa: E402
from plugins.components import merging  # noqa: E402

IMAGES, RUNS = 32, 4


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="oof-curves-"))
    try:
        measure(folder)
    finally:
        shutil.rmtree(folder)


def measure(folder: Path) -> None:
    ids = [f"{index:012x}_01" for index in range(IMAGES)]
    shapes = np.random.default_rng(0).uniform(-6, 6, (IMAGES, 4))
    truths = {image_id: (cars._soft_car(shapes[k], np.zeros(3)) >= 0.5).astype(np.uint8)
              for k, image_id in enumerate(ids)}
    runs = []
    for run in range(RUNS):
        store = ProbabilityMaps.create(folder / f"run{run}" / "oof_maps", {i: (cars.HEIGHT, cars.WIDTH) for i in ids})
        jitters = np.random.default_rng(100 + run).normal(0, 0.4, (IMAGES, 3))
        for k, image_id in enumerate(ids):
            store.put(image_id, quantise(cars._soft_car(shapes[k], jitters[k])))
        runs.append(Run(RunFolder(folder / f"run{run}"), Summary({})))
    ensemble.read_mask = lambda dataset, image_id: truths[image_id]  # the truth without a data folder
    mixtures = [{run: 1.0} for run in range(RUNS)] + [{0: 1.0, run: 1.0} for run in range(1, RUNS)]
    undeclared = lambda maps, weights: merging.mean()(maps, weights)  # noqa: E731  (no pixelwise: whole maps)
    for name, merge in (("disagreeing pixels", merging.mean()), ("whole maps", undeclared)):
        start = time.perf_counter()
        ensemble._curves(runs, None, merge, mixtures, Console(quiet=True), name)
        seconds = (time.perf_counter() - start) / IMAGES
        print(f"{name}: {seconds * 1000:.1f} ms an image for {len(mixtures)} mixtures of {RUNS} runs "
              f"({seconds / len(mixtures) * 1000:.1f} ms a mixture), {cars.WIDTH}x{cars.HEIGHT}, "
              f"cpu capability {torch.backends.cpu.get_cpu_capability()}")


if __name__ == "__main__":
    main()
