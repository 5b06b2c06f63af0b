"""``bench ablate``: what each trick of a recipe is worth, measured on the same folds.

The baseline is the recipe as resolved (profiles and ``--set`` applied). Each trick makes one
variant that differs from the baseline in that trick only: removed when the recipe uses it, added
(with the seed's settings) when it does not. Every variant is an ordinary ``bench run`` folder (so
finished variants are found again, and an interrupted one resumes), and all share the baseline's
folds, so each variant's per-image Dice pairs image by image with the baseline's: the difference
and its interval come from ``harness.evaluate.stats`` (cars resampled and sign-flipped, never images).

The report is a section of a markdown file (``docs/ablations.md`` by default), delimited by
comment markers, so ablations of several recipes live in one file and regenerating one replaces
only its own section.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from harness.engine.run import RunRequest, run
from harness.errors import BenchError
from harness.evaluate.results import read_per_image
from harness.evaluate.stats import car_sums, paired_difference, pooled_interval
from harness.io import atomic_write_text
from harness.recipe.plugins import Plugins
from harness.recipe.schema import Recipe, recipe_from_dict
from harness.runs.folder import Run, RunFolder

Raw = dict[str, Any]


@dataclass(frozen=True)
class Trick:
    """A recipe feature that can be switched: ``uses`` tells whether a recipe has it; ``toggle``
    returns the recipe (as a dict) with it switched, and a short description of the change."""

    help: str
    uses: Callable[[Raw], bool]
    toggle: Callable[[Raw, bool], str]


def _named(key: str, name: str) -> Callable[[Raw], bool]:
    return lambda raw: any(spec["name"] == name for spec in raw.get(key, []))


def _toggle_component(key: str, name: str, params: Raw) -> Callable[[Raw, bool], str]:
    def toggle(raw: Raw, used: bool) -> str:
        specs = raw.get(key, [])
        raw[key] = [s for s in specs if s["name"] != name] if used else specs + [{"name": name, **params}]
        return f"{'without' if used else 'with'} {key} {name!r}"
    return toggle


def _toggle_tta(raw: Raw, used: bool) -> str:
    predict = raw.setdefault("predict", {})
    before = predict.get("tta", "none")
    predict["tta"] = "none" if used else "hflip"
    return f"predict.tta {before} -> {predict['tta']}"


def _toggle_augment(raw: Raw, used: bool) -> str:
    raw["augment"] = [] if used else [{"name": "hflip", "p": 0.5}]
    return "no augmentation" if used else "with augment hflip (p 0.5)"


def _toggle_pseudo(raw: Raw, used: bool) -> str:
    if used:
        del raw["pseudo_label"]
    else:
        raw["pseudo_label"] = {}
    return "without the pseudo-label stage" if used else "with the pseudo-label stage (default rule)"


def _toggle_grad_clip(raw: Raw, used: bool) -> str:
    if used:
        del raw["train"]["grad_clip"]
    else:
        raw["train"]["grad_clip"] = 1.0
    return "without gradient clipping" if used else "with gradient clipping at norm 1"


TRICKS: dict[str, Trick] = {
    "tta": Trick("flip test-time augmentation", lambda raw: raw.get("predict", {}).get("tta", "none") != "none",
                 _toggle_tta),
    "hnm": Trick("hard negative mining (alexander)", _named("callbacks", "hard_negative_mining"),
                 _toggle_component("callbacks", "hard_negative_mining", {"every": 10})),
    "clahe": Trick("CLAHE preprocessing (alexander)", _named("preprocess", "clahe"),
                   _toggle_component("preprocess", "clahe", {"clip_limit": 2.0, "tile_grid_size": [8, 8]})),
    "augment": Trick("training augmentation", lambda raw: bool(raw.get("augment")), _toggle_augment),
    "pseudo": Trick("pseudo labelling (vladimir)", lambda raw: "pseudo_label" in raw, _toggle_pseudo),
    "grad_clip": Trick("gradient clipping (alexander)", lambda raw: "grad_clip" in raw.get("train", {}),
                       _toggle_grad_clip),
}


@dataclass(frozen=True)
class Variant:
    trick: str | None  # None: the baseline
    change: str
    recipe: Recipe


def variants(recipe: Recipe, tricks: list[str], plugins: Plugins) -> list[Variant]:
    """The baseline, then one variant per trick (see the module docstring)."""
    unknown = [t for t in tricks if t not in TRICKS]
    if unknown or not tricks:
        known = "; ".join(f"{name} ({trick.help})" for name, trick in TRICKS.items())
        raise BenchError(f"--trick {unknown[0] if unknown else '(none given)'}: expected one or more of: {known}")
    if len(set(tricks)) != len(tricks):
        raise BenchError(f"--trick: each trick once, got {', '.join(tricks)}")
    base = recipe.model_dump(mode="json", exclude_none=True)
    found = [Variant(None, "as the recipe states", recipe)]
    for trick in tricks:
        raw = copy.deepcopy(base)
        used = TRICKS[trick].uses(raw)
        change = TRICKS[trick].toggle(raw, used)
        raw["name"] = f"{recipe.name}{'-no-' if used else '+'}{trick}"
        found.append(Variant(trick, change, recipe_from_dict(raw, plugins, f"bench ablate --trick {trick}")))
    return found


def run_variants(found: list[Variant], results: Path, resume: bool, device: str | None, plugins: Plugins,
                 console: Console) -> list[Run]:
    """Run (or find) every variant; return each one's scored stage (its pseudo stage when one was trained:
    with no test image confident enough, the stage is skipped and the first stage is the result)."""
    scored = []
    for variant in found:
        folder = run(RunRequest(variant.recipe, results, resume=resume, device=device), plugins, console)
        stage = RunFolder(folder).scored()
        scored.append(Run(stage, stage.read_summary()))
    hashes = {r.summary.splits_hash for r in scored}
    if len(hashes) != 1:
        raise BenchError("the variants were trained on different folds; an ablation needs them all on one split")
    return scored


def _shown(data: str) -> str:
    """The data folder as the page shows it: the built-in set relative to ``$SEGBENCH_CACHE``, so a page
    committed to docs/ names no folder of the machine that generated it."""
    from harness.data.synthetic import default_cache_root

    try:
        return f"$SEGBENCH_CACHE/{Path(data).resolve().relative_to(default_cache_root().resolve())}"
    except ValueError:
        return data


def report_section(found: list[Variant], scored: list[Run], command: str) -> str:
    """The markdown section of one ablation: Dice with 95% intervals, paired differences to the baseline."""
    base_scores = read_per_image(scored[0])
    name = found[0].recipe.name
    summary = scored[0].summary
    lines = [
        f"<!-- ablation {name}: generated by bench ablate; edits are overwritten -->",
        f"## {name}", "",
        f"`{command}`", "",
        f"{summary['train_images']} training images of {base_scores['car'].nunique()} cars, "
        f"{len(summary['folds'])} folds (splits {summary['splits_hash'][:12]}), data `{_shown(summary['data'])}`. "
        "Dice is out-of-fold, pooled over images; intervals are 95% bootstrap intervals over cars, "
        "differences are paired image by image with the baseline, p from a sign-flip test over cars.", "",
        "| variant | change | out-of-fold Dice [95% interval] | difference to baseline [95% interval] | p |",
        "|---|---|---|---|---|",
    ]
    for variant, result in zip(found, scored):
        scores = read_per_image(result)
        interval = pooled_interval(car_sums(scores))
        dice = f"{interval.estimate:.4f} [{interval.low:.4f}, {interval.high:.4f}]"
        if variant.trick is None:
            lines.append(f"| {variant.recipe.name} (baseline) | {variant.change} | {dice} | | |")
            continue
        delta = paired_difference(scores, base_scores)
        lines.append(f"| {variant.recipe.name} | {variant.change} | {dice} | {delta.estimate:+.4f} "
                     f"[{delta.low:+.4f}, {delta.high:+.4f}] | {delta.p_value:.3g} |")
    lines.append(f"<!-- end ablation {name} -->")
    return "\n".join(lines) + "\n"


def write_section(path: Path, name: str, section: str) -> None:
    """Put ``section`` into the markdown file, replacing the earlier section of the same recipe."""
    text = path.read_text() if path.exists() else (
        "# Ablations\n\nGenerated by `bench ablate`: one section per recipe, each trick switched alone.\n")
    start, end = f"<!-- ablation {name}:", f"<!-- end ablation {name} -->\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
