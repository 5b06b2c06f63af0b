"""Tables at any width (``harness.tables``): the columns a table is read for are whole at 80 columns,
the other columns follow in tables below, keyed again, and no cell ends in an ellipsis.

The leaderboard's expected cells are written here from ``bench compare --format json``, not with the
formatters of ``harness.evaluate.compare``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from harness.tables import CONTINUED, print_table

# The three tiny runs on one set of folds, under run-folder names as long as real ones (17 to 21 characters).
NAMED = {"linknet": "alexander-6c1e2a9f", "unet": "artsiom_unet-f1ac1a0f", "fpn": "vladimir-d6270799"}
# Prose under a board: one line each on bench's console, however long (the terminal folds it).
NOTES = ("device (every run):", "software (every run):", "Dice @T: ", "↑ still rising:", "† splits differ:")
OTHER_HEADERS = ("recipe", "folds mean ± std", "Dice @T", "train time", "train img/s", "infer img/s", "params",
                 "Carvana h")


def _printed(width: int, *args, **options) -> str:
    """``print_table`` on a console like bench's (it soft-wraps text) of ``width`` columns."""
    console = Console(width=width, file=io.StringIO(), soft_wrap=True)
    print_table(console, *args, **options)
    return console.file.getvalue()


def _widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def _header(table: str) -> str:
    """The header line of ``table``: the line over its rule."""
    lines = table.splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("─")) - 1]


HEADERS = ["name", "score", "alpha", "beta", "gamma", "delta", "note"]
ROWS = [["first-run-4a1b2c3d", "0.9931", "1.0000 ± 0.0001", "2.0000 ± 0.0002", "3.0000 ± 0.0003", "4.0000",
         "a note long enough to wrap at forty columns rather than end in an ellipsis"],
        ["second-run-5e6f7a8b", "0.9912", "1.1111 ± 0.0011", "2.2222 ± 0.0022", "3.3333 ± 0.0033", "4.4444", ""]]
TABLE = dict(key=("name",), decisive=("score",), left=("name", "note"))


def test_a_table_that_fits_is_one_table():
    out = _printed(200, "fits", HEADERS, ROWS, **TABLE)
    assert CONTINUED not in out and _header(out).split() == HEADERS
    for row in ROWS:
        assert " ".join(cell for cell in row if cell) in " ".join(out.split())


def test_a_table_too_wide_splits_with_the_key_in_every_table():
    out = _printed(44, "split", HEADERS, ROWS, **TABLE)
    tables = out.split(CONTINUED)
    assert len(tables) > 2 and _widest(out) <= 44 and "…" not in out
    assert _header(tables[0]).split() == ["name", "score", "alpha"], "the decisive column, then the others by priority"
    for table in tables[1:]:
        assert _header(table).startswith("name ")
        assert all(row[0] in table for row in ROWS)
    assert [header for header in HEADERS if header not in out] == []
    words = " ".join(out.split())
    assert all(word in words for row in ROWS for cell in row for word in cell.split()), "every cell, whole"


def test_numbers_are_never_shrunk_and_names_fold_only_when_the_decisive_columns_cannot_fit():
    numbers = ["0.9931 [0.9925, 0.9937]", "-0.0019 [-0.0025, -0.0012]"]
    rows = [["a-run-name-of-thirty-characters", *numbers]]
    options = dict(key=("run",), decisive=("Dice", "Δ"), left=("run",))
    folded = _printed(60, "title", ["run", "Dice", "Δ"], rows, **options)
    assert _widest(folded) <= 60 and all(number in folded for number in numbers)
    assert "a-run-name-of-thirty-characters" not in folded and "a-run-" in folded, "the name folds"
    too_narrow = _printed(30, "title", ["run", "Dice", "Δ"], rows, **options)
    assert _widest(too_narrow) > 30 and all(number in too_narrow for number in numbers) and "…" not in too_narrow


def test_wide_prints_one_table_of_every_column_however_wide():
    out = _printed(40, "wide", HEADERS, ROWS, **TABLE, wide=True)
    assert CONTINUED not in out and _header(out).split() == HEADERS and _widest(out) > 40
    assert all(cell in out for row in ROWS for cell in row)


@pytest.fixture
def named_runs(tiny_runs, tmp_path) -> list[Path]:
    results = tmp_path / "results"
    results.mkdir()
    for run, name in NAMED.items():
        (results / name).symlink_to(tiny_runs[run], target_is_directory=True)
    return [results / name for name in NAMED.values()]


def _compare(bench, monkeypatch, width: int, *args) -> str:
    """``bench compare ARGS`` as a terminal of ``width`` columns shows it (bench's console, at that width)."""
    from harness import cli

    monkeypatch.setattr(cli, "console", Console(soft_wrap=True, width=width))
    result = bench("compare", *args)
    assert result.code == 0, result.err
    return result.out


def _decisive_cells(row: dict) -> list[str]:
    """What a leaderboard row is read for, as it must appear on that run's line."""
    dice = f"{row['oof_dice']:.4f}" + (" ↑" if row["still_rising"] else "")
    interval = f"{row['ci_low']:.4f}–{row['ci_high']:.4f}"
    if row["rank"] == 1:
        return [dice, interval, "best", "-"]
    p = f"{row['p_value']:.2g}" if row["p_value"] >= 0.001 else "<0.001"
    return [dice, interval, f"{row['delta']:+.4f} [{row['delta_low']:+.4f}, {row['delta_high']:+.4f}]", p]


