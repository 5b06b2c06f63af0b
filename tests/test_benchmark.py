"""`bench benchmark`: it measures what it claims, writes a parseable result, and says how it fell back."""

from __future__ import annotations

import json

import pytest
import torch

from harness.engine.device import Compute
from harness.engine.timing import CARVANA_TEST_IMAGES, CARVANA_TRAIN_IMAGES, carvana_cost, gflops_per_image, measure_variant
from plugins.components.losses import bce_dice

TTA = '[predict]\ntta = "hflip"'


def test_bench_benchmark_writes_a_complete_result(bench, synthetic_set, tmp_path, tiny_recipe, monkeypatch):
    monkeypatch.setenv("SEGBENCH_CPU_BF16", "0")  # the candidates of a CPU without native bf16, on any CPU
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))
    recipe = tiny_recipe(tmp_path / "tiny.toml", synthetic_set, epochs=3, batch_size=4, extra=TTA)
    result = bench("benchmark", recipe, "--results", tmp_path, "--repeats", 2, "--warmup", 1, "--workers", "0,1")
    assert result.code == 0, result.err
    (path,) = (tmp_path / "benchmarks").glob("tiny-*.json")
    measured = json.loads(path.read_text())
    assert [v["variant"] for v in measured["variants"]] == ["fp32", "fp32+cl"]  # the recipe's, then auto's candidates
    assert sum(v["auto"] for v in measured["variants"]) == 1 and "auto picks this" in result.out
    assert set(measured["peak_gflops"]) == {"fp32"} and measured["peak_gflops"]["fp32"] > 0
    for variant in measured["variants"]:
        assert variant["train_images_per_s"] > 0 and variant["infer_images_per_s"] > 0
        assert variant["train_step_ms_p95"] >= variant["train_step_ms_p50"] > 0
        assert variant["peak_memory_mb"] > 0 and variant["batch_size"] == 4
        assert 0 < variant["train_peak_fraction"] and 0 < variant["infer_peak_fraction"]
    assert measured["input"] == [64, 64] and measured["train_gflops_per_image"] > measured["gflops_per_image"] > 0
    assert measured["parameters"] > 1e5
    assert set(measured["loader"]["images_per_s"]) == {"0", "1"} and measured["loader"]["verdict"]
    assert measured["harness_overhead"]["ratio"] > 0
    assert measured["carvana_cost"]["total_hours"] > 0 and measured["environment"]["packages"]["torch"]
    assert "harness overhead" in result.out and "full Carvana" in result.out


def test_unknown_variant_is_one_line(bench, synthetic_set, tmp_path, tiny_recipe):
    recipe = tiny_recipe(tmp_path / "tiny.toml", synthetic_set, epochs=3, batch_size=4, extra=TTA)
    result = bench("benchmark", recipe, "--variants", "fp8", "--results", tmp_path)
    assert result.code == 2 and "--variants fp8" in result.err and len(result.err.strip().splitlines()) == 1


