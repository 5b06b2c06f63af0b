"""``bench ensemble``: choose members, weights, threshold and post-processing on out-of-fold data,
then apply that ensemble to the test maps and write a Kaggle submission.

Memory stays bounded whatever the number of images: every pass streams image by image, reading each
member's map and dropping it before the next image. Only per-image summaries are kept (a 256-value
Dice curve per candidate for the out-of-fold images), and only for the current pass. The out-of-fold
passes are: one per selection step (every candidate mixture's Dice at all thresholds at once, see
``harness.ensemble.oof_search``) and one for post-processing; they merge whole float maps
(``Ensemble.probability``). The test maps are read once, by the test pass (``harness.ensemble.test_pass``):
worker processes, one per core unless ``--workers`` says otherwise, hand back each image's RLE in
order; a pixelwise merger (the built-in ``mean``) is computed there by ``harness.ensemble.exact``:
the float path's very bits, computed only where members disagree (a tenth of the pixels or less).

Two searches choose the weights (``--search``), each pass reading every member's map of every image once:

* ``greedy`` (the default): forward selection with replacement, weights count / total; at most
  ``max_members`` passes, each scoring one candidate per run. It cannot give a run a small weight: its second step pairs two runs 50/50.
* ``grid``: greedy, then blend steps from its result: a step replaces the mixture by
  ``(1 - w) * mixture + w * run`` for the best run and ``w`` in 10%, 20%, ... 50%, so a weak run that
  helps a little can enter at 10% (greedy stops at 1:1 when that hurts). Only steps that raise pooled
  Dice are taken, so it never ends below greedy out of fold. At most ``max_members`` more passes,
  each scoring five candidates per run: about five times a greedy pass's CPU (merging and the Dice
  histogram, about 28 ms a candidate for a Carvana image, the reads being the same); they keep only
  mean curves, not per-image ones.

The merged map is quantised like every stored map (``round(p * 255)``) before thresholding, so the
out-of-fold histograms, the submission and ``binarise`` agree exactly on which pixels are car.
"""

from __future__ import annotations

import itertools
import shlex
import time
import tracemalloc
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from harness.data.dataset import DataFolder, read_mask
from harness.data.image_files import image_shape
from harness.data.layouts import open_data
from harness.data.submission import check_submission, write_submission
from harness.ensemble import oof_search, test_pass
from harness.ensemble.exact import ExactMerge, differing_words, gathered
from harness.ensemble.members import Group, open_runs, runs_of, top_runs
from harness.ensemble.spec import load_spec
from harness.errors import BenchError
from harness.evaluate import stats
from harness.evaluate.results import read_per_image
from harness.io import atomic_write_json, atomic_write_text
from harness.recipe.components import build_component
from harness.recipe.hookspecs import Merge, PostProcess
from harness.recipe.plugins import Plugins
from harness.runs.folder import PER_IMAGE_FILE, Run, RunFolder, resolve_runs, resolve_targets, skipped_line
from harness.runs.probabilities import LEVEL_COUNT, binarise, quantise

T = TypeVar("T")
MAX_POSTPROCESSORS = 4  # every ordered subset is scored in one pass: 2^4 masks per image at most
SEARCHES = {
    "greedy": "greedy forward selection with replacement",
    "grid": "greedy forward selection with replacement, then blend steps: each mixes one run in at "
            + ", ".join(f"{w:.0%}" for w in oof_search.BLEND_GRID),
}


@dataclass(frozen=True)
class EnsembleRequest:
    """What ``bench ensemble`` was asked for; ``None`` means "choose it on out-of-fold data"."""

    runs: list[str]
    out: Path
    results: Path = Path("results")
    top: int | None = None
    weights: list[float] | None = None
    max_members: int = 8
    threshold: float | None = None
    post: list[str] = field(default_factory=lambda: ["convex_hull", "keep_largest"])
    force_post: bool = False
    tolerance: float = 0.02
    merger: str = "mean"
    search: str = "greedy"  # one of SEARCHES: how weights are chosen when none are given
    workers: int | None = None  # processes for the test pass; None: one per core
    data: Path | None = None
    command: str = ""


