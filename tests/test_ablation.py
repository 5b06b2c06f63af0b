"""`bench ablate`: one variant per trick that differs from the baseline in that trick only, and a report."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import BenchError
from harness.evaluate.ablation import variants, write_section
from harness.recipe.schema import load_recipe

REPO = Path(__file__).resolve().parents[1]

SCRATCH_UNET = 'name = "unet"\nbase_filters = 8\ndepth = 3\nup_convs = 1'


def _without(recipe, *keys):
    raw = recipe.model_dump(mode="json", exclude_none=True)
    for key in ("name",) + keys:
        raw.pop(key, None)
    return raw


def test_each_variant_switches_one_trick_and_nothing_else(plugins):
    recipe = load_recipe(REPO / "recipes/alexander.toml", plugins, ["quick"])
    base, *others = variants(recipe, ["tta", "hnm", "clahe", "pseudo"], plugins)
    assert base.recipe == recipe and base.trick is None
    by_trick = {v.trick: v.recipe for v in others}
    assert by_trick["tta"].predict.tta == "none" and by_trick["tta"].name == "alexander-no-tta"
    assert _without(by_trick["tta"], "predict") == _without(recipe, "predict")
    assert by_trick["hnm"].callbacks == [] and _without(by_trick["hnm"], "callbacks") == _without(recipe, "callbacks")
    assert [p.name for p in by_trick["clahe"].preprocess] == ["clahe"] and by_trick["clahe"].name == "alexander+clahe"
    assert _without(by_trick["clahe"], "preprocess") == _without(recipe, "preprocess")
    assert by_trick["pseudo"].pseudo_label is not None
    assert _without(by_trick["pseudo"], "pseudo_label") == _without(recipe)


@pytest.mark.parametrize("tricks, message", [(["foo"], "--trick foo"), ([], "none given"), (["tta", "tta"], "each trick once")])
def test_bad_tricks_are_one_line(plugins, tricks, message):
    recipe = load_recipe(REPO / "recipes/alexander.toml", plugins, ["quick"])
    with pytest.raises(BenchError, match=message):
        variants(recipe, tricks, plugins)


def test_sections_of_several_recipes_share_the_file_and_replace_their_own(tmp_path):
    path = tmp_path / "ablations.md"
    section = "<!-- ablation {0}: x -->\n## {0}\n{1}\n<!-- end ablation {0} -->\n"
    write_section(path, "a", section.format("a", "first"))
    write_section(path, "b", section.format("b", "other"))
    write_section(path, "a", section.format("a", "second"))
    text = path.read_text()
    assert text.startswith("# Ablations") and "second" in text and "first" not in text and "other" in text
    assert text.index("## a") < text.index("## b")


def test_bench_ablate_runs_the_variants_and_writes_the_report(bench, synthetic_set, tmp_path, tiny_recipe):
    recipe = tiny_recipe(tmp_path / "abl.toml", synthetic_set, name="abl", model=SCRATCH_UNET, epochs=1,
                         extra='[predict]\ntta = "hflip"')
    out = tmp_path / "ablations.md"
    result = bench("ablate", recipe, "--trick", "tta", "--trick", "augment", "--results", tmp_path / "results",
                   "--out", out, "--device", "cpu")
    assert result.code == 0, result.err
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| abl")]
    assert [row.split(" | ")[0] for row in rows] == ["| abl (baseline)", "| abl-no-tta", "| abl+augment"]
    assert "predict.tta hflip -> none" in rows[1] and rows[1].count("[") == 2
    assert len(list((tmp_path / "results").glob("abl*/summary.json"))) == 3
    again = bench("ablate", recipe, "--trick", "tta", "--trick", "augment", "--results", tmp_path / "results",
                  "--out", out, "--device", "cpu")
    assert again.code == 0 and again.out.count("already complete") == 3 and out.read_text() == text


def test_the_page_names_the_built_in_set_relative_to_the_cache(tmp_path, monkeypatch):
    from harness.evaluate.ablation import _shown

    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))
    assert _shown(str(tmp_path / "cache/synthetic/v1/c16")) == "$SEGBENCH_CACHE/synthetic/v1/c16"
    assert _shown("/data/carvana") == "/data/carvana"  # a user's own data keeps its path
