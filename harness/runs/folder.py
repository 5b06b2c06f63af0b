"""The run folder: the one place that knows its layout (``docs/results.md`` documents it).

``bench run`` writes a run folder, and ``bench compare``, ``report``, ``ensemble``, ``ablate`` and
``tune`` read it. Every path into it, the test of whether a run or a fold is finished, the summary's
required fields, which stage of a run is scored, and the opening of its probability stores are
here, so a change of layout is a change of this module alone.

A folder is complete when ``summary.json`` exists: it is written last. Every stage before it leaves
a marker of its own (``fold-K/fold.json``, ``test.json``); a pseudo-label stage is a run folder of
its own inside its run (``RUN/pseudo``), summarised like one.

Which runs may be ranked or merged together is decided here too, once, by ``data_groups``: runs on
the same labelled data (one data hash), whatever their folds.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import BenchError

if TYPE_CHECKING:  # imported where a store is opened: `bench --help` reads this module's help texts
    from harness.runs.probabilities import ProbabilityMaps, RawMaps

PSEUDO_STAGE = "pseudo"
SUMMARY_FILE = "summary.json"
SUMMARY_FIELDS = ("data", "splits_hash", "oof_dice")  # what every reader relies on
PER_IMAGE_FILE = "per_image.csv"  # Dice per image: a run's, a fold's, and an ensemble's (harness.ensemble)
RUNS_HELP = ("Run folders, folders of runs, run names under --results, or globs of any of these "
             "(default: every run in --results).")


@dataclass(frozen=True)
class FoldFolder:
    """``fold-K/``: one fold's checkpoints, curve, scores and completion mark."""

    path: Path

    @property
    def index(self) -> int:
        return int(self.path.name.removeprefix("fold-"))

    best = property(lambda self: self.path / "best.pt")  # the best epoch's weights
    last = property(lambda self: self.path / "last.pt")  # what --resume continues from
    history = property(lambda self: self.path / "history.csv")
    per_image = property(lambda self: self.path / PER_IMAGE_FILE)
    per_image_last = property(lambda self: self.path / "per_image_last.csv")  # the latest validation's scores
    failure = property(lambda self: self.path / "failure.json")  # why training stopped (a NaN loss)
    log = property(lambda self: self.path / "train.log")  # the output of the worker that trained it (--devices)
    marker = property(lambda self: self.path / "fold.json")  # written last: the fold is finished

    def done(self) -> bool:
        return self.marker.exists()

    def read(self) -> dict[str, Any]:
        return read_json(self.marker)

    def read_checkpoint(self, path: Path) -> dict[str, Any]:
        """A checkpoint of this fold, or one line naming it when it cannot be read back (cut short by a
        full disk or a crash outside our atomic writes)."""
        import torch  # here, not at the top: `bench --help` reads this module's help texts

        try:
            return torch.load(path, weights_only=True, map_location="cpu")
        except Exception as error:  # torch raises RuntimeError, EOFError, pickle errors...
            raise UnreadableCheckpoint(path, error) from None


class UnreadableCheckpoint(BenchError):
    def __init__(self, path: Path, error: Exception):
        self.path = path
        super().__init__(f"{path}: cannot be read back ({type(error).__name__}: {_first_line(error)}); "
                         f"the file is damaged. Delete {path.parent} and rerun with --resume to train that fold again")


