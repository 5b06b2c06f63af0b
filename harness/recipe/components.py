"""Validating a recipe's component table against the factory's own signature, and building it.

A plugin author writes a typed function, ``def bce_dice(*, per_image: bool = True) -> Loss``; the
parameters with defaults are what a recipe may set. Turning that signature into a pydantic model
gives every component the same validation as the recipe itself (unknown key with close matches,
wrong type), before any training starts, without plugin authors writing schemas.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import pydantic

from harness.errors import BenchError
from harness.recipe.plugins import Component, Plugins, UnknownComponent


@dataclass(frozen=True)
class ParamProblem:
    """One thing wrong with a component's parameters: the key (relative to the table) and why."""

    key: str
    message: str


@functools.cache
def _params_model(factory: Any) -> type[pydantic.BaseModel] | None:
    """A pydantic model of the factory's settable parameters; ``None`` if it takes ``**kwargs``."""
    hints = _resolved_hints(factory)
    fields: dict[str, Any] = {}
    for param in inspect.signature(factory).parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if param.default is inspect.Parameter.empty or param.kind is inspect.Parameter.VAR_POSITIONAL:
            continue  # supplied by the harness at run time (model parameters, ...), not by recipes
        fields[param.name] = (hints.get(param.name, Any), param.default)
    config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    return pydantic.create_model(f"{getattr(factory, '__name__', 'factory')}_params", __config__=config, **fields)


def _resolved_hints(factory: Any) -> dict[str, Any]:
    """Type hints with string annotations (``from __future__ import annotations``) evaluated."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return inspect.get_annotations(target, eval_str=True)
    except Exception:  # an annotation that cannot be evaluated is left unchecked, not fatal
        return {}


def settable_params(component: Component) -> dict[str, Any]:
    """The parameters a recipe may set, with their defaults (for ``bench plugins`` and messages)."""
    model = _params_model(component.factory)
    return {} if model is None else {n: f.default for n, f in model.model_fields.items()}


def validate_params(component: Component, params: dict[str, Any]) -> tuple[dict[str, Any], list[ParamProblem]]:
    """Check ``params`` against the factory; return the coerced values and the problems found."""
    model = _params_model(component.factory)
    if model is None:
        return dict(params), []
    try:
        validated = model.model_validate(params)
    except pydantic.ValidationError as error:
        return dict(params), [_problem(err, list(model.model_fields)) for err in error.errors()]
    return {name: getattr(validated, name) for name in params}, []


def _problem(error: Any, known: list[str]) -> ParamProblem:
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(error["loc"][0]), known, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"accepted: {', '.join(known) or 'none'}"
        return ParamProblem(key, f"unknown key ({hint})")
    return ParamProblem(key, f"{error['msg']} (got {error.get('input')!r})")


def build(component: Component, params: dict[str, Any], *runtime_args: Any, where: str) -> Any:
    """Call the factory: harness-supplied arguments first, then the recipe's parameters.

    The factory is plugin code and the libraries it calls: whatever it raises (torch's own argument
    checks, a plugin's bug) becomes one line that starts with ``where`` (the recipe key, or the
    command-line option, that chose the component) and names the component, its plugin and the
    message. Our own ``BenchError`` passes through unchanged: it is one line already.
    """
    try:
        return component.factory(*runtime_args, **params)
    except BenchError:
        raise
    except Exception as error:
        raise BenchError(f"{where} ({component.kind} {component.name!r}): {describe_exception(error)} "
                         f"(raised building it; plugin {component.plugin!r})") from None


def describe_exception(error: BaseException) -> str:
    """One line for an exception from code that is not ours: a value error's own words, else its type too."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    if isinstance(error, (ValueError, TypeError)) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def build_component(plugins: Plugins, kind: str, name: str, params: dict, where: str,
                     key: str | None = None) -> Callable:
    """A component the command line or an ensemble spec names (a merger, a post-processor, a tracker), its
    parameters checked and built; every problem is one line that starts with ``where`` (who asked for
    it) and, for a table of an ensemble spec, names its ``key``. (A recipe's components are checked
    as the recipe loads, ``harness.recipe.schema``.)"""
    def at(part: str) -> str:
        return f"{where}: key '{key}.{part}'" if key else where

    try:
        component = plugins.get(kind, name)
    except UnknownComponent as error:
        raise BenchError(f"{at('name')}: unknown {kind} {name!r}; {error.hint()}") from None
    values, problems = validate_params(component, params)
    if problems:
        problem = problems[0]
        raise BenchError(f"{at(problem.key)}: {problem.message}" if key else
                         f"{where}: {problem.key}: {problem.message}")
    located = f"{where}: key '{key}'" if key else where
    try:
        return build(component, values, where=located)
    except BenchError as error:  # the factory's own one-line refusal: say where it was asked for
        message = str(error)
        raise BenchError(message if message.startswith(located) else f"{located}: {message}") from None