@dataclass(frozen=True)
class Post:
    """A post-processor as the ensemble applies it: to the merged map, or to one member's (``reads``)."""

    name: str
    apply: PostProcess
    reads: int | None = None  # index of the member whose map it reads; None: the merged map
    component: str | None = None  # the registered name it was built from; None: ``name``
    params: dict = field(default_factory=dict)  # as given, before validation: they rebuild it (``apply``)

    def __call__(self, ensemble: Ensemble, split: str, image_id: str, merged: np.ndarray,
                 mask: np.ndarray) -> np.ndarray:
        if self.reads is None:
            return self.apply(merged, mask)
        return self.apply(getattr(ensemble.runs[self.reads], split).read_float(image_id), mask)


@dataclass(frozen=True)
class Ensemble:
    """A chosen ensemble: everything needed to turn member maps into a submission mask.

    A member is a run or a ``Group`` of runs merged first (``harness.ensemble.members``).
    """

    runs: list[Run | Group]
    weights: list[float]
    merge: Merge
    cutoff: int  # mask = round(p * 255) >= cutoff
    post: list[Post]

    def members(self) -> list[int]:
        return [index for index, weight in enumerate(self.weights) if weight > 0]

    def probability(self, split: str, image_id: str) -> np.ndarray:
        members = self.members()
        maps = [getattr(self.runs[i], split).read_float(image_id) for i in members]
        return self.merge(maps, [self.weights[i] for i in members])

    def mask(self, split: str, image_id: str) -> np.ndarray:
        probability = self.probability(split, image_id)
        return self.postprocess(split, image_id, probability, quantise(probability) >= self.cutoff)

    def postprocess(self, split: str, image_id: str, probability: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The kept post-processors, in order, on the mask thresholded from the merged ``probability``."""
        for post in self.post:
            mask = post(self, split, image_id, probability, mask)
        return mask


def build_ensemble(request: EnsembleRequest, plugins: Plugins, console: Console) -> dict:
    """Choose the ensemble on out-of-fold data, write the submission and ``ensemble.json``; return the latter."""
    targets = resolve_targets(request.runs, request.results)
    if targets.skipped:
        console.print(skipped_line(targets.skipped), highlight=False)
    folders = targets.folders
    if not request.runs:  # every run in --results: the finished ones (a named unfinished run is refused)
        folders = [folder for folder in folders if RunFolder(folder).complete()]
    runs = open_runs(folders)
    if request.top is not None:
        runs = top_runs(runs, request.top)
    _check_request(request, runs)
    dataset = _truth_set(request.data or Path(runs[0].summary["data"]), runs[0])
    merge = component_from_text(plugins, "merger", request.merger)
    posts = []
    for text in request.post:
        name, params = _parse_component("postprocessor", text)
        posts.append(Post(text, build_component(plugins, "postprocessor", name, params, f"postprocessor {text!r}"),
                          component=name, params=params))
    return _choose_and_write(request, runs, dataset, merge, posts, console)


def build_from_spec(path: Path, request: EnsembleRequest, plugins: Plugins, console: Console) -> dict:
    """``bench ensemble SPEC.toml``: the ensemble a spec states (``harness.ensemble.spec``), its
    unstated parts (weights, threshold, unforced post-processors) chosen on out-of-fold data."""
    spec = load_spec(path)
    found = []
    for index, member in enumerate(spec.members):
        try:
            found.append(resolve_runs(member.runs, request.results))
        except BenchError as error:
            raise BenchError(f"{path}: key 'members.{index}.runs': {error}") from None
    runs = open_runs([folder for folders in found for folder in folders])  # one data set, the same images
    by_path = {str(run.path.resolve()): run for run in runs}
    members = [Group(member.name, tuple(by_path[str(f.resolve())] for f in folders))
               for member, folders in zip(spec.members, found)]
    forced = {post.force for post in spec.post}
    if len(forced) > 1:
        raise BenchError(f"{path}: key 'post': force every post-processor or none (the out-of-fold guard "
                         "judges a chain as a whole)")
    names = [member.name for member in spec.members]
    posts = []
    for index, post in enumerate(spec.post):
        apply = build_component(plugins, "postprocessor", post.name, post.params, str(path), key=f"post.{index}")
        label = post.name if post.reads is None else f"{post.name}@{post.reads}"
        posts.append(Post(label, apply, None if post.reads is None else names.index(post.reads), post.name,
                          dict(post.params)))
    labels = [post.name for post in posts]
    if len(set(labels)) != len(labels):
        raise BenchError(f"{path}: key 'post': a post-processor is listed twice on the same map")
    spec_request = replace(
        request, weights=spec.weights, max_members=spec.max_members, search=spec.search, merger=spec.merger, post=labels,
        threshold=None if spec.threshold == "oof" else spec.threshold, force_post=forced == {True},
        tolerance=spec.tolerance,
    )
    _check_request(spec_request, members)
    if spec_request.threshold is not None:  # checked here, where the message can name the spec's key
        _cutoff(spec_request.threshold, where=f"{path}: key 'threshold' =")
    dataset = _truth_set(request.data or Path(runs[0].summary["data"]), runs[0])
    merge = build_component(plugins, "merger", spec.merger, {}, f"{path}: key 'merger'")
    return _choose_and_write(spec_request, members, dataset, merge, posts, console, spec=path)


def _choose_and_write(request: EnsembleRequest, runs: list[Run | Group], dataset: DataFolder, merge: Merge,
                      posts: list[Post], console: Console, spec: Path | None = None) -> dict:
    """Weights, threshold and post-processing on out-of-fold data (what the request leaves open), then the
    submission and ``ensemble.json``."""
    fixed_cutoff = None if request.threshold is None else _cutoff(request.threshold)
    started = time.perf_counter()
    search = _search_members(request, runs, dataset, merge, fixed_cutoff, console)
    post_names = [post.name for post in posts]
    chains = _chains(post_names) if not request.force_post else [tuple(post_names[:n]) for n in range(len(posts) + 1)]
    dice_by_chain = _post_pass(Ensemble(runs, search.weights, merge, search.cutoff, posts), dataset, chains, console)
    if request.force_post:
        kept, decisions = tuple(post_names), []
    else:
        kept, decisions = oof_search.decide_postprocessing(dice_by_chain, post_names, request.tolerance)
    oof_seconds = time.perf_counter() - started

    ensemble = Ensemble(runs, search.weights, merge, search.cutoff, [p for p in posts if p.name in kept])
    request.out.mkdir(parents=True, exist_ok=True)
    submission = request.out / "submission.csv.gz"
    test = write_test_submission(ensemble, submission, console, request.workers or test_pass.default_workers(),
                                 names={image_id: path.name for image_id, path in dataset.test_files.items()})
    report = _report(request, ensemble, search, dataset, dice_by_chain, kept, decisions, test, oof_seconds, spec)
    ids = runs[0].oof.ids  # per image, as a run's per_image.csv: ensembles pair with each other and with runs
    atomic_write_text(request.out / PER_IMAGE_FILE, "image,car,dice\n" + "".join(
        f"{image_id},{dataset.group_of(image_id)},{score:.6f}\n" for image_id, score in zip(ids, dice_by_chain[kept])))
    atomic_write_json(request.out / "ensemble.json", report)
    return report


@dataclass(frozen=True)
class Search:
    """The outcome of member selection: weights per run, the cutoff, and the single runs' curves."""

    weights: list[float]
    cutoff: int
    single_curves: np.ndarray  # images x runs x 256: each run alone
    steps: list[dict]


def _search_members(request, runs, dataset, merge, fixed_cutoff, console) -> Search:
    """Greedy forward selection with replacement (then blend steps, for ``--search grid``), or the given
    weights; the threshold either way."""
    singles = [{run: 1} for run in range(len(runs))]
    if request.weights is not None:
        curves = _curves(runs, dataset, merge, [dict(enumerate(request.weights))] + singles, console, "weights")
        means = curves[:, 0].mean(axis=0)
        cutoff = fixed_cutoff if fixed_cutoff is not None else oof_search.best_cutoff(means)
        step = {"runs": [run.name for run, w in zip(runs, request.weights) if w > 0], "dice": float(means[cutoff])}
        weights = [w / sum(request.weights) for w in request.weights]
        return Search(weights, cutoff, curves[:, 1:], [step])
    counts: dict[int, int] = {}
    current, cutoff, single_curves, steps = None, oof_search.SEED_CUTOFF, None, []
    for number in range(1, request.max_members + 1):
        mixtures = oof_search.candidate_mixtures(counts, len(runs))
        curves = _curves(runs, dataset, merge, mixtures, console, f"greedy step {number}")
        single_curves = curves if single_curves is None else single_curves
        step = oof_search.greedy_step(curves, current, fixed_cutoff)
        if step is None:
            break
        counts[step.added] = counts.get(step.added, 0) + 1
        current, cutoff = step.dice, step.cutoff
        steps.append({"added": runs[step.added].name, "dice": step.dice,
                      "threshold": oof_search.cutoff_to_threshold(step.cutoff)})
        console.print(f"step {number}: + {runs[step.added].name} -> out-of-fold Dice {step.dice:.5f} "
                      f"at threshold {oof_search.cutoff_to_threshold(step.cutoff):.3f}", highlight=False)
    greedy = Search(oof_search.weights_from_counts(counts, len(runs)), cutoff, single_curves, steps)
    if request.search == "grid":
        return _refine_on_grid(greedy, request, runs, dataset, merge, fixed_cutoff, console)
    return greedy


def _refine_on_grid(greedy: Search, request, runs, dataset, merge, fixed_cutoff, console) -> Search:
    """Blend steps from greedy's result: each replaces the mixture by the best ``(1 - w) * mixture + w * run``,
    ``w`` in ``oof_search.BLEND_GRID``, while pooled Dice rises; at most ``max_members`` steps.

    Starting where greedy stopped and taking only steps that raise pooled Dice, it never ends below
    greedy out of fold. Its first pass scores greedy's own mixture too, pooled like the candidates
    (float64), so a step has to beat it by more than rounding. Passes keep only mean curves.
    """
    weights = {run: weight for run, weight in enumerate(greedy.weights) if weight > 0}
    current, cutoff, steps = None, greedy.cutoff, list(greedy.steps)
    for number in range(1, request.max_members + 1):
        candidates = oof_search.blended_mixtures(weights, len(runs))
        if not candidates:  # a single run
            break
        mixtures = ([weights] if current is None else []) + [mixture for _, _, mixture in candidates]
        means = _curves(runs, dataset, merge, mixtures, console, f"grid step {number}", pooled=True)
        if current is None:
            current, means = float(means[0, cutoff]), means[1:]
        step = oof_search.greedy_step(means[None], current, fixed_cutoff)
        if step is None:
            break
        run, blend, weights = candidates[step.added]
        current, cutoff = step.dice, step.cutoff
        steps.append({"added": runs[run].name, "weight": blend, "dice": step.dice,
                      "threshold": oof_search.cutoff_to_threshold(step.cutoff)})
        console.print(f"grid step {number}: + {runs[run].name} at {blend:.0%} -> out-of-fold Dice {step.dice:.5f} "
                      f"at threshold {oof_search.cutoff_to_threshold(step.cutoff):.3f}", highlight=False)
    return Search([weights.get(run, 0.0) for run in range(len(runs))], cutoff, greedy.single_curves, steps)


def _curves(runs: list[Run], dataset: DataFolder, merge: Merge, mixtures: list[dict[int, float]],
            console: Console, label: str, pooled: bool = False) -> np.ndarray:
    """Per image and mixture, Dice at every cutoff: images x mixtures x 256, one pass over the images.

    ``pooled``: only the mean over images, mixtures x 256 (float64), whatever the number of images.
    """
    ids = runs[0].oof.ids
    shape = (len(mixtures), LEVEL_COUNT) if pooled else (len(ids), len(mixtures), LEVEL_COUNT)
    curves = np.zeros(shape, dtype=np.float64 if pooled else np.float32)
    needed = sorted({run for mixture in mixtures for run, weight in mixture.items() if weight > 0})
    chosen = [[run for run in sorted(mixture) if mixture[run] > 0] for mixture in mixtures]
    exact = [ExactMerge.build([len(runs_of(runs[run])) for run in members], [mixtures[m][run] for run in members],
                              merge, oof_search.SEED_CUTOFF) for m, members in enumerate(chosen)]
    for i, image_id in enumerate(_track(ids, f"out-of-fold, {label}", console)):
        truth = read_mask(dataset, image_id)
        if all(exact):
            image_curves = _exact_curves(runs, needed, chosen, exact, image_id, truth)
        else:  # a merger that does not declare itself pixelwise: every map merged whole
            maps = {run: runs[run].oof.read_float(image_id) for run in needed}
            image_curves = [oof_search.dice_curve(quantise(merge([maps[run] for run in members],
                                                                 [mixtures[m][run] for run in members])), truth)
                            for m, members in enumerate(chosen)]
        for m, curve in enumerate(image_curves):
            if pooled:
                curves[m] += curve
            else:
                curves[i, m] = curve
    return curves / max(len(ids), 1) if pooled else curves


def _exact_curves(runs: list[Run | Group], needed: list[int], chosen: list[list[int]], exact: list[ExactMerge],
                  image_id: str, truth: np.ndarray) -> list[np.ndarray]:
    """Every mixture's Dice curve of one image, bit for bit the whole maps' (``harness.ensemble.exact``),
    merging only the pixels where the needed runs disagree.

    Where every run holds one level ``c`` (nearly all of a car image), a mixture's merged level is its
    table's ``quantise(table[c])``: those pixels' (level, truth) counts are taken once per image and
    moved to each mixture's levels in 512 additions; the float path runs on the rest only.
    """
    levels = {run: [member.oof.quantised(image_id) for member in runs_of(runs[run])] for run in needed}
    every = [level for run in needed for level in levels[run]]
    where, width = differing_words(every)
    truth_there = gathered(truth.view(np.uint8), where, width)
    first = every[0]
    agreeing = oof_search.level_counts(first, truth) - oof_search.level_counts(gathered(first, where, width),
                                                                              truth_there)
    image_curves = []
    for members, merged in zip(chosen, exact):
        moved = quantise(merged.table).astype(np.int64)
        counts = np.bincount(np.concatenate([moved, moved + LEVEL_COUNT]), weights=agreeing,
                             minlength=2 * LEVEL_COUNT).astype(np.int64)
        values = merged.values([gathered(level, where, width) for run in members for level in levels[run]])
        counts += oof_search.level_counts(quantise(values), truth_there)
        image_curves.append(oof_search.counts_curve(counts))
    return image_curves


def _chains(names: list[str]) -> list[tuple[str, ...]]:
    """Every ordered subset of ``names`` (the order given), from none to all."""
    return [chain for size in range(len(names) + 1) for chain in itertools.combinations(names, size)]


def _post_pass(ensemble: Ensemble, dataset: DataFolder, chains: list[tuple[str, ...]],
               console: Console) -> dict[tuple[str, ...], np.ndarray]:
    """Per-image Dice of the chosen mixture and cutoff under every chain of post-processors."""
    from harness.engine.metrics import dice

    functions = {post.name: post for post in ensemble.post}
    ids = ensemble.runs[0].oof.ids
    scores = {chain: np.empty(len(ids)) for chain in chains}
    for i, image_id in enumerate(_track(ids, "out-of-fold, post-processing", console)):
        truth = read_mask(dataset, image_id)
        probability = ensemble.probability("oof", image_id)
        masks = {(): quantise(probability) >= ensemble.cutoff}
        for chain in chains:  # shortest first, so every chain's prefix is already computed
            if chain not in masks:
                masks[chain] = functions[chain[-1]](ensemble, "oof", image_id, probability, masks[chain[:-1]])
            scores[chain][i] = dice(masks[chain], truth)
    return scores


@dataclass(frozen=True)
class TestOutcome:
    images: int
    seconds: float
    peak_traced_mb: float  # of this process, which writes the rows; each worker holds a few images more
    workers: int


def write_test_submission(ensemble: Ensemble, path: Path, console: Console, workers: int = 1,
                          ids: list[str] | None = None, names: dict[str, str] | None = None) -> TestOutcome:
    """Merge, threshold, post-process and encode every test image (or those of ``ids``) into ``path``,
    streaming, in ``workers`` processes (``harness.ensemble.test_pass``; one: in this process). ``names``:
    the test images' file names, for the rows (unset: ``<id>.jpg``, Carvana's)."""
    ids = ensemble.runs[0].test.ids if ids is None else ids
    workers = test_pass.pool_size(len(ids), workers)
    reason = test_pass.unpoolable(ensemble) if workers > 1 else None
    if reason is not None:
        console.print(f"test pass in one process: {reason}", highlight=False)
        workers = 1
    rows = _track(test_pass.encoded_rows(ensemble, workers, ids), "test", console, total=len(ids))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        written = write_submission(path, rows, names)
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    shapes = ensemble.runs[0].test.shapes
    check_submission(path, {image_id: shapes[image_id] for image_id in ids})
    return TestOutcome(written, seconds, peak / 2**20, workers)


def _report(request, ensemble, search, dataset, dice_by_chain, kept, decisions, test, oof_seconds, spec=None) -> dict:
    """ensemble.json: members, weights, threshold, post-processing, Dice with intervals, how to redo it."""
    runs = ensemble.runs
    ids = runs[0].oof.ids
    cars = [dataset.group_of(image_id) for image_id in ids]
    final = dice_by_chain[kept]
    at_seed = search.single_curves[:, :, oof_search.SEED_CUTOFF].astype(np.float64)
    best = int(np.argmax(at_seed.mean(axis=0)))
    best_own = oof_search.best_cutoff(search.single_curves[:, best].mean(axis=0))
    table = pd.DataFrame({"image": ids, "car": cars, "dice": final})
    best_table = table.assign(dice=at_seed[:, best])
    interval = stats.pooled_interval(stats.car_sums(table))
    best_interval = stats.pooled_interval(stats.car_sums(best_table))
    difference = stats.paired_difference(table, best_table)
    # Merging alone: the ensemble before post-processing against the best run at its own tuned
    # threshold, so neither threshold tuning nor post-processing is credited to the merge.
    merged = table.assign(dice=dice_by_chain[()])
    merge_gain = stats.paired_difference(merged, best_table.assign(dice=search.single_curves[:, best, best_own]))
    threshold = oof_search.cutoff_to_threshold(ensemble.cutoff)
    members = [_member_entry(runs[i], ensemble.weights[i], search.single_curves[:, i]) for i in ensemble.members()]
    every_run = [run for member in runs for run in runs_of(member)]
    splits = {run.summary.splits_hash for run in every_run}
    return {
        "members": members,
        "merger": request.merger,
        "threshold": threshold,
        "cutoff_u8": ensemble.cutoff,
        "apply": applied(ensemble, request.merger),
        "postprocessing": {
            "tried": list(request.post),
            "kept": list(kept),
            "tolerance": request.tolerance,
            "forced": request.force_post,
            "decisions": [vars(decision) for decision in decisions],
        },
        "selection": {"search": "given" if request.weights else request.search,
                      "method": "given weights" if request.weights else SEARCHES[request.search],
                      "grid": list(oof_search.BLEND_GRID) if request.search == "grid" and not request.weights else None,
                      "max_members": request.max_members, "steps": search.steps},
        "oof": {
            "images": len(ids),
            "cars": len(set(cars)),
            "ensemble_dice": interval.estimate,
            "ensemble_interval": [interval.low, interval.high],
            "ensemble_dice_before_postprocessing": float(dice_by_chain[()].mean()),
            "best_run": runs[best].name,
            "best_run_dice": best_interval.estimate,
            "best_run_interval": [best_interval.low, best_interval.high],
            "best_run_dice_at_own_threshold": float(search.single_curves[:, best, best_own].mean()),
            "best_run_own_threshold": oof_search.cutoff_to_threshold(best_own),
            "difference": difference.estimate,
            "difference_interval": [difference.low, difference.high],
            "difference_p_value": difference.p_value,
            "interval": f"{stats.LEVEL:.0%} bootstrap over cars, {stats.RESAMPLES} resamples, seed {stats.SEED}; "
                        "p: sign-flip permutation over cars",
            "merge_gain": merge_gain.estimate,
            "merge_gain_interval": [merge_gain.low, merge_gain.high],
            "merge_gain_p_value": merge_gain.p_value,
            "helped": bool(len(ensemble.members()) > 1 and merge_gain.low > 0),
            "seconds": round(oof_seconds, 1),
        },
        "test": {"images": test.images, "seconds": round(test.seconds, 2),
                 "images_per_s": round(test.images / max(test.seconds, 1e-9), 2), "workers": test.workers,
                 "peak_traced_mb": round(test.peak_traced_mb, 1)},
        "data_hash": next((run.summary.data_hash for run in every_run if run.summary.data_hash), None),
        "splits_hash": splits.pop() if len(splits) == 1 else None,  # None: the runs' folds differ (see members)
        "data": str(dataset.root),
        "submission": str(request.out / "submission.csv.gz"),
        "spec": None if spec is None else str(spec),
        "reproduce": {
            "search": request.command,
            # a spec's own command is the apply command too: what it leaves open is searched the same way
            "apply": request.command if spec is not None else _apply_command(request, ensemble, kept, dataset),
            "check": f"bench ensemble --check {shlex.quote(str(request.out / 'submission.csv.gz'))} "
                     f"--data {shlex.quote(str(dataset.root))}",
        },
    }


def applied(ensemble: Ensemble, merger: str) -> dict:
    """What ``bench predict ENSEMBLE`` rebuilds the ensemble from (``harness.ensemble.apply``): the members
    it reads (those with a weight, and those a post-processor reads) with their run folders, the merger,
    the cutoff and the post-processors, each as its registered name and parameters."""
    needed = sorted(set(ensemble.members()) | {post.reads for post in ensemble.post if post.reads is not None})
    return {
        "members": [{"name": ensemble.runs[i].name, "weight": ensemble.weights[i],
                     "group": isinstance(ensemble.runs[i], Group),
                     "folders": [str(run.path.resolve()) for run in runs_of(ensemble.runs[i])]} for i in needed],
        "merger": merger,
        "cutoff_u8": ensemble.cutoff,
        "post": [{"name": post.component or post.name, "params": post.params,
                  "reads": None if post.reads is None else needed.index(post.reads)} for post in ensemble.post],
    }


def _member_entry(member: Run | Group, weight: float, curves: np.ndarray) -> dict:
    """A member in ensemble.json: a run as before; a group with its runs and its own out-of-fold Dice."""
    if isinstance(member, Run):
        return {"run": member.name, "folder": str(member.path), "weight": weight, "run_oof_dice": member.oof_dice,
                "splits_hash": member.summary.splits_hash}
    return {"member": member.name, "runs": [run.name for run in member.runs],
            "folders": [str(run.path) for run in member.runs], "weight": weight,
            "oof_dice": float(curves[:, oof_search.SEED_CUTOFF].mean()),  # its mean map alone, at 0.5
            "splits_hash": sorted({run.summary.splits_hash for run in member.runs})}


def _apply_command(request: EnsembleRequest, ensemble: Ensemble, kept: tuple[str, ...], dataset: DataFolder) -> str:
    """The command that rebuilds this exact submission without searching: members, weights, cutoff fixed."""
    members = ensemble.members()
    words = ["bench", "ensemble", *(str(ensemble.runs[i].path) for i in members),
             "--weights", ",".join(repr(ensemble.weights[i]) for i in members),
             "--threshold", repr(oof_search.cutoff_to_threshold(ensemble.cutoff)),
             "--merger", request.merger, "--post", ",".join(kept) or "none", "--force-post",
             "--data", str(dataset.root), "--out", str(request.out)]
    return shlex.join(words)


def check(path: Path, data: Path | None, runs: list[str], results: Path) -> int:
    """``bench ensemble --check``: validate a submission against the test images of a data folder or run."""
    if data is not None:
        dataset = open_data(data)
        if not dataset.test:
            raise BenchError(f"data folder {data} has no test/ images to check against")
        expected = {image_id: _test_size(path) for image_id, path in dataset.test_files.items()}
    elif runs:
        expected = open_runs(resolve_runs(runs, results))[0].test.shapes
    else:
        raise BenchError("--check needs --data ROOT or a run folder to know the test images and their sizes")
    return check_submission(path, expected)


def _test_size(path: Path) -> tuple[int, int]:
    """(height, width) of a test image from its header: no decoding, so checking 100,064 rows stays fast."""
    shape = image_shape(path)
    if shape is None:
        raise BenchError(f"{path}: cannot read the test image's size")
    return shape


def _check_request(request: EnsembleRequest, runs: list[Run]) -> None:
    if request.weights is not None:
        if len(request.weights) != len(runs):
            raise BenchError(f"--weights: {len(request.weights)} weights for {len(runs)} runs "
                             f"({', '.join(run.name for run in runs)})")
        if any(w < 0 for w in request.weights) or sum(request.weights) <= 0:
            raise BenchError(f"--weights: need non-negative weights with a positive sum, got {request.weights}")
    if request.search not in SEARCHES:
        raise BenchError(f"--search {request.search}: expected one of {', '.join(SEARCHES)}")
    if request.workers is not None and request.workers < 1:
        raise BenchError(f"--workers {request.workers}: expected at least 1")
    if request.max_members < 1:
        raise BenchError(f"--max-members {request.max_members}: expected at least 1")
    if not 0.0 <= request.tolerance <= 1.0:
        raise BenchError(f"--tolerance {request.tolerance}: expected a share of images in [0, 1]")
    if request.threshold is not None and not 0.0 < request.threshold < 1.0:
        raise BenchError(f"--threshold {request.threshold}: expected a probability in (0, 1)")
    if len(request.post) > MAX_POSTPROCESSORS or len(set(request.post)) != len(request.post):
        raise BenchError(f"--post {','.join(request.post)}: at most {MAX_POSTPROCESSORS} distinct post-processors")


def _truth_set(root: Path, run: Run | Group) -> DataFolder:
    """The data folder with the ground truth; every out-of-fold image must be in it, at its size. Its
    groups are the ones the run was scored with (its per-image table), which a recipe may have taken
    from a pattern the folder does not hold."""
    dataset = open_data(root)
    first = run.runs[0] if isinstance(run, Group) else run
    for image_id, shape in first.oof.shapes.items():
        if dataset.sizes.get(image_id) != shape:
            found = "missing" if image_id not in dataset.sizes else f"{dataset.sizes[image_id]}"
            raise BenchError(f"data folder {root} does not match run {first.name}: training image {image_id} "
                             f"is {found}, the run's map is {shape}; pass --data ROOT")
    scored = read_per_image(first)
    return replace(dataset, groups=dict(zip(scored["image"], scored["car"])), grouping=f"as run {first.name} scored")


def component_from_text(plugins: Plugins, kind: str, spec: str) -> Callable:
    """Build a merger or post-processor from ``name`` or ``name:key=value:key=value`` (a command-line value)."""
    return build_component(plugins, kind, *_parse_component(kind, spec), f"{kind} {spec!r}")


def _parse_component(kind: str, spec: str) -> tuple[str, dict[str, str]]:
    name, *pairs = spec.split(":")
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise BenchError(f"{kind} {spec!r}: expected name:key=value, got {pair!r}")
        params[key] = value
    return name, params


def _cutoff(threshold: float, where: str = "--threshold") -> int:
    """The uint8 cutoff ``binarise`` uses for ``threshold`` (asked of it, so the two cannot drift apart)."""
    cutoff = int(np.count_nonzero(~binarise(np.arange(LEVEL_COUNT, dtype=np.uint8), threshold)))
    if cutoff in (0, LEVEL_COUNT):
        raise BenchError(f"{where} {threshold}: marks every pixel or none on the uint8 scale")
    return cutoff


def _track(items: Iterable[T], label: str, console: Console, total: int | None = None) -> Iterator[T]:
    """``items`` with a progress bar on a terminal; ``total`` when they are not a sized sequence."""
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        yield from progress.track(items, total=len(items) if total is None else total)