@dataclass(frozen=True)
class RunFolder:
    """A run folder, or a stage of one (``RUN/pseudo``), which has the same layout."""

    path: Path

    @property
    def name(self) -> str:
        """The folder's name; a stage is named by both (``RUN/pseudo``), so the stages of two runs stay
        apart in a leaderboard and in an ensemble."""
        if self.path.name == PSEUDO_STAGE and (self.path.parent / "recipe.toml").exists():
            return f"{self.path.parent.name}/{self.path.name}"
        return self.path.name

    recipe_toml = property(lambda self: self.path / "recipe.toml")
    splits = property(lambda self: self.path / "splits.json")
    environment = property(lambda self: self.path / "environment.json")
    choices = property(lambda self: self.path / "choices.json")  # what it decided from data and machine
    tracking = property(lambda self: self.path / "tracking.json")  # its trackers' runs (harness.track)
    per_image = property(lambda self: self.path / PER_IMAGE_FILE)
    test_marker = property(lambda self: self.path / "test.json")
    summary_path = property(lambda self: self.path / SUMMARY_FILE)
    selection = property(lambda self: self.path / "selection.json")  # in a pseudo stage: the images it added
    jobs = property(lambda self: self.path / "jobs")  # submitit's folder: the folds' jobs and their output
    oof_maps = property(lambda self: self.path / "oof_maps")
    test_maps = property(lambda self: self.path / "test_maps")

    def fold(self, k: int) -> FoldFolder:
        return FoldFolder(self.path / f"fold-{k}")

    def folds(self) -> list[FoldFolder]:
        """The fold folders present, in fold order."""
        found = [FoldFolder(p) for p in self.path.glob("fold-*") if p.name.removeprefix("fold-").isdigit()]
        return sorted(found, key=lambda fold: fold.index)

    def folds_done(self) -> int:
        return sum(1 for fold in self.folds() if fold.done())

    @property
    def pseudo(self) -> RunFolder:
        return RunFolder(self.path / PSEUDO_STAGE)

    def complete(self) -> bool:
        return self.summary_path.exists()

    def scored(self) -> RunFolder:
        """The stage a run is judged by: its pseudo-label stage when one was trained, else itself."""
        return self.pseudo if self.pseudo.complete() else self

    def read_summary(self) -> Summary:
        """The typed summary; one line naming the file when it is missing, unreadable or not ours."""
        if not self.summary_path.is_file():
            raise BenchError(f"run {self.path} is unfinished (no summary.json); finish it with bench run --resume")
        fields = read_json(self.summary_path)
        missing = [key for key in SUMMARY_FIELDS if key not in fields]
        if missing:
            raise BenchError(f"{self.summary_path}: no {missing[0]!r}; is this a segbench run folder?")
        return Summary(fields)

    def open_maps(self, which: str) -> ProbabilityMaps | RawMaps:
        """``oof`` or ``test`` probabilities; one line naming the store when it is absent or damaged."""
        from harness.runs.probabilities import ProbabilityMaps

        path = self.oof_maps if which == "oof" else self.test_maps
        if not (path.is_dir() or path.with_suffix(".json").is_file()):
            raise BenchError(f"run {self.path} has no {path.name}")
        try:
            return ProbabilityMaps.open(path)
        except BenchError:
            raise
        except Exception as error:
            raise BenchError(f"{path}: cannot be read back ({_first_line(error)}); rerun the run into a new folder") from None


@dataclass(frozen=True)
class Summary:
    """``summary.json``, with the fields every reader relies on as attributes; ``fields`` has them all
    (``bench compare --filter`` and its columns read any of them)."""

    fields: dict[str, Any]

    recipe = property(lambda self: str(self.fields.get("recipe", "?")))
    data = property(lambda self: str(self.fields["data"]))
    splits_hash = property(lambda self: str(self.fields["splits_hash"]))
    # the labelled data it was scored on (harness.data.carvana.data_hash); None in runs written before it
    data_hash = property(lambda self: self.fields.get("data_hash"))
    oof_dice = property(lambda self: float(self.fields["oof_dice"]))
    folds = property(lambda self: list(self.fields.get("folds", [])))
    device = property(lambda self: self.fields.get("device"))
    stage = property(lambda self: self.fields.get("stage"))

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]


