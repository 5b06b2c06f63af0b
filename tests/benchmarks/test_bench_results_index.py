"""Scanning a results folder of 1,000 runs: the index ``bench compare`` and ``bench report`` start from.

Issue 5 asks that reading 1,000 runs stay under a few seconds. Disabled by default (pyproject passes
``--benchmark-disable``, so it runs once as a test); measure with
``pytest tests/benchmarks/test_bench_results_index.py --benchmark-enable``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.evaluate.results import scan

RUNS = 1000
UNFINISHED_EVERY = 10  # one run in ten has no summary.json yet


@pytest.fixture(scope="module")
def results_folder(tmp_path_factory) -> Path:
    """1,000 run folders shaped like bench run's: recipe.toml, splits.json, fold folders, summary.json."""
    root = tmp_path_factory.mktemp("results")
    folds = [{"fold": k, "best_epoch": 40, "epochs": 52, "val_dice": 0.9965, "train_seconds": 7200.0,
              "train_images_per_s": 2.1, "val_images_per_s": 9.5} for k in range(5)]
    for index in range(RUNS):
        folder = root / f"recipe{index % 7}-{index:08x}"
        for k in range(5):
            (folder / f"fold-{k}").mkdir(parents=True)
            (folder / f"fold-{k}" / "fold.json").write_text(json.dumps(folds[k]))
        (folder / "recipe.toml").write_text(f'name = "recipe{index % 7}"\n')
        (folder / "splits.json").write_text('{"k": 5}')
        if index % UNFINISHED_EVERY:
            summary = {"complete": True, "recipe": f"recipe{index % 7}", "run": folder.name,
                       "splits_hash": "ab" * 32, "data": "/data/carvana", "oof_dice": 0.9965 + index * 1e-7,
                       "fold_dice_mean": 0.9965, "fold_dice_std": 0.0004, "folds": folds,
                       "train_seconds": 36000.0, "train_images_per_s": 2.1, "inference_images_per_s": 9.5,
                       "parameters": 21_771_937, "device": "cuda:0 (NVIDIA H100), bf16", "train_images": 5088}
            (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return root


def test_scan_1000_runs(benchmark, results_folder):
    index = benchmark(scan, [], results_folder)
    assert len(index.complete) == RUNS - RUNS // UNFINISHED_EVERY
    assert len(index.unfinished) == RUNS // UNFINISHED_EVERY
    assert all(u.folds_done == 5 for u in index.unfinished)
