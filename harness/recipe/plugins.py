"""Finding plugins, loading them, and collecting the components they register.

Two sources, as in pytest: the ``bench`` entry-point group (installed packages, including segbench's
own built-in plugins, so the public path is the one always exercised) and plugin folders whose
``*.py`` files are each one plugin (``--plugins-dir`` or ``$SEGBENCH_PLUGINS_DIR``, several folders
separated by ``os.pathsep``).

A plugin that fails to import, or whose hook raises, is reported by name and skipped: one broken
third-party file must not take the built-in recipes down with it. ``strict=True`` (``--strict-plugins``
or ``$SEGBENCH_STRICT_PLUGINS=1``) turns that into an error instead, for CI.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pluggy

from harness.errors import BenchError
from harness.recipe import hookspecs
from harness.recipe.kinds import KINDS

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
PLUGINS_DIR_ENV = "SEGBENCH_PLUGINS_DIR"
STRICT_ENV = "SEGBENCH_STRICT_PLUGINS"

KIND_HOOKS: dict[str, str] = {kind.name: kind.hook for kind in KINDS}  # kind -> the hook that registers it


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    source: str
    hooks: tuple[str, ...]
    components: dict[str, tuple[str, ...]]  # kind -> names


@dataclass(frozen=True)
class PluginFailure:
    name: str
    source: str
    error: str

    def describe(self) -> str:
        return f"plugin {self.name!r} ({self.source}) skipped: {self.error}"


class UnknownComponent(LookupError):
    """A recipe named a component nobody registered; carries the close matches for the message."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        self.close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        super().__init__(f"unknown {kind} {name!r}")

    def hint(self) -> str:
        if self.close:
            return "did you mean " + " or ".join(repr(c) for c in self.close) + "?"
        return "known: " + (", ".join(self.known) if self.known else "none registered")


@dataclass
class Plugins:
    """The loaded plugins and everything they registered; built once per command."""

    infos: list[PluginInfo] = field(default_factory=list)
    failures: list[PluginFailure] = field(default_factory=list)
    components: dict[str, dict[str, Component]] = field(
        default_factory=lambda: {kind: {} for kind in KIND_HOOKS}
    )

    def get(self, kind: str, name: str) -> Component:
        try:
            return self.components[kind][name]
        except KeyError:
            raise UnknownComponent(kind, name, sorted(self.components[kind])) from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])


def load_plugins(plugins_dirs: list[Path] | None = None, strict: bool | None = None) -> Plugins:
    """Load every plugin from the entry points and the plugin folders; see the module docstring."""
    if strict is None:
        strict = os.environ.get(STRICT_ENV, "") not in ("", "0")
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    plugins = Plugins()
    sources: dict[str, tuple[str, str]] = {}  # plugin name -> (version, source)

    def fail(name: str, source: str, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        failure = PluginFailure(name, source, text)
        if strict:
            raise BenchError(failure.describe().replace("skipped", "failed (strict mode)"))
        plugins.failures.append(failure)

    def register(name: str, version: str, source: str, load: Callable[[], ModuleType]) -> None:
        if name in sources:
            fail(name, source, f"a plugin named {name!r} is already loaded from {sources[name][1]}")
            return
        try:
            module = load()
            manager.register(module, name=name)
        except Exception as error:  # a broken plugin is reported, not fatal (see module docstring)
            fail(name, source, error)
            return
        sources[name] = (version, source)

    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist
        version = dist.version if dist else "-"
        source = f"{dist.name if dist else '?'} (entry point {entry_point.value})"
        register(entry_point.name, version, source, entry_point.load)

    for folder in _plugin_folders(plugins_dirs):
        for path in sorted(folder.glob("*.py")):
            if not path.name.startswith("_"):
                register(path.stem, "-", str(path), lambda path=path: _import_file(path))

    for name, (version, source) in sources.items():
        _collect(manager, name, version, source, plugins, fail)
    return plugins


def _plugin_folders(plugins_dirs: list[Path] | None) -> list[Path]:
    folders = list(plugins_dirs or [])
    folders += [Path(p) for p in os.environ.get(PLUGINS_DIR_ENV, "").split(os.pathsep) if p]
    for folder in folders:
        if not folder.is_dir():
            raise BenchError(f"plugins folder {folder} does not exist or is not a folder")
    return folders


def _import_file(path: Path) -> ModuleType:
    """Import one plugin file under a private module name, so it cannot shadow a real package."""
    module_name = f"segbench_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec and spec.loader  # a .py path always yields a loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _collect(manager, name, version, source, plugins: Plugins, fail) -> None:
    """Call one plugin's hooks and add its components.

    All or nothing: a hook that raises, or a name another plugin already holds, skips the whole
    plugin (reported as a failure), so no half-registered plugin is ever in use.
    """
    module = manager.get_plugin(name)
    hooks, found = [], []
    try:
        for kind, hook_name in KIND_HOOKS.items():
            for impl in getattr(manager.hook, hook_name).get_hookimpls():
                if impl.plugin_name != name:
                    continue
                hooks.append(hook_name)
                for component_name, factory in dict(impl.function() or {}).items():
                    taken = plugins.components[kind].get(component_name)
                    if taken:
                        raise ValueError(f"{kind} {component_name!r} is already registered by plugin {taken.plugin!r}")
                    found.append(Component(kind, component_name, factory, name))
    except Exception as error:  # see the docstring: the plugin is skipped, the others go on
        manager.unregister(module)
        fail(name, source, error)
        return
    registered: dict[str, list[str]] = {}
    for component in found:
        plugins.components[component.kind][component.name] = component
        registered.setdefault(component.kind, []).append(component.name)
    version = getattr(module, "__version__", version) if version == "-" else version
    plugins.infos.append(
        PluginInfo(name, str(version), source, tuple(hooks), {k: tuple(v) for k, v in registered.items()})
    )
