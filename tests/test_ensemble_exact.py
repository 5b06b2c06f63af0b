"""The test pass's exact merge and its worker pool: bit for bit the float path (``Ensemble.mask``), and
the same submission bytes from one process or several."""

from __future__ import annotations

import pickle


import numpy as np
import pytest
from rich.console import Console

from harness.ensemble import test_pass
from harness.ensemble.test_pass import SubmissionMasks, unpoolable
from harness.ensemble.ensemble import Ensemble, Post, write_test_submission
from harness.ensemble.exact import ALL_LEVELS
from harness.ensemble.members import Group, open_runs
from harness.runs.folder import Run, RunFolder, Summary
from harness.runs.probabilities import ProbabilityMaps, quantise
from plugins.components import merging

SHAPES = [(48, 80), (46, 81), (47, 81)]  # words of 8, 2 and 1 pixels (harness.ensemble.exact)
IMAGES = len(SHAPES)
RUNS = 7  # members below: 4 runs, or groups of 2, 1, 3 and 1 runs


def _crafted_levels(rng: np.random.Generator, shape: tuple[int, int], cutoff: int) -> list[np.ndarray]:
    """Every run's levels of one image: the top third agrees at every level 0..255 (the table's whole
    range); the rest disagrees densely, most of it near ``cutoff`` (so merges land on .5 ties and on
    the cutoff), some of it anywhere."""
    agree = np.resize(rng.permutation(256).astype(np.uint8), (shape[0] // 3, shape[1]))
    maps = []
    for _ in range(RUNS):
        near = rng.integers(cutoff - 3, cutoff + 3, (shape[0] - agree.shape[0], shape[1]))
        anywhere = rng.integers(0, 256, near.shape)
        rest = np.where(rng.random(near.shape) < 0.8, near, anywhere).astype(np.uint8)
        maps.append(np.concatenate([agree, rest]))
    return maps


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> list[Run]:
    """``RUNS`` run folders whose test and out-of-fold stores hold crafted levels (``_crafted_levels``) of
    ``IMAGES`` images."""
    root = tmp_path_factory.mktemp("crafted_runs")
    rng = np.random.default_rng(0)
    ids = [f"img{index}" for index in range(IMAGES)]
    images = [_crafted_levels(rng, shape, cutoff=128 if index else 100) for index, shape in enumerate(SHAPES)]
    runs = []
    for run in range(RUNS):
        for stores in ("test_maps", "oof_maps"):
            store = ProbabilityMaps.create(root / f"run{run}" / stores, dict(zip(ids, SHAPES)))
            for image_id, levels in zip(ids, images):
                store.put(image_id, levels[run])
        runs.append(Run(RunFolder(root / f"run{run}"), Summary({})))
    return runs


def _members(runs: list[Run], grouped: bool) -> list[Run | Group]:
    if not grouped:
        return runs[:4]
    return [Group("a", tuple(runs[0:2])), Group("b", (runs[2],)), Group("c", tuple(runs[3:6])), runs[6]]


POSTS = {name: merging.__dict__[name]() for name in ("convex_hull", "keep_largest", "seed_hull")}


@pytest.mark.parametrize("grouped", [False, True], ids=["runs", "groups"])
@pytest.mark.parametrize("weights", [[0.45, 0.1, 0.3, 0.15], [1, 1, 0, 0], [3, 1, 2, 0], [0.1, 0.2, 0.3, 0.4]],
                         ids=["awkward", "ties", "counts", "tenths"])
@pytest.mark.parametrize("cutoff", [100, 128, 129])
def test_exact_merge_is_the_float_path_bit_for_bit(crafted, grouped, weights, cutoff) -> None:
    ensemble = Ensemble(_members(crafted, grouped), weights, merging.mean(), cutoff, [])
    masks = SubmissionMasks(ensemble)
    assert masks.exact is not None and masks.exact.threshold == cutoff  # convex: the table is the identity
    assert np.array_equal(quantise(masks.exact.table), ALL_LEVELS)
    widths = set()
    for image_id in crafted[0].test.ids:
        split = masks.exact.disagreement([run.test.quantised(image_id) for run in masks.runs])
        widths.add(split.width)
        float_path = ensemble.probability("test", image_id)
        assert split.pixels() > float_path.size // 2  # the float path really ran on many pixels
        np.testing.assert_array_equal(masks.exact.probability(split).view(np.uint32), float_path.view(np.uint32))
        np.testing.assert_array_equal(masks(image_id), quantise(float_path) >= cutoff)
    assert widths == {8, 2, 1}


@pytest.mark.parametrize("grouped", [False, True], ids=["runs", "groups"])
def test_post_processors_see_the_same_maps(crafted, grouped) -> None:
    posts = [Post(name, apply) for name, apply in POSTS.items()] + [Post("keep_largest@1", POSTS["keep_largest"], 1)]
    ensemble = Ensemble(_members(crafted, grouped), [0.45, 0.1, 0.3, 0.15], merging.mean(), 128, posts)
    masks = SubmissionMasks(ensemble)
    for image_id in crafted[0].test.ids:
        np.testing.assert_array_equal(masks(image_id), ensemble.mask("test", image_id))


def _maximum(maps, weights) -> np.ndarray:
    return np.maximum.reduce([map_ for map_, weight in zip(maps, weights) if weight > 0])


def test_an_undeclared_merger_takes_the_float_path(crafted) -> None:
    ensemble = Ensemble(crafted[:4], [1, 1, 1, 0], _maximum, 128, [])
    masks = SubmissionMasks(ensemble)
    assert masks.exact is None
    image_id = crafted[0].test.ids[0]
    np.testing.assert_array_equal(masks(image_id), ensemble.mask("test", image_id))


def test_workers_write_the_bytes_one_process_writes(tiny_runs, tmp_path, monkeypatch) -> None:
    """Real tiny runs, a group among the members, every post-processor: 2 spawned workers, chunks in order."""
    monkeypatch.setattr(test_pass, "CHUNK", 3)  # 16 test images: 6 chunks, 4 of them in flight at a time
    runs = open_runs([tiny_runs[name] for name in ("linknet", "unet", "fpn", "other_splits")])
    posts = [Post(name, apply) for name, apply in POSTS.items()] + [Post("convex_hull@0", POSTS["convex_hull"], 0)]
    ensemble = Ensemble([Group("pair", tuple(runs[:2])), runs[2], runs[3]], [0.45, 0.25, 0.3], merging.mean(), 120,
                        posts)
    assert unpoolable(ensemble) is None
    test_pass._start_worker(pickle.dumps(test_pass.unopened(ensemble)))  # what a worker gets keeps the merger pixelwise
    assert test_pass._masks.exact is not None
    console = Console(quiet=True)
    one = write_test_submission(ensemble, tmp_path / "one.csv.gz", console, workers=1)
    two = write_test_submission(ensemble, tmp_path / "two.csv.gz", console, workers=2)
    assert (one.images, one.workers, two.workers) == (len(runs[0].test.ids), 1, 2)
    assert (tmp_path / "one.csv.gz").read_bytes() == (tmp_path / "two.csv.gz").read_bytes()
    masks = SubmissionMasks(ensemble)
    for image_id in runs[0].test.ids:  # and the masks are the float path's
        np.testing.assert_array_equal(masks(image_id), ensemble.mask("test", image_id))


def test_a_plugin_file_merger_stays_in_one_process(crafted, tmp_path, monkeypatch) -> None:
    """A plugin loaded from a plugins folder lives under a private module name no worker can import."""
    from harness.recipe.plugins import load_plugins

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "maxmerge.py").write_text(
        "import numpy as np\nfrom harness.api import hookimpl\n\n\n"
        "def _maximum(maps, weights):\n    return np.maximum.reduce(list(maps))\n\n\n"
        "@hookimpl\ndef bench_mergers():\n    return {'maximum': lambda: _maximum}\n")
    merge = load_plugins([tmp_path / "plugins"]).get("merger", "maximum").factory()
    ensemble = Ensemble(crafted[:2], [1, 1], merge, 128, [])
    assert "not importable by name" in unpoolable(ensemble)
    monkeypatch.setattr(test_pass, "CHUNK", 1)  # 3 chunks: 2 workers asked for and refused
    outcome = write_test_submission(ensemble, tmp_path / "sub.csv.gz", Console(quiet=True), workers=2)
    assert (outcome.images, outcome.workers) == (IMAGES, 1)


def _undeclared_mean(maps, weights) -> np.ndarray:
    """The built-in mean without its ``pixelwise`` declaration: every map merged whole."""
    return merging.mean()(maps, weights)


@pytest.mark.parametrize("grouped", [False, True], ids=["runs", "groups"])
@pytest.mark.parametrize("pooled", [False, True], ids=["per-image", "pooled"])
def test_out_of_fold_curves_merge_only_where_runs_disagree_bit_for_bit(crafted, grouped, pooled,
                                                                        monkeypatch) -> None:
    """The search's curves (``bench ensemble``'s greedy, grid and weights steps) from the disagreeing pixels
    only are the curves of the whole merged maps, to the last bit, for single runs, groups and mixtures
    with awkward weights, ties and tenths."""
    from harness.ensemble import ensemble as module

    rng = np.random.default_rng(2)
    truths = {image_id: (rng.random(shape) < 0.4).astype(np.uint8) for image_id, shape in
              zip(crafted[0].oof.ids, SHAPES)}
    monkeypatch.setattr(module, "read_mask", lambda dataset, image_id: truths[image_id])
    mixtures = [{0: 1.0}, {3: 1.0}, {0: 0.45, 1: 0.1, 2: 0.3, 3: 0.15}, {1: 1, 3: 1}, {0: 3, 2: 1},
                {0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4}]
    members = _members(crafted, grouped)
    quiet = Console(quiet=True)
    fast = module._curves(members, None, merging.mean(), mixtures, quiet, "exact", pooled)
    whole = module._curves(members, None, _undeclared_mean, mixtures, quiet, "whole", pooled)
    np.testing.assert_array_equal(fast.view(np.uint64 if pooled else np.uint32),
                                  whole.view(np.uint64 if pooled else np.uint32))
    assert np.unique(fast).size > 50  # curves that vary: the comparison compares something


def test_level_counts_count_every_level_and_truth_exactly() -> None:
    from harness.ensemble.oof_search import level_counts

    rng = np.random.default_rng(4)
    for shape in [(0,), (1,), (7,), (13, 17), (1280, 1918)]:
        levels = rng.integers(0, 256, shape).astype(np.uint8)
        truth = rng.random(shape) < 0.3
        expected = np.bincount(levels.ravel().astype(np.int64) + 256 * truth.ravel(), minlength=512)
        np.testing.assert_array_equal(level_counts(levels, truth), expected)
        np.testing.assert_array_equal(level_counts(levels, truth.view(np.uint8)), expected)