class RunsOutOfMemoryAbove(torch.nn.Module):
    """A model that fails like an exhausted GPU whenever the batch is larger than ``limit``."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.conv = limit, torch.nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.conv(x)


def test_out_of_memory_halves_the_batch_and_says_so():
    compute = Compute(torch.device("cpu"), "fp32", channels_last=False)
    timing = measure_variant("fp32", RunsOutOfMemoryAbove(2), lambda p: torch.optim.SGD(p, lr=0.1), bce_dice(),
                             compute, batch_size=8, height=32, width=32, tta="none", warmup=1, repeats=2)
    assert timing.batch_size == 2 and "out of memory at batch 4" in timing.note


def test_flops_of_one_convolution_match_the_formula():
    conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    assert gflops_per_image(conv, 32, 48) == pytest.approx(2 * 3 * 8 * 9 * 32 * 48 / 1e9)


def test_carvana_cost_arithmetic():
    cost = carvana_cost(train_images_per_s=10.0, infer_tta_images_per_s=20.0, measured_pixels=1920 * 1280,
                        folds=5, epochs=2)
    train = (CARVANA_TRAIN_IMAGES * 4 * 2 / 10 + CARVANA_TRAIN_IMAGES * 2 / 20) / 3600
    test = CARVANA_TEST_IMAGES * 5 / 20 / 3600
    assert (cost.train_hours, cost.test_hours) == (round(train, 1), round(test, 1))
    assert "x1.0" in cost.assumption


def test_compare_shows_the_cost_of_a_benchmark_on_the_same_device(bench, tiny_runs, tmp_path):
    import shutil

    run = shutil.copytree(tiny_runs["linknet"], tmp_path / "results" / "linknet")
    summary = json.loads((run / "summary.json").read_text())
    (tmp_path / "results" / "benchmarks").mkdir()
    for device, hours, stamp in ((summary["device"], 1234.5, "2026-01-02"), ("cuda:0 (H100)", 9.0, "2026-01-03")):
        result = {"recipe": "linknet", "measured_at": stamp, "environment": {"device": device},
                  "carvana_cost": {"total_hours": hours}}
        (tmp_path / "results" / "benchmarks" / f"linknet-{stamp}.json").write_text(json.dumps(result))
    shown = bench("compare", run, "--format", "json")
    assert shown.code == 0, shown.err
    (row,) = json.loads(shown.out)["groups"][0]["rows"]
    assert row["carvana_hours"] == 1234.5 and row["software"].startswith("torch ")


def test_skipped_parts_are_absent_and_bad_skip_is_one_line(bench, synthetic_set, tmp_path, tiny_recipe):
    recipe = tiny_recipe(tmp_path / "tiny.toml", synthetic_set, epochs=3, batch_size=4, extra=TTA)
    bad = bench("benchmark", recipe, "--skip", "loader,gpu", "--results", tmp_path)
    assert bad.code == 2 and "--skip loader,gpu" in bad.err and len(bad.err.strip().splitlines()) == 1
    result = bench("benchmark", recipe, "--results", tmp_path, "--repeats", 2, "--warmup", 1,
                   "--variants", "fp32", "--skip", "loader,overhead", "--format", "json")
    assert result.code == 0, result.err
    (path,) = (tmp_path / "benchmarks").glob("tiny-*.json")
    measured = json.loads(path.read_text())
    assert measured["loader"] is None and measured["harness_overhead"] is None
    assert [v["variant"] for v in measured["variants"]] == ["fp32"]
    assert json.loads(result.out) == measured, "--format json: stdout is the result file, the rest on stderr"
    assert f"written to {path}" in result.err


@pytest.mark.parametrize("fmt", ["csv", "markdown"])
def test_a_benchmark_prints_as_csv_or_markdown(fmt, tmp_path):
    import io

    from rich.console import Console

    from harness.speed.benchmark import print_result

    variant = {"variant": "fp32", "auto": True, "note": "", "train_images_per_s": 12.5, "train_peak_fraction": 0.25,
               "train_step_ms_p50": 640.0, "train_step_ms_p95": 700.0, "infer_images_per_s": 50.0,
               "infer_peak_fraction": 0.3, "infer_tta_images_per_s": 25.0, "peak_memory_mb": 900.0,
               "compile_seconds": None}
    result = {"recipe": "tiny", "input": [64, 40], "batch_size": 4, "variants": [variant],
              "environment": {"device": "cpu (AVX2)", "cpu_capability": "AVX2"}, "peak_gflops": {"fp32": 80.0},
              "train_gflops_per_image": 1.0, "gflops_per_image": 0.5, "parameters": 1e6, "loader": None,
              "harness_overhead": None, "carvana_cost": {"total_hours": 3.0, "train_hours": 2.0, "test_hours": 1.0,
                                                         "assumption": "scaled"},
              "carvana_cost_schedule": {"folds": 2, "epochs": 3, "tta": "none"}, "carvana_cost_variant": "fp32"}
    out = io.StringIO()
    print_result(result, tmp_path / "b.json", Console(file=out, width=80), fmt=fmt)
    text = out.getvalue()
    if fmt == "csv":
        assert text.splitlines()[:2] == [",".join(variant), "fp32,True,,12.5,0.25,640.0,700.0,50.0,0.3,25.0,900.0,"]
    else:
        assert "| variant | train img/s |" in text and "| fp32 | 12.5 | 25.0 |" in text and "written to" in text