@dataclass(frozen=True)
class Run:
    """A complete run (or stage): its folder and its summary; its stores are opened when first used."""

    folder: RunFolder
    summary: Summary

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def recipe(self) -> str:
        return self.summary.recipe

    @property
    def oof_dice(self) -> float:
        return self.summary.oof_dice

    @cached_property
    def oof(self) -> ProbabilityMaps:
        return self.folder.open_maps("oof")

    @cached_property
    def test(self) -> ProbabilityMaps:
        return self.folder.open_maps("test")


def data_groups(runs: list[Run]) -> list[list[Run]]:
    """The runs that may be ranked and merged together, each group in the order given: runs scored on
    the same labelled data (one data hash), whatever their folds.

    Folds need not agree: in every run, every training image has exactly one out-of-fold prediction,
    made by a model that never saw its car, so per-image scores pair image by image across runs on
    the same data (docs/results.md, "Runs on other folds", says why and where that stops).

    A run written before data hashes were recorded is placed by the rule that held until then: with
    the runs on the same data root and the same splits hash. It takes the data hash of such runs when
    they agree on one; with none (or two: the data under that root changed), it forms a group with
    the runs of its root and splits alone.
    """
    seen: dict[tuple[str, str], set[str]] = {}
    for run in runs:
        if run.summary.data_hash is not None:
            seen.setdefault(_root_and_splits(run), set()).add(run.summary.data_hash)
    grouped: dict[str, list[Run]] = {}
    for run in runs:
        hashes = seen.get(_root_and_splits(run), set())
        if run.summary.data_hash is not None:
            key = run.summary.data_hash
        elif len(hashes) == 1:
            key = next(iter(hashes))
        else:  # no hash to take: keyed by root and splits, which never equals a hex hash
            key = "{} {}".format(*_root_and_splits(run))
        grouped.setdefault(key, []).append(run)
    return list(grouped.values())


def different_data(groups: list[list[Run]], action: str, hint: str) -> BenchError:
    """The one line refusing to ``action`` (rank, merge) runs of several ``data_groups``, naming them all."""
    def described(group: list[Run]) -> str:
        names = ", ".join(run.name for run in group)
        hashes = [run.summary.data_hash for run in group if run.summary.data_hash is not None]
        if hashes:
            return f"{names} (data {hashes[0][:12]})"
        return (f"{names} (no data hash, written before it: data {group[0].summary.data}, "
                f"splits {group[0].summary.splits_hash[:12]})")

    return BenchError(f"cannot {action} runs on different data (other images or masks): "
                      f"{' | '.join(map(described, groups))}; {hint}")


def _root_and_splits(run: Run) -> tuple[str, str]:
    return run.summary.data, run.summary.splits_hash


@dataclass(frozen=True)
class UnfinishedRun:
    """A run folder without a usable ``summary.json``: listed, never ranked."""

    path: Path
    folds_done: int
    reason: str


def open_run(path: Path) -> Run | UnfinishedRun:
    """A complete run, or why it is not one (never raises for a folder that looks like a run)."""
    folder = RunFolder(path)
    try:
        return Run(folder, folder.read_summary())
    except BenchError as error:
        if not folder.summary_path.exists():
            return UnfinishedRun(path, folder.folds_done(), f"no {SUMMARY_FILE}")
        # the folder is listed beside the reason: name the file, not its whole path
        reason = str(error).replace(str(folder.summary_path), SUMMARY_FILE)
        return UnfinishedRun(path, folder.folds_done(), reason)


@dataclass(frozen=True)
class Targets:
    """What a list of RUNS arguments names: run folders, and the entries that name none."""
    folders: list[Path]
    skipped: list[str]  # "PATH (why)": a file or a folder without runs, among targets that name runs


SKIPPED_SHOWN = 3  # entries the skipped line names; a results folder with many leftovers is not a paragraph


def skipped_line(skipped: list[str]) -> str:
    """The one line that says what RUNS arguments matched besides the runs listed: the first few, and
    how many more (naming RUNS explicitly shows which)."""
    more = len(skipped) - SKIPPED_SHOWN
    return f"skipped: {', '.join(skipped[:SKIPPED_SHOWN])}" + (f", and {more} more" if more > 0 else "")


