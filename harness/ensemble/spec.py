"""An ensemble spec: a TOML file that states an ensemble, as a recipe states a training.

    name = "seed_merge"
    threshold = 0.5              # or "oof": chosen on out-of-fold data (the default)
    merger = "mean"
    search = "greedy"            # or "grid": how weights are searched when no member has one
    [[members]]
    name = "alexander"
    runs = ["seed-alexander-*"]  # run folders, names under --results, or globs: several runs are one
    weight = 0.25                # member, merged first by their plain mean; every member weighted, or none
    [[post]]
    name = "seed_hull"           # a registered post-processor, its parameters beside the name
    reads = "alexander"          # the member whose map it reads (default: the merged map)
    force = true                 # applied as stated; false: kept only if out-of-fold Dice says so

A member of several runs is how the winning merge used alexander: his six configs x 5 folds were
averaged into one map before the four teammates' maps were merged at 0.25 each. Members without
weights are weighed by ``bench ensemble``'s search on out-of-fold data, as plain runs are.
``load_spec`` reports any problem as one line naming the file and the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from harness.errors import BenchError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MemberSpec(_Strict):
    name: str = Field(description="How the member is named in messages, ensemble.json and `post.reads`.")
    runs: list[str] = Field(min_length=1, description="Its runs, as `bench ensemble` names runs; several are "
                                                      "averaged into one map first.")
    weight: Annotated[float, Field(ge=0)] | None = Field(None, description="Its weight; unset on every member: "
                                                                          "searched on out-of-fold data.")


class PostSpec(BaseModel):
    """A post-processor: ``name``, where it reads, whether it is forced; other keys are its parameters."""

    model_config = ConfigDict(extra="allow")
    name: str
    reads: str | None = Field(None, description="The member whose map the post-processor reads; unset: the "
                                                "merged map.")
    force: bool = Field(False, description="Apply it without the out-of-fold guard.")

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class EnsembleSpec(_Strict):
    name: str
    description: str = ""
    members: list[MemberSpec] = Field(min_length=1)
    merger: str = "mean"
    threshold: Annotated[float, Field(gt=0, lt=1)] | Literal["oof"] = Field(
        "oof", description="The merged map's threshold (0.5: uint8 level 128 of 255), or 'oof'.")
    post: list[PostSpec] = []
    tolerance: Annotated[float, Field(ge=0, le=1)] = Field(
        0.02, description="Share of images an unforced post-processor may make worse.")
    max_members: Annotated[int, Field(ge=1)] = Field(8, description="Search steps when the weights are searched.")
    search: Literal["greedy", "grid"] = Field(
        "greedy", description="How unset weights are searched (`bench ensemble --search`).")

    @pydantic.model_validator(mode="after")
    def _check(self) -> EnsembleSpec:
        names = [member.name for member in self.members]
        for index, name in enumerate(names):
            if names.index(name) != index:
                raise ValueError(f"members.{index}.name: {name!r} names two members")
        weighted = [member.weight is not None for member in self.members]
        if any(weighted) and not all(weighted):
            missing = weighted.index(False)
            raise ValueError(f"members.{missing}.weight: give every member a weight, or none (searched)")
        if all(weighted) and sum(member.weight for member in self.members) <= 0:
            raise ValueError("members: the weights are all zero; at least one must be positive")
        for index, post in enumerate(self.post):
            if post.reads is not None and post.reads not in names:
                raise ValueError(f"post.{index}.reads: no member {post.reads!r} (members: {', '.join(names)})")
        return self

    @property
    def weights(self) -> list[float] | None:
        """The members' weights, or None when they are to be searched."""
        return None if self.members[0].weight is None else [member.weight for member in self.members]


def load_spec(path: Path) -> EnsembleSpec:
    """Read and validate an ensemble spec; any problem is one ``BenchError`` line naming file and key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"{path}: ensemble spec not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise BenchError(f"{path}: not a valid TOML ensemble spec: {error}") from None
    try:
        return EnsembleSpec.model_validate(raw)
    except pydantic.ValidationError as error:
        problem = error.errors()[0]
        key = ".".join(map(str, problem["loc"]))
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown key"
        where = f"key '{key}': " if key else ""
        more = f" (and {len(error.errors()) - 1} more)" if len(error.errors()) > 1 else ""
        raise BenchError(f"{path}: {where}{message}{more}") from None
