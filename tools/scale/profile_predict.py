"""Where ``bench predict`` spends its time per image on a CPU: each step of a loader worker's work, timed alone.

``python tools/scale/profile_predict.py RUN IMAGES_FOLDER`` predicts the folder's first 16 images one
at a time, three times, on one thread as each worker does (``harness.engine.inference``), with the
run's fold models in fp32 and its recipe's ``predict.compile``, and prints the mean milliseconds per
image of: decode, fit (with the split into planes), predict (normalise, the models with TTA, restore,
merge and quantise: one graph when compiled), and RLE (encoding the mask). docs/scale.md records its
figures.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from harness.data.image_files import ImageFile, Sample, decode_image, to_chw
from harness.engine.assembly import Assembly
from harness.engine.device import Compute
from harness.engine.inference import Predictor
from harness.engine.outputs import RleMask
from harness.memory import keep_freed_memory
from harness.recipe.plugins import load_plugins
from harness.recipe.schema import load_recipe
from harness.runs.folder import RunFolder

REPEATS = 3
IMAGES = 16


def main() -> None:
    run, folder = RunFolder(Path(sys.argv[1])), Path(sys.argv[2])
    plugins = load_plugins()
    recipe = load_recipe(run.recipe_toml, plugins)
    predictor = Predictor.from_folds(Assembly(recipe, plugins), run.folds(), Compute(torch.device("cpu"), "fp32", False))
    paths = sorted(folder.glob("*.jpg"))[:IMAGES]
    torch.set_num_threads(1)
    keep_freed_memory()
    predictor.compiled(ImageFile(paths[0].stem, paths[0]), 1, in_workers=False)
    encode = RleMask(recipe.predict.threshold)
    spent: dict[str, float] = {}

    def step(name: str, started: float) -> float:
        spent[name] = spent.get(name, 0.0) + time.perf_counter() - started
        return time.perf_counter()

    for index, path in [(i, p) for _ in range(REPEATS) for i, p in enumerate(paths)]:
        clock = time.perf_counter()
        image = decode_image(path)
        clock = step("decode", clock)
        sample = Sample(index, to_chw(predictor.fit.array(image)), image.shape[:2])
        clock = step("fit", clock)
        (predicted,) = predictor.predicted([sample])
        clock = step("predict", clock)
        encode(predicted.levels)
        step("rle", clock)
    per_image = {name: round(seconds / REPEATS / len(paths) * 1000, 1) for name, seconds in spent.items()}
    print(f"ms per image on one thread, predict.compile = {bool(recipe.predict.compile)}: {per_image}; "
          f"total {sum(per_image.values()):.1f}; cpu capability {torch.backends.cpu.get_cpu_capability()}")


if __name__ == "__main__":
    main()
