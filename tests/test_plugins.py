"""Plugin discovery: entry points, plugin folders, failures, strict mode, name clashes."""

from __future__ import annotations

import json
import textwrap

import pytest

from harness.errors import BenchError
from harness.recipe.components import settable_params
from harness.recipe.plugins import KIND_HOOKS, load_plugins

RECIPE_PLUGINS = {"vladimir", "alexander", "artsiom"}

FOCAL = '''
from harness.api import hookimpl
__version__ = "1.2.3"

def focal(*, gamma: float = 2.0):
    return lambda logits, target: logits.mean()

@hookimpl
def bench_losses():
    return {"focal": focal}
'''


def write_plugin(folder, name, text):
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(text))
    return folder


def test_builtins_load_through_entry_points(plugins):
    assert plugins.failures == []
    infos = {info.name: info for info in plugins.infos}
    assert RECIPE_PLUGINS | {"core"} <= set(infos)
    for name in RECIPE_PLUGINS:
        assert "segbench" in infos[name].source and "entry point" in infos[name].source
        assert infos[name].version == "0.1.0"
    assert plugins.get("model", "unet11").plugin == "vladimir"
    assert plugins.get("model", "linknet").plugin == "alexander"
    assert plugins.get("model", "linknet34").plugin == "alexander"
    assert plugins.get("loss", "weighted_bce_dice").plugin == "artsiom"
    assert plugins.get("callback", "hard_negative_mining").plugin == "alexander"


def test_every_builtin_factory_has_a_recipe_signature(plugins):
    """Recipes are validated against factory signatures, so every factory must yield one."""
    for kind in KIND_HOOKS:
        for name in plugins.names(kind):
            assert isinstance(settable_params(plugins.get(kind, name)), dict)


def test_file_plugin_from_folder_and_environment(tmp_path, monkeypatch):
    folder = write_plugin(tmp_path / "mine", "focal", FOCAL)
    by_flag = load_plugins([folder])
    info = next(i for i in by_flag.infos if i.name == "focal")
    assert (info.version, info.source, info.components) == ("1.2.3", str(folder / "focal.py"), {"loss": ("focal",)})
    assert info.hooks == ("bench_losses",)

    monkeypatch.setenv("SEGBENCH_PLUGINS_DIR", str(folder))
    assert load_plugins().get("loss", "focal").plugin == "focal"


def test_broken_plugin_is_reported_and_skipped_unless_strict(tmp_path):
    folder = write_plugin(tmp_path / "mine", "broken", "import does_not_exist\n")
    write_plugin(folder, "focal", FOCAL)
    plugins = load_plugins([folder], strict=False)
    assert [f.name for f in plugins.failures] == ["broken"]
    assert "does_not_exist" in plugins.failures[0].error
    assert plugins.get("loss", "focal")  # the good neighbour still loads
    assert RECIPE_PLUGINS <= {i.name for i in plugins.infos}
    with pytest.raises(BenchError, match="plugin 'broken'.*strict"):
        load_plugins([folder], strict=True)


def test_hook_that_raises_skips_the_whole_plugin(tmp_path):
    folder = write_plugin(tmp_path / "mine", "halfway", '''
        from harness.api import hookimpl

        @hookimpl
        def bench_losses():
            return {"fine": lambda: None}

        @hookimpl
        def bench_models():
            raise RuntimeError("no GPU")
    ''')
    plugins = load_plugins([folder])
    assert [f.name for f in plugins.failures] == ["halfway"]
    assert "fine" not in plugins.names("loss")


def test_name_clash_skips_the_later_plugin_and_names_both(tmp_path):
    folder = write_plugin(tmp_path / "mine", "copycat", '''
        from harness.api import hookimpl

        @hookimpl
        def bench_losses():
            return {"bce_dice": lambda: None}
    ''')
    plugins = load_plugins([folder])
    (failure,) = plugins.failures
    assert failure.name == "copycat" and "'bce_dice'" in failure.error and "'alexander'" in failure.error
    assert plugins.get("loss", "bce_dice").plugin == "alexander"


def test_missing_plugins_folder_is_an_error(tmp_path):
    with pytest.raises(BenchError, match="plugins folder .*nowhere"):
        load_plugins([tmp_path / "nowhere"])


def test_bench_plugins_lists_recipe_plugins_and_dropped_file(bench, tmp_path):
    folder = write_plugin(tmp_path / "mine", "focal", FOCAL)
    result = bench("--plugins-dir", folder, "plugins")
    assert result.code == 0, result.err
    for name in RECIPE_PLUGINS | {"focal", "1.2.3", "bench_losses", "unet11", "linknet"}:
        assert name in result.out
    listing = json.loads(bench("--plugins-dir", folder, "plugins", "--format", "json").out)
    focal = next(plugin for plugin in listing if plugin["plugin"] == "focal")
    assert focal["version"] == "1.2.3" and "bench_losses" in focal["hooks"]
    assert bench("plugins", "--format", "csv").out.startswith("plugin,version,source,hooks,registers\n")
    assert bench("plugins", "--format", "html").err.count("--format html: expected table, csv, markdown or json") == 1
