"""Where ``bench predict`` spends its time per image: each step of ``harness.engine.inference`` timed alone.

``python tools/scale/profile_predict.py RUN IMAGES_FOLDER [BATCH]`` predicts the folder's first 16
images in batches of BATCH (default 1), three times, with the run's fold models, in fp32 on the CPU,
and prints the mean milliseconds per image of: decode, fit, stack, normalise, the models with TTA, restore and merge,
quantise, RLE. docs/scale.md records its figures.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from harness.data import rle
from harness.data.image_files import decode_image
from harness.data.loading import to_chw
from harness.engine.assembly import Assembly
from harness.engine.device import Compute
from harness.engine.inference import Predictor
from harness.engine.predict import combine, quantised, variant_logits
from harness.memory import keep_freed_memory
from harness.recipe.plugins import load_plugins
from harness.recipe.schema import load_recipe
from harness.runs.folder import RunFolder

REPEATS = 3
IMAGES = 16


def main() -> None:
    run, folder = RunFolder(Path(sys.argv[1])), Path(sys.argv[2])
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    plugins = load_plugins()
    recipe = load_recipe(run.recipe_toml, plugins)
    predictor = Predictor.from_folds(Assembly(recipe, plugins), run.folds(), Compute(torch.device("cpu"), "fp32", False))
    spec = recipe.predict
    paths = sorted(folder.glob("*.jpg"))[:IMAGES]
    keep_freed_memory()
    spent: dict[str, float] = {}

    def step(name: str, started: float) -> float:
        spent[name] = spent.get(name, 0.0) + time.perf_counter() - started
        return time.perf_counter()

    for start in [s for _ in range(REPEATS) for s in range(0, len(paths), batch)]:
        clock = time.perf_counter()
        images = [decode_image(path) for path in paths[start:start + batch]]
        clock = step("decode", clock)
        fitted = [to_chw(predictor.fit.array(image)) for image in images]
        clock = step("fit", clock)
        with torch.inference_mode():
            stacked = torch.stack(fitted)
            clock = step("stack", clock)
            normalised = predictor.normalise(stacked)
            clock = step("normalise", clock)
            per_model = variant_logits(predictor.models, normalised, spec.tta, predictor.compute, spec.tiling)
            clock = step(f"{len(predictor.models)} models x TTA {spec.tta}", clock)
            maps = [combine(per_model, i, *image.shape[:2], predictor.fit, spec.average, spec.fold_average)
                    for i, image in enumerate(images)]
            clock = step("restore, merge", clock)
            levels = [quantised(probability).numpy() for probability in maps]
            clock = step("quantise", clock)
        [rle.encode(level >= 128) for level in levels]
        step("rle", clock)
    per_image = {name: round(seconds / REPEATS / len(paths) * 1000, 1) for name, seconds in spent.items()}
    print(f"ms per image, batch {batch}: {per_image}; total {sum(per_image.values()):.1f}; "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")


if __name__ == "__main__":
    main()