def _assert_reads_at(out: str, width: int, rows: list[dict]) -> None:
    """Every run's rank, name and decisive cells whole on its line; no cell cut; no table line too wide."""
    assert "…" not in out
    assert [line for line in out.splitlines() if len(line) > width and not line.startswith(NOTES)] == []
    lines = out.splitlines()
    for row in rows:
        line = next(line for line in lines if f" {row['run']} " in line)
        assert line.startswith(f"{row['rank']} ") and all(cell in line for cell in _decisive_cells(row)), line


def test_the_leaderboard_reads_at_80_columns(bench, named_runs, monkeypatch):
    rows = json.loads(bench("compare", *named_runs, "--format", "json").out)["groups"][0]["rows"]
    out = _compare(bench, monkeypatch, 80, *named_runs)
    first, *continued = out.split(CONTINUED)
    _assert_reads_at(first, 80, rows)
    assert continued and [header for header in OTHER_HEADERS if header not in out] == []
    for table in continued:
        assert _header(table).split()[0] == "#" and "run" in _header(table).split(), "keyed by # and run"

    wide = _compare(bench, monkeypatch, 80, *named_runs, "--wide")
    roomy = _compare(bench, monkeypatch, 200, *named_runs)
    for one_table in (wide, roomy):
        assert CONTINUED not in one_table and all(name in _header(one_table) for name in ("OOF Dice", *OTHER_HEADERS))
    assert len(_header(wide)) > 80
    _assert_reads_at(roomy, 200, rows)


@pytest.mark.parametrize("view, key", [("fold", {"run", "fold"}), ("image", {"run", "image"})])
def test_the_fold_and_image_views_read_at_80_columns(bench, named_runs, monkeypatch, view, key):
    out = _compare(bench, monkeypatch, 80, *named_runs, "--by", view)
    assert "…" not in out and all(len(line) <= 80 for line in out.splitlines() if not line.startswith(NOTES))
    for table in out.split(CONTINUED):
        assert key | {"Dice"} <= set(_header(table).split())


def test_bench_compare_in_a_terminal_of_80_columns(bench, named_runs, tmp_path):
    """The installed command, from elsewhere than the checkout, with COLUMNS=80 as a terminal sets it."""
    rows = json.loads(bench("compare", *named_runs, "--format", "json").out)["groups"][0]["rows"]
    command = Path(sys.executable).parent / "bench"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shown = subprocess.run([str(command), "compare", *map(str, named_runs)], cwd=elsewhere, capture_output=True,
                           text=True, env={**os.environ, "COLUMNS": "80"}, timeout=300)
    assert shown.returncode == 0, shown.stderr
    _assert_reads_at(shown.stdout.split(CONTINUED)[0], 80, rows)
    assert all(len(line) <= 80 for line in shown.stdout.splitlines() if not line.startswith(NOTES))


def test_benchmark_variants_read_at_80_columns():
    from harness.speed.benchmark import print_result

    variant = {"variant": "bf16+cl+compile", "train_images_per_s": 123.456, "train_peak_fraction": 0.123,
               "train_step_ms_p50": 250.0, "train_step_ms_p95": 260.0, "infer_images_per_s": 0.0427,
               "infer_peak_fraction": 0.2, "infer_tta_images_per_s": 0.02, "peak_memory_mb": 12345.0,
               "compile_seconds": 42.0, "auto": True, "note": "out of memory at batch 16; measured at batch 8"}
    result = {"recipe": "alexander", "input": [1920, 1280], "batch_size": 8,
              "environment": {"device": "cuda:0 (NVIDIA H100 80GB HBM3)", "cpu_capability": "AVX512"},
              "variants": [variant, {**variant, "variant": "fp32", "auto": False, "note": ""}],
              "peak_gflops": {"bf16": 700000.0}, "train_gflops_per_image": 300.0, "gflops_per_image": 100.0,
              "parameters": 31_000_000, "loader": None, "harness_overhead": None,
              "carvana_cost": {"total_hours": 12.0, "train_hours": 10.0, "test_hours": 2.0, "assumption": "x1.0"},
              "carvana_cost_schedule": {"folds": 5, "epochs": 100, "tta": "hflip"}, "carvana_cost_variant": "fp32"}
    console = Console(width=80, file=io.StringIO(), soft_wrap=True)
    print_result(result, Path("results/benchmarks/b.json"), console)
    table = console.file.getvalue().split("peak: ")[0]  # prose lines follow the table
    assert _widest(table) <= 80 and "…" not in table
    first = table.split(CONTINUED)[0]
    for cells in (["bf16+cl+compile", "123", "0.0427"], ["fp32", "123", "0.0427"]):
        assert any(all(cell in line for cell in cells) for line in first.splitlines()), cells
    assert "auto picks this" in table and "infer+TTA img/s" in table


def test_bench_plugins_reads_at_80_columns(bench, monkeypatch):
    from harness import cli

    monkeypatch.setattr(cli, "console", Console(soft_wrap=True, width=80))
    result = bench("plugins")
    assert result.code == 0, result.err
    assert _widest(result.out) <= 80 and "…" not in result.out
    assert all(header in result.out for header in ("plugin", "version", "source", "hooks", "registers"))
    assert "augmentation: hflip" in result.out
