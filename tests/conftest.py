"""Shared fixtures: the CLI run in-process, loaded plugins, and a tiny synthetic Carvana set."""

from __future__ import annotations

import os

# Before anything imports albumentations (network ping) or rich (terminal width for tables).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ["COLUMNS"] = "200"

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclass
class BenchResult:
    code: int
    out: str
    err: str


@pytest.fixture
def bench(capsys, monkeypatch):
    """Run ``bench ARGS...`` in this process (torch is imported once, not per call)."""
    from harness import cli

    def run(*args) -> BenchResult:
        monkeypatch.setattr(sys, "argv", ["bench", *map(str, args)])
        try:
            cli.main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        out, err = capsys.readouterr()
        return BenchResult(code, out, err)

    return run


@pytest.fixture(scope="session")
def plugins():
    from harness.plugins import load_plugins

    return load_plugins()


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory) -> Path:
    """A small synthetic set (4 labelled cars, 1 test car, 64x40), written once per session."""
    from harness.synthetic import write_synthetic_carvana

    root = tmp_path_factory.mktemp("synthetic") / "carvana"
    return write_synthetic_carvana(root, cars=4, test_cars=1, size=(64, 40), seed=0)


@pytest.fixture
def carvana_copy(synthetic_set, tmp_path) -> Path:
    """A private copy of the synthetic set that a test may break."""
    return Path(shutil.copytree(synthetic_set, tmp_path / "carvana"))


TINY_RUN = """
name = "{name}"
[data]
root = "{root}"
[folds]
k = 2
seed = {folds_seed}
[model]
name = "smp"
arch = "{arch}"
encoder = "resnet18"
[loss]
name = "bce_dice"
[optimizer]
name = "adam"
lr = 3e-3
[train]
epochs = 2
batch_size = 8
"""


@pytest.fixture(scope="session")
def tiny_runs(synthetic_set, tmp_path_factory) -> dict[str, Path]:
    """Four complete tiny runs for the readers of run folders (compare, ensemble, report).

    ``linknet``, ``unet`` and ``fpn`` share data and splits; ``other_splits`` uses other folds.
    Two epochs each: the point is realistic run folders, not good models.
    """
    from rich.console import Console

    from harness.plugins import load_plugins
    from harness.recipe import load_recipe
    from harness.run import RunRequest, run

    plugins = load_plugins()
    folder = tmp_path_factory.mktemp("tiny_runs")
    variants = {"linknet": ("linknet", 0), "unet": ("unet", 0), "fpn": ("fpn", 0), "other_splits": ("linknet", 1)}
    runs = {}
    for name, (arch, folds_seed) in variants.items():
        path = folder / f"{name}.toml"
        path.write_text(TINY_RUN.format(name=name, root=synthetic_set, arch=arch, folds_seed=folds_seed))
        recipe = load_recipe(path, plugins)
        runs[name] = run(RunRequest(recipe, folder / "results", name=name), plugins, Console(quiet=True))
    return runs
