"""Replace runs' test maps by the car-like maps of tests/benchmarks/test_bench_ensemble.py (the same
shapes and per-run jitters, about 9% of pixels disagreeing), so that tools/scale/ensemble.sh times
bench ensemble on the maps the in-process benchmark reads.

    python tools/scale/car_maps.py RUN [RUN ...]      (from the checkout)
"""
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "benchmarks"))
import test_bench_ensemble as bench  # noqa: E402
from harness.runs.probabilities import ProbabilityMaps, quantise  # noqa: E402

for run, folder in enumerate(sys.argv[1:]):
    old = ProbabilityMaps.open(Path(folder) / "test_maps")
    ids = old.ids
    shapes = np.random.default_rng(0).uniform(-6, 6, (bench.DISTINCT, 4))
    jitters = np.random.default_rng(100 + run).normal(0, 0.4, (bench.DISTINCT, 3))
    new_folder = Path(folder) / "test_maps.car"
    shutil.rmtree(new_folder, ignore_errors=True)
    store = ProbabilityMaps.create(new_folder, {i: (bench.HEIGHT, bench.WIDTH) for i in ids})
    for index, image_id in enumerate(ids):
        if index < bench.DISTINCT:
            store.put(image_id, quantise(bench._soft_car(shapes[index], jitters[index])))
        else:
            os.link(store.file(ids[index % bench.DISTINCT]), store.file(image_id))
    shutil.rmtree(Path(folder) / "test_maps")
    os.rename(new_folder, Path(folder) / "test_maps")
    print(folder, "test maps: the benchmark's car-like maps")