def resolve_runs(targets: list[str], results: Path) -> list[Path]:
    """Run folders named by ``targets`` (see ``resolve_targets``)."""
    return resolve_targets(targets, results).folders


def resolve_targets(targets: list[str], results: Path) -> Targets:
    """Run folders named by ``targets`` (see ``RUNS_HELP``), in the order given, each once; with no
    targets, every run folder directly inside ``results``.

    A run folder stands for itself and any other folder for the run folders directly inside it; a
    name that is not a folder is looked up under ``results``. An entry that exists but names no run
    (``results/*`` expands to ``results/benchmarks``, a notes file, ...) is skipped while another
    target names a run: the shell chose those entries, not the user. A name that matches nothing is
    always an error: that one is a typo.
    """
    found: dict[str, Path] = {}
    named: set[str] = set()  # runs a target names itself, not found inside a folder of runs
    skipped: list[str] = []
    for target in targets or [str(results)]:
        if glob.has_magic(target):
            matches = sorted(glob.glob(target)) or sorted(glob.glob(str(results / target)))
        else:
            matches = [target] if os.path.exists(target) else [str(results / target)]
        if not any(os.path.exists(m) for m in matches):
            raise BenchError(f"{target}: no such run folder or folder of runs (not found under {results} either)")
        for match in filter(os.path.exists, matches):
            runs = _expand(Path(match)) if os.path.isdir(match) else []
            if not runs:
                skipped.append(f"{match} ({'no run in it' if os.path.isdir(match) else 'not a folder'})")
            for run in runs:
                found.setdefault(str(run.resolve()), run)
                if run == Path(match):
                    named.add(str(run.resolve()))
    kept, same_names = _one_per_name(list(found.values()), named)
    if targets and not found:
        raise BenchError(f"{', '.join(skipped)}: no run folder (a run folder holds recipe.toml from its start; "
                         "an unfinished one is finished by bench run --resume)")
    return Targets(kept, skipped + same_names if targets else same_names)


def _one_per_name(runs: list[Path], named: set[str]) -> tuple[list[Path], list[str]]:
    """One run of each name, and the others as "PATH (why)": a run is named by its folder in every
    table and key, so a second folder of the same name (``results/ablate/x`` beside ``results/x``)
    could not be told apart from the first. A run a target names itself (``results/x``, which
    ``results/*`` names) wins over one found inside a folder of runs (``results/ablate``), then the
    first given; the runs kept stay in the order given."""
    first: dict[str, Path] = {}
    for run in sorted(runs, key=lambda r: str(r.resolve()) not in named):  # stable: named ones first
        first.setdefault(RunFolder(run).name, run)
    kept = [run for run in runs if first[RunFolder(run).name] is run]
    skipped = [f"{run} (a run of the same name is listed: {first[RunFolder(run).name]})"
               for run in runs if first[RunFolder(run).name] is not run]
    return kept, skipped


def is_run_folder(path: Path) -> bool:
    """``bench run`` has written into it (``recipe.toml`` comes first, ``summary.json`` last)."""
    return (path / SUMMARY_FILE).is_file() or (path / "recipe.toml").is_file()


def _expand(path: Path) -> list[Path]:
    if is_run_folder(path):
        return [path]
    with os.scandir(path) as entries:
        inside = [Path(e.path) for e in entries if e.is_dir() and not e.name.startswith(".")]
    return sorted((p for p in inside if is_run_folder(p)), key=str)


def read_json(path: Path) -> dict[str, Any]:
    """A json object of the run folder, or one line naming the file."""
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise BenchError(f"{path}: missing") from None
    except (OSError, ValueError) as error:
        raise BenchError(f"{path}: cannot read ({_first_line(error)})") from None
    if not isinstance(value, dict):
        raise BenchError(f"{path}: expected a json object")
    return value


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
