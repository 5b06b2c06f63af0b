"""Errors from code that is not ours end in one line and exit 2 (or the documented restart), never a
traceback: a value only torch rejects, a plugin factory that raises, run files cut short."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest

EXPLODING_PLUGIN = '''
from harness.api import hookimpl


def exploding_net(*, depth: int = 1):
    raise RuntimeError("the decoder has no layers at depth 1\\nsecond line of a long message")


def exploding_loss(*, weight: float = 1.0):
    raise KeyError("weight_map")


@hookimpl
def bench_models():
    return {"exploding_net": exploding_net}


@hookimpl
def bench_losses():
    return {"exploding_loss": exploding_loss}
'''


def _one_line(result) -> str:
    assert result.code == 2, result.out + result.err
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    return lines[0]


def test_a_value_that_only_torch_rejects_names_the_key_component_and_plugin(bench, synthetic_set, tiny_recipe,
                                                                             tmp_path):
    recipe = tiny_recipe(tmp_path / "r.toml", synthetic_set)
    result = bench("run", recipe, "--set", "optimizer.lr=-1.0", "--results", tmp_path)
    line = _one_line(result)
    assert "key 'optimizer' (optimizer 'adam')" in line and "Invalid learning rate: -1.0" in line
    assert "plugin 'core'" in line


@pytest.fixture
def exploding(tmp_path):
    folder = tmp_path / "exploding_plugins"
    folder.mkdir()
    (folder / "exploding.py").write_text(textwrap.dedent(EXPLODING_PLUGIN))
    return folder


def test_a_model_factory_that_raises_at_run_time_is_one_line(bench, synthetic_set, tiny_recipe, exploding, tmp_path):
    recipe = tiny_recipe(tmp_path / "r.toml", synthetic_set, model='name = "exploding_net"')
    line = _one_line(bench("--plugins-dir", exploding, "run", recipe, "--results", tmp_path))
    assert "key 'model' (model 'exploding_net'): RuntimeError: the decoder has no layers at depth 1" in line
    assert "plugin 'exploding'" in line


def test_a_loss_factory_that_raises_at_load_time_is_one_line(bench, synthetic_set, tiny_recipe, exploding, tmp_path):
    recipe = tiny_recipe(tmp_path / "r.toml", synthetic_set)
    result = bench("--plugins-dir", exploding, "run", recipe, "--set", 'loss.name="exploding_loss"',
                   "--results", tmp_path)
    line = _one_line(result)
    assert "r.toml: key 'loss' (loss 'exploding_loss'): KeyError: 'weight_map'" in line
    assert "plugin 'exploding'" in line


@pytest.fixture
def copied_run(tiny_runs, tmp_path):
    """A copy of a complete tiny run, to damage; returns (results folder, run name)."""
    shutil.copytree(tiny_runs["linknet"], tmp_path / "results" / "copy")
    return tmp_path / "results", "copy"


def _resume(bench, results, name):
    return bench("run", results / name / "recipe.toml", "--results", results, "--name", name, "--resume")


def test_a_truncated_best_checkpoint_is_one_line_naming_it(bench, copied_run):
    results, name = copied_run
    folder = results / name
    best = folder / "fold-0" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])  # cut short, as by a full disk outside our atomic writes
    for marker in ("summary.json", "test.json"):  # the test predictions are to be made again
        (folder / marker).unlink()
    line = _one_line(_resume(bench, results, name))
    assert f"{best}: cannot be read back" in line and f"Delete {best.parent}" in line


def test_a_truncated_resume_checkpoint_restarts_its_fold_with_a_warning(bench, copied_run):
    results, name = copied_run
    folder = results / name
    fold = folder / "fold-1"
    (fold / "last.pt").write_bytes((fold / "best.pt").read_bytes()[:1000])  # interrupted, then cut short
    for marker in (fold / "fold.json", folder / "summary.json", folder / "test.json"):
        marker.unlink()
    result = _resume(bench, results, name)
    assert result.code == 0, result.err
    assert f"warning: {fold / 'last.pt'} cannot be read back; fold 1 starts again from its first epoch" in result.out
    assert json.loads((fold / "fold.json").read_text())["epochs"] == 2  # every epoch trained again
    assert (folder / "summary.json").exists() and not (fold / "last.pt").exists()
