"""``bench benchmark``: how fast a recipe trains and predicts here, and what its full run would cost.

Model variants are timed with ``harness.engine.timing``; what the model cannot tell is measured apart:
the data pipeline (decode, augment, fit) with the recipe's own loader at several worker counts, and
the engine's training loop against a bare PyTorch loop on the same data (``harness.speed.overhead``).
One JSON file per benchmark goes under ``results/benchmarks/``, with the environment it was measured in.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from harness.data.loading import EpochSampler, Images, TrainingSamples
from harness.engine import compute_choice
from harness.engine.assembly import CACHE_BYTES, Assembly, recipe_fit
from harness.engine.choices import Choices, scale_for
from harness.engine.device import Compute, check_precision, resolve_device
from harness.engine.environment import describe_environment
from harness.engine.timing import (CARVANA_PIXELS, carvana_cost, gflops_per_image, matmul_gflops, measure_variant,
                                   train_gflops_per_image)
from harness.errors import BenchError
from harness.io import atomic_write_json
from harness.recipe.plugins import Plugins
from harness.recipe.schema import Recipe
from harness.speed.overhead import overhead_ratio
from harness.tables import as_csv, as_markdown, print_table

VARIANTS = ("fp32", "fp32+cl", "bf16", "bf16+cl", "fp16+cl", "bf16+cl+compile")


def parse_variant(name: str, device: torch.device) -> tuple[Compute, bool]:
    """``bf16+cl+compile`` -> (bf16 autocast with channels_last, compiled)."""
    parts = name.split("+")
    if parts[0] not in ("fp32", "bf16", "fp16") or not set(parts[1:]) <= {"cl", "compile"}:
        raise BenchError(f"--variants {name}: expected PRECISION[+cl][+compile], PRECISION one of fp32, bf16, fp16")
    check_precision(device, parts[0])
    return Compute(device, parts[0], "cl" in parts), "compile" in parts


def variant_names(requested: str, device: torch.device) -> list[str]:
    """``--variants``: ``auto`` (what ``auto`` chooses among here), ``all``, or a comma-separated list."""
    if requested == "auto":
        return [v.name for v in compute_choice.candidates(device)]
    if requested == "all":
        return [v for v in VARIANTS if device.type == "cuda" or not v.startswith("fp16")]
    return [v.strip() for v in requested.split(",") if v.strip()]


def recipe_variant(recipe: Recipe, compute: Compute) -> str:
    """The variant a run of this recipe uses on this device."""
    name = compute.precision + ("+cl" if compute.channels_last else "")
    return name + ("+compile" if recipe.train.compile else "")


def benchmark_recipe(recipe: Recipe, plugins: Plugins, console, *, device: str | None, variants: str,
                     size: tuple[int, int] | None, batch_size: int | None, warmup: int, repeats: int,
                     loader_batches: int, worker_counts: list[int], skip: set[str] = frozenset()) -> dict[str, Any]:
    """Measure everything ``bench benchmark`` reports; return it as a JSON-ready dict."""
    where = resolve_device(device)
    check_precision(where, recipe.train.precision)
    names = variant_names(variants, where)
    for name in names:  # a bad --variants is one line before anything is measured
        parse_variant(name, where)
    parts = Assembly(recipe, plugins)
    dataset = parts.dataset()
    parts = replace(parts, choices=scale_for(recipe, dataset))  # input.size = "objects": as a run would choose
    fit = parts.fit_for(dataset)
    image_height, image_width = next(iter(dataset.sizes.values()))
    height, width = (size[1], size[0]) if size else fit.input_shape(image_height, image_width)
    batch = batch_size or recipe.train.batch_size
    workload = parts.timing_workload(height, width, batch)
    base, decision = parts.choose_compute(where, workload, console)
    auto = compute_choice.choose(where, "auto", "auto", workload).chosen.name  # usually cached by the line above
    auto += "+compile" if recipe.train.compile else ""
    model, loss = workload.build_model(), workload.loss
    forward_gflops = gflops_per_image(model, height, width)
    train_gflops = train_gflops_per_image(model, loss, height, width)
    timings = []
    for name in dict.fromkeys([recipe_variant(recipe, base), *names]):
        compute, compile_model = parse_variant(name, where)
        timing = measure_variant(name, model, workload.make_optimizer, loss, compute, batch, height, width,
                                 recipe.predict.tta, warmup, repeats, compile_model)
        peak = peak_gflops(where, compute.precision)
        timing.train_peak_fraction = round(timing.train_images_per_s * train_gflops / peak, 4)
        timing.infer_peak_fraction = round(timing.infer_images_per_s * forward_gflops / peak, 4)
        timing.auto = name == auto
        timings.append(timing)
    reference = timings[0]
    auto_workers = parts.loader_workers(base)
    loader = None
    if "loader" not in skip:
        loader = loader_sweep(parts, dataset, fit, batch, loader_batches, worker_counts)
        loader["recipe_workers"] = auto_workers
        loader["verdict"] = loader_verdict(loader["images_per_s"], reference.train_images_per_s, auto_workers)
    return {
        "recipe": recipe.name,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": describe_environment(base, decision),
        "input": [width, height],
        "batch_size": batch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "gflops_per_image": round(forward_gflops, 2),
        "train_gflops_per_image": round(train_gflops, 2),
        "peak_gflops": {p: round(peak_gflops(where, p), 1)
                        for p in dict.fromkeys(t.variant.split("+")[0] for t in timings)},
        "variants": [asdict(t) for t in timings],
        "auto_variant": auto,  # marked in the table when measured among the variants
        "loader": loader,
        "harness_overhead": None if "overhead" in skip else
        overhead_ratio(model, workload.make_optimizer, loss, base, batch, height, width, steps=10, repeats=5),
        "carvana_cost": asdict(carvana_cost(reference.train_images_per_s, reference.infer_tta_images_per_s,
                                            height * width, recipe.folds.k, recipe.train.epochs,
                                            carvana_input_pixels(recipe, parts.choices))),
        "carvana_cost_variant": reference.variant,
        "carvana_cost_schedule": {"folds": recipe.folds.k, "epochs": recipe.train.epochs, "tta": recipe.predict.tta},
    }


def peak_gflops(device: torch.device, precision: str) -> float:
    """This device's matmul peak in ``precision`` (``harness.engine.timing.matmul_gflops``), measured once and cached."""
    key = f"{compute_choice.device_description(device)} {precision}"
    path = compute_choice.cache_file("peak", key)
    try:
        return float(json.loads(path.read_text())["gflops"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    gflops = matmul_gflops(device, precision, max_size=8192 if device.type == "cuda" else 2048)
    compute_choice.write_cache_file(path, {"measured_on": key, "gflops": gflops})
    return gflops


def carvana_input_pixels(recipe: Recipe, choices: Choices = Choices()) -> int:
    """Pixels the network sees per Carvana image (1918x1280): its fixed input, its short-side resize, or
    padded; for ``input.size = "objects"``, at the scale ``choices`` holds (the benchmark's data's)."""
    if recipe.input.size == "original":
        return CARVANA_PIXELS
    height, width = recipe_fit(recipe, choices).input_shape(1280, 1918)
    return width * height


def loader_sweep(parts: Assembly, dataset, fit, batch: int, batches: int,
                 worker_counts: list[int]) -> dict[str, Any]:
    """Decode + preprocess + augment + fit throughput of the recipe's loader, per worker count.

    Measured without the decoded-image cache (every sample decoded), which is the pipeline's real
    work; whether a run would cache the set is reported beside it.
    """
    images = Images(dataset, dataset.train, parts.transforms("preprocess"), cache_bytes=0)
    samples = TrainingSamples(images, range(len(images)), parts.transforms("augment"), fit, seed=parts.recipe.seed,
                              augment_on_input=parts.recipe.input.augment_on == "input")
    images_per_s = {}
    for workers in worker_counts:
        loader = torch.utils.data.DataLoader(samples, batch_size=batch, num_workers=workers,
                                             sampler=EpochSampler(len(samples), 0, shuffle=True))
        iterator = iter(loader)
        next(iterator)  # worker start-up is paid once per run, not per batch
        started, seen = time.perf_counter(), 0
        for _, (images_batch, _masks) in zip(range(batches), iterator):
            seen += len(images_batch)
        images_per_s[workers] = round(seen / (time.perf_counter() - started), 1)
    needed = sum(h * w * 4 for h, w in dataset.sizes.values())
    return {"images_per_s": images_per_s, "cached_in_a_run": needed <= CACHE_BYTES}


def loader_verdict(images_per_s: dict[int, float], model_images_per_s: float, recipe_workers: int) -> str:
    enough = [w for w, speed in sorted(images_per_s.items()) if speed >= model_images_per_s]
    own = images_per_s.get(recipe_workers)
    if own is not None and own >= model_images_per_s:
        return f"keeps up: {own:.0f} images/s with {recipe_workers} workers against the model's {model_images_per_s:.0f}"
    if enough:
        return f"starves the model with {recipe_workers} workers; {enough[0]} workers keep up"
    return f"starves the model at every worker count tried (model: {model_images_per_s:.0f} images/s)"


def write_result(result: dict[str, Any], results: Path) -> Path:
    device = result["variants"][0]["variant"]
    stamp = result["measured_at"].replace(":", "").replace("-", "")[:15]
    path = results / "benchmarks" / f"{result['recipe']}-{result['environment']['device'].split()[0]}-{device}-{stamp}.json"
    atomic_write_json(path, result)
    return path


def _rate(images_per_s: float) -> str:
    """Three significant digits: a CPU at full size does 0.0427 images/s, which .1f would show as 0.0."""
    return f"{images_per_s:.3g}"


def print_result(result: dict[str, Any], path: Path, console: Console, wide: bool = False, fmt: str = "table") -> None:
    """The benchmark as a table of variants (split to fit the console unless ``wide``: ``harness.tables``),
    then model facts, loader, overhead and cost lines; or as markdown, or for scripts as the json written
    to ``path`` or the variants as csv (the other lines then go to stderr)."""
    if fmt == "json":
        console.out(json.dumps(result, indent=2), highlight=False)
    elif fmt == "csv":
        variants = result["variants"]
        console.out(as_csv(list(variants[0]), [list(v.values()) for v in variants]), end="", highlight=False)
    title = (f"{result['recipe']}: {result['input'][0]}x{result['input'][1]}, batch {result['batch_size']}, "
             f"{result['environment']['device']}")
    headers = ("variant", "train img/s", "train % of peak", "step ms p50", "step ms p95", "infer img/s",
               "infer % of peak", "infer+TTA img/s", "peak MB", "compile s", "note")
    rows = [[v["variant"], _rate(v["train_images_per_s"]), f"{100 * v['train_peak_fraction']:.1f}",
             f"{v['train_step_ms_p50']:.0f}", f"{v['train_step_ms_p95']:.0f}", _rate(v["infer_images_per_s"]),
             f"{100 * v['infer_peak_fraction']:.1f}", _rate(v["infer_tta_images_per_s"]), f"{v['peak_memory_mb']:.0f}",
             "" if v["compile_seconds"] is None else f"{v['compile_seconds']:.0f}",
             "; ".join(filter(None, ["auto picks this" if v["auto"] else "", v["note"]]))]
            for v in result["variants"]]
    if fmt == "markdown":
        console.out(f"### {title}\n\n{as_markdown(headers, rows)}\n", highlight=False)
    elif fmt == "table":
        print_table(console, title, headers, rows, key=("variant",), decisive=("train img/s", "infer img/s"),
                    left=("variant", "note"), wide=wide)
    lines = Console(stderr=True, soft_wrap=True) if fmt in ("json", "csv") else console
    for line in _result_lines(result, path):
        lines.print(line, highlight=False, markup=False)


def _result_lines(result: dict[str, Any], path: Path) -> list[str]:
    """What the variants table leaves out: peak GFLOP/s, the model, loader, overhead, Carvana's cost, the file."""
    peaks = ", ".join(f"{precision} {gflops:,.0f}" for precision, gflops in result["peak_gflops"].items())
    lines = [f"peak: a square matmul here reaches {peaks} GFLOP/s (CPU capability "
             f"{result['environment']['cpu_capability']}); % of peak = images/s x GFLOPs per image "
             f"({result['train_gflops_per_image']:.1f} training, {result['gflops_per_image']:.1f} inference) / peak",
             f"model: {result['parameters'] / 1e6:.1f} M parameters, {result['gflops_per_image']:.1f} GFLOPs per image "
             "(forward)"]
    loader, overhead, cost = result["loader"], result["harness_overhead"], result["carvana_cost"]
    if loader:
        speeds = ", ".join(f"{w} workers {s:.0f}" for w, s in loader["images_per_s"].items())
        lines.append(f"data pipeline (decode + augment + fit, images/s): {speeds}; {loader['verdict']}")
    if overhead:
        lines.append(f"harness overhead: {overhead['ratio']:.3f}x a bare PyTorch loop "
                     f"({overhead['harness_seconds']:.3f} s vs {overhead['bare_seconds']:.3f} s)")
    schedule = result["carvana_cost_schedule"]
    lines.append(f"full Carvana at this recipe's {schedule['folds']} folds x {schedule['epochs']} epochs, TTA "
                 f"{schedule['tta']} ({result['carvana_cost_variant']}, one device of this kind): "
                 f"{cost['total_hours']:,.0f} h ({cost['train_hours']:,.0f} h training, {cost['test_hours']:,.0f} h test); "
                 f"{cost['assumption']}")
    return [*lines, f"written to {path}"]
