"""What only a GPU can show: half-precision training on CUDA and CUDA prediction agreeing with the CPU's.

Skipped where torch sees no CUDA device (every CI machine here); ``tools/gpu-check.sh`` runs them on
a lent GPU machine.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from harness.data.carvana import open_carvana
from harness.runs.probabilities import ProbabilityMaps

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (tools/gpu-check.sh)")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_half_precision_run_learns_on_cuda(bench, synthetic_set, tmp_path, tiny_recipe, precision):
    """fp16 trains through a GradScaler, bf16 without one; both must learn the tiny set as fp32 does."""
    recipe = tiny_recipe(tmp_path / "tiny.toml", synthetic_set, epochs=3)
    results = tmp_path / "results"
    done = bench("run", recipe, "--device", "cuda", "--set", f"train.precision={precision}", "--set",
                 "train.channels_last=true", "--results", results, "--name", precision)
    assert done.code == 0, done.err
    summary = json.loads((results / precision / "summary.json").read_text())
    assert summary["oof_dice"] > 0.6 and "cuda" in summary["device"]
    scales = [fold.get("grad_scale") for fold in summary["folds"]]
    if precision == "fp16":  # the GradScaler really scaled: a power of two above 1 (it starts at 65536)
        assert all(scale is not None and scale > 1 and math.log2(scale).is_integer() for scale in scales), scales
    else:
        assert scales == [None, None], "bf16 needs no loss scaling"


def test_cuda_prediction_agrees_with_the_cpu(bench, synthetic_set, tmp_path, tiny_recipe):
    """The same fold models predict the test images on both devices; fp32 kernels differ only in
    summation order, so the thresholded masks agree on all but a few pixels."""
    recipe = tiny_recipe(tmp_path / "tiny.toml", synthetic_set, epochs=1)
    assert bench("run", recipe, "--device", "cpu", "--results", tmp_path / "results", "--name", "run").code == 0
    differ, total = _masks_differ(bench, tmp_path / "results" / "run", synthetic_set, tmp_path)
    assert differ <= total * 1e-4, f"{differ} of {total} pixels differ"


def test_half_precision_prediction_agrees_with_the_cpus_fp32(bench, synthetic_set, tmp_path, tiny_recipe):
    """A run trained in fp16 predicts in fp16 on CUDA and in fp32 on a CPU: the masks differ on at most
    0.5% of the pixels (half precision moves probabilities near the threshold across it)."""
    recipe = tiny_recipe(tmp_path / "tiny.toml", synthetic_set, epochs=2)
    done = bench("run", recipe, "--device", "cuda", "--set", "train.precision=fp16", "--results",
                 tmp_path / "results", "--name", "half")
    assert done.code == 0, done.err
    differ, total = _masks_differ(bench, tmp_path / "results" / "half", synthetic_set, tmp_path)
    assert differ <= total * 5e-3, f"{differ} of {total} pixels differ"


def _masks_differ(bench, run, synthetic_set, tmp_path) -> tuple[int, int]:
    """How many mask pixels of the run's prediction of the test images differ between CPU and CUDA."""
    test_dir = open_carvana(synthetic_set).test_dir
    for device in ("cpu", "cuda"):
        done = bench("predict", run, test_dir, "--out", tmp_path / device, "--format", "maps", "--device", device)
        assert done.code == 0, done.err
    cpu, cuda = (ProbabilityMaps.open(tmp_path / device / "maps") for device in ("cpu", "cuda"))
    differ = sum(int(np.count_nonzero((cpu.quantised(i) >= 128) != (cuda.quantised(i) >= 128))) for i in cpu.ids)
    return differ, sum(h * w for h, w in cpu.shapes.values())


def test_tf32_false_is_true_fp32_and_recorded(bench, synthetic_set, tmp_path, tiny_recipe):
    """train.tf32 = false: convolutions and matmuls in IEEE fp32, as environment.json says."""
    recipe = tiny_recipe(tmp_path / "tiny.toml", synthetic_set, epochs=1)
    results = tmp_path / "results"
    done = bench("run", recipe, "--device", "cuda", "--set", "train.precision=fp32", "--set", "train.tf32=false",
                 "--results", results, "--name", "exact")
    assert done.code == 0, done.err
    environment = json.loads((results / "exact" / "environment.json").read_text())
    assert environment["tf32"] == {"convolutions": "ieee", "matmul": "ieee"}
