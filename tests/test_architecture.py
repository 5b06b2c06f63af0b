"""The plan of the house, checked: wings layered along the path of the data, one owner for the run
folder, built-in plugins on the public API (contracts in pyproject.toml, docs/architecture.md)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

# Files of a run folder; only harness/runs/folder.py may spell them (splits.json and recipe.toml are
# also files a user names on the command line, so they are left out).
RUN_FOLDER_FILES = ("summary.json", "fold.json", "best.pt", "last.pt", "history.csv", "per_image.csv",
                    "per_image_last.csv", "environment.json", "test.json", "selection.json", "failure.json",
                    "oof_maps", "test_maps", "tracking.json")
FOLD_PATH = re.compile(r"fold-(\d|\*|$)")  # "fold-0", a glob "fold-*", or the start of f"fold-{k}"


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": ""})


def test_import_contracts_hold():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 kept, 0 broken" in result.stdout


def test_import_contracts_catch_a_reversed_import(tmp_path):
    """A lower wing importing a higher one breaks the layers contract (so the contract can fail)."""
    for part in ("harness", "plugins", "pyproject.toml"):
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy
        copy(ROOT / part, tmp_path / part)
    store = tmp_path / "harness/runs/probabilities.py"
    store.write_text(store.read_text() + "\nfrom harness.evaluate.stats import pooled_interval  # reversed\n")
    result = _lint_imports(tmp_path)
    assert result.returncode == 1
    assert "harness.runs is not allowed to import harness.evaluate" in result.stdout


def _strings(path: Path):
    """(line, text) of every string constant that is not a docstring, f-string pieces included."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_only_the_export_folder_owner_spells_its_files():
    owner = ROOT / "harness/export/folder.py"
    found = [f"{path.relative_to(ROOT)}:{line}: {text}" for path in sorted((ROOT / "harness").rglob("*.py"))
             if path != owner for line, text in _strings(path) if "model.json" in text or ".onnx" in text]
    assert not found, "export-folder paths outside harness/export/folder.py:\n" + "\n".join(found)
    assert any(".onnx" in text for _, text in _strings(owner))


def test_only_the_run_folder_owner_spells_run_folder_files():
    owner = ROOT / "harness/runs/folder.py"
    found = []
    for path in sorted((ROOT / "harness").rglob("*.py")):
        if path == owner:
            continue
        for line, text in _strings(path):
            hits = [name for name in RUN_FOLDER_FILES if name in text] + (["fold-"] if FOLD_PATH.search(text) else [])
            found += [f"{path.relative_to(ROOT)}:{line}: {hit}" for hit in hits]
    assert not found, "run-folder paths outside harness/runs/folder.py:\n" + "\n".join(found)
    assert any("summary.json" in text for _, text in _strings(owner))  # the check looks where they are


def test_plugins_may_import_harness_api_and_nothing_else_of_harness():
    """The contract's list of forbidden modules is every module and wing of harness but harness.api: one
    added to harness (harness.distribute, harness.memory once) is forbidden to plugins from the start."""
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    forbidden = set(next(c for c in contracts if c["type"] == "forbidden")["forbidden_modules"])
    modules = {f"harness.{p.stem}" for p in (ROOT / "harness").glob("*.py") if p.stem != "__init__"}
    wings = {f"harness.{p.name}" for p in (ROOT / "harness").iterdir() if (p / "__init__.py").exists()}
    assert forbidden == (modules | wings) - {"harness.api"}


def test_the_public_api_is_what_plugin_authors_are_told():
    """harness.api.__all__, pinned: a name removed breaks plugins, a name added is a promise to keep."""
    import harness.api

    assert sorted(harness.api.__all__) == [
        "BenchError", "HubFile", "Loss", "Merge", "PostProcess", "Schedule", "TrackedRun", "UrlFile", "cached_synthetic_carvana",
        "hookimpl", "load_encoder_weights", "smp_imagenet"]
    assert all(hasattr(harness.api, name) for name in harness.api.__all__)


def test_harness_is_in_wings():
    modules = sorted(p.name for p in (ROOT / "harness").glob("*.py"))
    wings = sorted(p.name for p in (ROOT / "harness").iterdir() if (p / "__init__.py").exists())
    assert modules == ["__init__.py", "api.py", "cli.py", "errors.py", "io.py", "memory.py", "tables.py"]
    assert wings == ["data", "distribute", "engine", "ensemble", "evaluate", "export", "recipe", "runs", "speed", "track", "tune"]


def test_every_component_kind_has_its_hook_and_every_hook_a_kind():
    from harness.recipe import hookspecs
    from harness.recipe.kinds import KINDS

    hooks = {name for name in dir(hookspecs) if name.startswith("bench_")}
    assert {kind.hook for kind in KINDS} == hooks
