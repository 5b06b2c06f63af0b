"""Shared fixtures: the CLI run in-process, loaded plugins, and a tiny synthetic Carvana set."""

from __future__ import annotations

import os

# Before anything imports albumentations (network ping) or rich (terminal width for tables).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ["COLUMNS"] = "200"
if os.environ.get("PYTEST_XDIST_WORKER"):  # make test runs a worker per core: one thread each, and their
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # subprocesses too, rather than every worker on every core

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
    from harness.recipe.plugins import load_plugins

    return load_plugins()


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory) -> Path:
    """A small synthetic set (4 labelled cars, 1 test car, 64x40), written once per session."""
    from harness.data.synthetic import write_synthetic_carvana

    root = tmp_path_factory.mktemp("synthetic") / "carvana"
    return write_synthetic_carvana(root, cars=4, test_cars=1, size=(64, 40), seed=0)


@pytest.fixture(scope="session")
def tune_set(tmp_path_factory) -> Path:
    """For bench tune: 8 cars, so each of 2 folds validates 4, enough pairs for a Wilcoxon test to prune."""
    from harness.data.synthetic import write_synthetic_carvana

    return write_synthetic_carvana(tmp_path_factory.mktemp("tune") / "carvana", cars=8, test_cars=1,
                                   size=(64, 40), seed=0)


@pytest.fixture
def carvana_copy(synthetic_set, tmp_path) -> Path:
    """A private copy of the synthetic set that a test may break."""
    return Path(shutil.copytree(synthetic_set, tmp_path / "carvana"))


# A UNet on a 3-stage RegNetX-200MF (0.14 M parameters): on the tiny set it reaches the Dice of a
# ResNet18 UNet (14 M) in a third of the time, and its checkpoints are 0.6 MB instead of 57.
SMALL_ENCODER = 'encoder = "tu-regnetx_002"\nencoder_depth = 3'
SMALL_SMP_UNET = f'name = "smp"\narch = "unet"\n{SMALL_ENCODER}\ndecoder_channels = [64, 32, 16]'
SMALL_SMP_MODELS = {  # three architectures for the readers of several runs (FPN needs all 5 stages)
    "unet": SMALL_SMP_UNET,
    "linknet": f'name = "smp"\narch = "linknet"\n{SMALL_ENCODER}',
    "fpn": 'name = "smp"\narch = "fpn"\nencoder = "tu-regnetx_002"',
}
SMALL_SCRATCH_UNET = 'name = "unet"\nbase_filters = 8\ndepth = 3\nup_convs = 1'


def write_tiny_recipe(path: Path, root: Path, *, name: str = "tiny", model: str = SMALL_SMP_UNET,
                      epochs: int = 2, batch_size: int = 8, folds_seed: int = 0, extra: str = "") -> Path:
    """A recipe that trains in seconds on the tiny synthetic set; ``extra`` adds TOML tables.

    fp32 and the default memory format, stated: tests must not depend on which precision this CPU
    runs fastest (bf16 autocast is 10x slower than fp32 on a CPU without native bf16).
    """
    path.write_text(f"""
name = "{name}"
[data]
root = "{root}"
[folds]
k = 2
seed = {folds_seed}
[model]
{model}
[loss]
name = "bce_dice"
[optimizer]
name = "adam"
lr = 3e-3
[train]
epochs = {epochs}
batch_size = {batch_size}
precision = "fp32"
channels_last = false
{extra}
""")
    return path


@pytest.fixture(scope="session")
def tiny_recipe():
    """``tiny_recipe(path, data_root, **options)`` writes a tiny recipe (see ``write_tiny_recipe``)."""
    return write_tiny_recipe


@pytest.fixture(scope="session")
def tiny_runs(synthetic_set, tmp_path_factory, tiny_recipe) -> dict[str, Path]:
    """Four complete tiny runs for the readers of run folders (compare, ensemble, report).

    ``linknet``, ``unet`` and ``fpn`` share data and splits; ``other_splits`` uses other folds.
    Two epochs each: the point is realistic run folders, not good models.
    """
    from rich.console import Console

    from harness.engine.run import RunRequest, run
    from harness.recipe.plugins import load_plugins
    from harness.recipe.schema import load_recipe

    plugins = load_plugins()
    folder = tmp_path_factory.mktemp("tiny_runs")
    variants = {"linknet": ("linknet", 0), "unet": ("unet", 0), "fpn": ("fpn", 0), "other_splits": ("linknet", 1)}
    runs = {}
    for name, (arch, folds_seed) in variants.items():
        path = tiny_recipe(folder / f"{name}.toml", synthetic_set, name=name, model=SMALL_SMP_MODELS[arch],
                           folds_seed=folds_seed)
        recipe = load_recipe(path, plugins)
        runs[name] = run(RunRequest(recipe, folder / "results", name=name), plugins, Console(quiet=True))
    return runs


@pytest.fixture(scope="session")
def other_data_run(tmp_path_factory, tiny_recipe) -> Path:
    """A complete tiny run on other data (a second synthetic set, another seed: other cars and masks),
    which readers of runs must refuse to rank or merge with ``tiny_runs``."""
    from rich.console import Console

    from harness.data.synthetic import write_synthetic_carvana
    from harness.engine.run import RunRequest, run
    from harness.recipe.plugins import load_plugins
    from harness.recipe.schema import load_recipe

    folder = tmp_path_factory.mktemp("other_data")
    root = write_synthetic_carvana(folder / "carvana", cars=4, test_cars=1, size=(64, 40), seed=1)
    plugins = load_plugins()
    recipe = load_recipe(tiny_recipe(folder / "other_data.toml", root, name="other_data",
                                     model=SMALL_SMP_MODELS["linknet"]), plugins)
    return run(RunRequest(recipe, folder / "results", name="other_data"), plugins, Console(quiet=True))


def pytest_report_header(config):
    """The CPU the suite runs on: its time, and which precisions are fast, depend on it."""
    import torch

    from harness.engine.compute_choice import native_bf16_cpu

    bf16 = "with native bf16" if native_bf16_cpu() else "without native bf16 (bf16 is emulated)"
    return f"CPU capability: {torch.backends.cpu.get_cpu_capability()}, {bf16}, {torch.get_num_threads()} threads"
