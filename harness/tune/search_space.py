"""From a trial's parameter values to a runnable recipe, and the checks made before any trial runs.

A trial's recipe is the tuned recipe as resolved (profiles and ``--set`` applied), without its
``[tune]`` table, with each searched key set to the trial's value, validated like any recipe. The
recipe's own values are the baseline: they must lie inside the space, so the baseline can be the
study's first trial and tuning never ends worse than the recipe it started from.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from harness.errors import BenchError
from harness.recipe import components
from harness.recipe.kinds import RECIPE_KEYS
from harness.recipe.plugins import Plugins
from harness.recipe.schema import Key, Recipe, parse_key, recipe_from_dict, set_key
from harness.recipe.tune_spec import TuneSpec, decode_params

Raw = dict[str, Any]


class SearchSpace:
    """The recipe being tuned (``origin`` names it in messages) and its ``[tune]`` table."""

    def __init__(self, recipe: Recipe, plugins: Plugins, origin: str):
        if recipe.tune is None:
            raise BenchError(f"{origin}: no [tune] table; add one (see docs/tuning.md) to say what to search")
        self.spec: TuneSpec = recipe.tune
        self.plugins, self.origin = plugins, origin
        self.base: Raw = recipe.model_dump(mode="json", exclude_none=True)
        del self.base["tune"]
        self.keys = {dotted: parse_key(dotted) for dotted in self.spec.space}

    def baseline_params(self) -> dict[str, Any]:
        """The recipe's own value of every searched key, as Optuna stores it."""
        return {dotted: self.spec.space[dotted].encode(self._value_at(dotted)) for dotted in self.spec.space}

    def recipe_for(self, params: dict[str, Any]) -> Recipe:
        """The trial's recipe: the baseline with ``params`` (as stored by Optuna) set."""
        raw = copy.deepcopy(self.base)
        values = decode_params(params)
        for dotted, value in values.items():
            set_key(raw, self.keys[dotted], value, f"[tune.space] {dotted!r}", self.origin)
        described = ", ".join(f"{key}={json.dumps(value)}" for key, value in values.items())
        return recipe_from_dict(raw, self.plugins, f"{self.origin} with {described}")

    def check(self) -> None:
        """Every key exists, the baseline is inside the space, and every bound or choice gives a
        valid recipe: a typo or an impossible value fails now, in one line, not in trial 7."""
        for dotted, param in self.spec.space.items():
            value = self._value_at(dotted)
            if not param.contains(value):
                raise BenchError(f"{self.origin}: [tune.space] {dotted!r}: the recipe's own value {json.dumps(value)} "
                                 f"is outside {param.describe()}; widen the space so the recipe itself is the first trial")
            for probe in param.probes():
                self.recipe_for({**self.baseline_params(), dotted: param.encode(probe)})

    def fingerprint(self) -> str:
        """What makes two studies the same search: the baseline recipe, the space and the objectives."""
        identity = {"recipe": self.base, "space": {k: p.model_dump() for k, p in self.spec.space.items()},
                    "objectives": list(self.spec.objectives)}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    def _value_at(self, dotted: str) -> Any:
        """The recipe's value at a key; a component parameter the recipe leaves out has its factory default."""
        key: Key = self.keys[dotted]
        node: Any = self.base
        for depth, part in enumerate(key):
            if isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                default = self._component_default(key[:depth], node, part) if depth == len(key) - 1 else None
                if default is None:
                    raise BenchError(f"{self.origin}: [tune.space] {dotted!r}: the recipe has no value at "
                                     f"{'.'.join(map(str, key[:depth + 1]))}; set one so it can be the first trial")
                return default
        return node

    def _component_default(self, parent: Key, table: Any, param: Any) -> Any:
        kind = RECIPE_KEYS.get(".".join(str(p) for p in parent if not isinstance(p, int)))
        if kind is None or not isinstance(table, dict) or "name" not in table:
            return None
        return components.settable_params(self.plugins.get(kind, table["name"])).get(param)
