"""``bench compare``: rank complete runs of one data set, honestly.

Honest means: runs are ranked only against runs that scored the same images against the same masks
(the same data hash, ``harness.runs.folder.data_groups``), every Dice comes with a bootstrap
interval over cars, and every run's gap to the best comes with a paired test over the same images
(see ``harness.evaluate.stats``). Their folds may differ: every image has exactly one out-of-fold
prediction in every run, by a model that never saw its car, so the pairing holds image by image;
what does not carry across folds is each run's fold-to-fold spread, which is marked (``SPLITS_MARK``).
"The best" is the run with the highest out-of-fold Dice pooled over all images: the number the
Kaggle metric gives. Unfinished runs are listed apart, never ranked.

The views are pandas tables with raw numbers; ``render`` turns them into a rich table, csv,
markdown or json, so every format shows the same numbers. The rich table keeps the columns a view
is read for whole at any console width (``harness.tables``): the others follow in tables below.
"""

from __future__ import annotations

import fnmatch
import json
import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable, Literal

import pandas as pd
from rich.console import Console
from rich.markup import escape

from harness import tables
from harness.errors import BenchError
from harness.evaluate import results
from harness.evaluate import stats
from harness.evaluate.results import ResultsIndex, Run, UnfinishedRun, read_per_image
from harness.runs.folder import data_groups, different_data

View = Literal["run", "fold", "image"]
Format = Literal["table", "csv", "markdown", "json"]

# --sort KEY: the column and whether larger is better (listed first).
SORT_KEYS: dict[str, tuple[str, bool]] = {
    "dice": ("oof_dice", True),
    "fold_mean": ("fold_dice_mean", True),
    "fold_std": ("fold_dice_std", False),
    "train_seconds": ("train_seconds", False),
    "train_speed": ("train_images_per_s", True),
    "inference_speed": ("inference_images_per_s", True),
    "parameters": ("parameters", False),
    "recipe": ("recipe", False),
    "run": ("run", False),
}
# --filter FIELD OP VALUE: fields of summary.json; ~ is a glob match.
_FILTER = re.compile(r"^\s*(?P<field>[a-z_]+)\s*(?P<op>>=|<=|!=|=|>|<|~)\s*(?P<value>.+?)\s*$")
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "~": lambda actual, pattern: fnmatch.fnmatchcase(str(actual), str(pattern)),
}


@dataclass(frozen=True)
class Options:
    view: View = "run"
    sort: str = "dice"
    filters: tuple[str, ...] = ()
    worst: int = 10
    resamples: int = stats.RESAMPLES
    seed: int = stats.SEED


@dataclass(frozen=True)
class Board:
    """One table: the runs of one data group (``harness.runs.folder.data_groups``), in one view."""

    runs: list[Run]
    frame: pd.DataFrame

    @property
    def data(self) -> str:
        """The data folder, or folders: copies of the same data may sit in several."""
        return ", ".join(dict.fromkeys(run.summary.data for run in self.runs))

    @property
    def data_hash(self) -> str | None:
        """None when no run of the group recorded one (runs written before data hashes)."""
        return next((run.summary.data_hash for run in self.runs if run.summary.data_hash), None)

    @property
    def splits(self) -> dict[str, str]:
        return {run.name: run.summary.splits_hash for run in self.runs}

    @property
    def splits_hash(self) -> str | None:
        """The one splits hash of the group, or None when its runs' folds differ."""
        hashes = set(self.splits.values())
        return hashes.pop() if len(hashes) == 1 else None


def select_groups(index: ResultsIndex, filters: tuple[str, ...], explicit: bool) -> list[list[Run]]:
    """Filter the complete runs and group them by data; refuse to mix data when the user named the runs.

    Named runs on different data are a mistake worth stopping for (their images or masks differ, so
    nothing pairs); the default scan of a results folder legitimately holds several data sets, and
    gets one table per group instead.
    """
    runs = [run for run in index.complete if all(_matches(run, text) for text in filters)]
    groups = data_groups(runs)
    if explicit and len(groups) > 1:
        first = groups[0][0].summary
        hint = (f"--filter data_hash~{first.data_hash[:12]}*" if first.data_hash
                else f"--filter splits_hash~{first.splits_hash[:12]}*")
        raise different_data(groups, "rank", f"compare one group at a time, e.g. {hint}")
    return groups


def boards(groups: list[list[Run]], options: Options) -> list[Board]:
    """The chosen view of every group, best run first unless ``--sort`` says otherwise."""
    if options.sort not in SORT_KEYS:
        raise BenchError(f"--sort {options.sort}: expected one of {', '.join(SORT_KEYS)}")
    if options.worst < 1:
        raise BenchError(f"--worst {options.worst}: expected a positive number of images")
    result = []
    for runs in groups:
        per_image = {run.name: read_per_image(run) for run in runs}
        board = leaderboard(runs, per_image, options.resamples, options.seed)
        column, descending = SORT_KEYS[options.sort]
        board = board.sort_values([column, "rank"], ascending=[not descending, True], kind="stable")
        if options.view == "fold":
            board = by_fold(runs, per_image, list(board["run"]))
        elif options.view == "image":
            board = worst_images_table(per_image, list(board["run"]), options.worst, dict(zip(board["run"], board["recipe"])))
        result.append(Board(runs, board.reset_index(drop=True)))
    return result


def leaderboard(runs: list[Run], per_image: dict[str, pd.DataFrame], resamples: int = stats.RESAMPLES,
                seed: int = stats.SEED) -> pd.DataFrame:
    """One row per run, ranked by pooled out-of-fold Dice, with intervals and the paired test to the best."""
    rows = []
    histories = {run.name: results.read_history(run) for run in runs}
    budget = equal_time(histories)
    for run in runs:
        history = histories[run.name]
        interval = stats.pooled_interval(stats.car_sums(per_image[run.name]), resamples, seed)
        rows.append({"recipe": run.recipe, "run": run.name, "oof_dice": interval.estimate,
                     "ci_low": interval.low, "ci_high": interval.high,
                     "cars": int(per_image[run.name]["car"].nunique()), "images": len(per_image[run.name]),
                     **{key: run.summary.get(key) for key in _SUMMARY_COLUMNS},
                     "still_rising": results.still_rising(history),
                     "dice_at_equal_time": None if budget is None else results.dice_within(history, budget),
                     "equal_time_seconds": budget,
                     "carvana_hours": _carvana_hours(run), "software": results.read_software(run),
                     "path": str(run.path)})
    table = pd.DataFrame(rows).sort_values(["oof_dice", "run"], ascending=[False, True], kind="stable")
    table.insert(0, "rank", range(1, len(table) + 1))
    best = table["run"].iloc[0]
    differences = [None if name == best else stats.paired_difference(per_image[name], per_image[best], resamples, seed)
                   for name in table["run"]]
    table["delta"] = [0.0 if d is None else d.estimate for d in differences]
    table["delta_low"] = [math.nan if d is None else d.low for d in differences]
    table["delta_high"] = [math.nan if d is None else d.high for d in differences]
    table["p_value"] = [math.nan if d is None else d.p_value for d in differences]
    table["p_exact"] = [None if d is None else d.exact for d in differences]
    return table[_LEADERBOARD_COLUMNS]


def equal_time(histories: dict[str, pd.DataFrame]) -> float | None:
    """The shortest fold's training seconds, over all runs: the budget at which every run can be scored."""
    seconds = [results.shortest_fold_seconds(history) for history in histories.values()]
    known = [s for s in seconds if s is not None]
    return min(known) if known else None


def by_fold(runs: list[Run], per_image: dict[str, pd.DataFrame], order: list[str]) -> pd.DataFrame:
    """One row per run and fold: the fold's Dice over its images, its best epoch and training time."""
    by_name = {run.name: run for run in runs}
    rows = []
    for name in order:
        run = by_name[name]
        fold_info = {f.get("fold", k): f for k, f in enumerate(run.summary.get("folds", []))}
        for fold, scores in per_image[name].groupby("fold", sort=True)["dice"]:
            info = fold_info.get(fold, {})
            rows.append({"recipe": run.recipe, "run": name, "fold": int(fold), "images": len(scores),
                         "dice": float(scores.mean()), "best_epoch": info.get("best_epoch"),
                         "train_seconds": info.get("train_seconds")})
    return pd.DataFrame(rows)


def worst_images_table(per_image: dict[str, pd.DataFrame], order: list[str], count: int,
                 recipes: dict[str, str]) -> pd.DataFrame:
    """The ``count`` lowest-Dice images of every run: where a recipe fails, to look at with ``bench report``."""
    frames = [per_image[name].nsmallest(count, "dice", keep="first").assign(recipe=recipes[name], run=name)
              for name in order]
    return pd.concat(frames, ignore_index=True)[["recipe", "run", "image", "car", "fold", "dice"]]


def render(found: list[Board], unfinished: list[UnfinishedRun], fmt: Format, console: Console,
           options: Options, wide: bool = False) -> None:
    """Print the boards in ``fmt``; csv and json stay machine-readable (notes go to stderr for csv).
    A table splits its columns to fit the console unless ``wide`` (``harness.tables``)."""
    if fmt == "json":
        console.out(json.dumps(_as_json(found, unfinished, options), indent=2), highlight=False)
        return
    if fmt == "csv":
        frames = [b.frame.assign(data=b.data, data_hash=b.data_hash, splits_hash=b.frame["run"].map(b.splits))
                  for b in found]
        text = pd.concat(frames, ignore_index=True).to_csv(index=False) if frames else ""
        console.out(text, end="", highlight=False)
        for note in [note for b in found for note in (splits_note(b.runs), starts_note(b.runs)) if note]:
            Console(stderr=True).print(note, highlight=False)
        if unfinished:
            Console(stderr=True).print(_unfinished_line(unfinished), highlight=False)
        return
    if not found:
        console.print("no complete runs to compare", highlight=False)
    for board in found:
        data_hash = f"data {board.data_hash[:12]}, " if board.data_hash else ""
        splits = f"splits {board.splits_hash[:12]}" if board.splits_hash else f"splits differ{SPLITS_MARK}"
        title = f"{len(board.frame['run'].unique())} runs on {board.data} ({data_hash}{splits})"
        frame, shared = _shared_columns(board.frame)
        mixed = board.splits_hash is None
        if fmt == "markdown":
            console.out(f"### {title}\n\n{_markdown(frame, mixed)}\n", highlight=False)
        else:
            _print_table(frame, title, mixed, options.view, console, wide)
        for note in [*shared, *board_notes(board.frame), splits_note(board.runs), starts_note(board.runs)]:
            if note:
                console.print(note, highlight=False)
    if unfinished:
        listing = "\n".join(f"- {u.path} ({u.folds_done} folds done; {u.reason})" for u in unfinished)
        if fmt == "markdown":
            console.out(f"### Unfinished (not ranked)\n\n{listing}", highlight=False)
        else:
            console.print(f"[yellow]unfinished, not ranked:[/]\n{escape(listing)}", highlight=False)


def _shared_columns(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Device and software said once under the table when every run shares them: the table keeps
    its width for the columns that differ."""
    shared = [c for c in ("device", "software") if c in frame and len(frame) > 1 and frame[c].nunique() == 1]
    return frame.drop(columns=shared), [f"{c} (every run): {frame[c].iloc[0]}" for c in shared]


def board_notes(frame: pd.DataFrame) -> list[str]:
    """The lines under a leaderboard that explain its marks: the equal-time budget, still-rising runs."""
    notes = []
    if "equal_time_seconds" in frame and frame["equal_time_seconds"].notna().any():
        seconds = float(frame["equal_time_seconds"].dropna().iloc[0])
        notes.append(f"Dice @T: validation Dice (mean of folds, best epoch so far) after T = {_duration(seconds)} "
                     "of training per fold (the shortest fold's): the runs compared at the same time budget")
    if "still_rising" in frame and frame["still_rising"].eq(True).any():
        notes.append(RISING_NOTE)
    return notes


SPLITS_MARK = " †"  # on the folds column, and the title, of a board whose runs' folds differ


def splits_note(runs: list[Run]) -> str | None:
    """The line under a board whose runs were trained on different folds: which runs used which
    splits, and which columns that leaves comparable (None when the folds are the same)."""
    by_splits: dict[str, list[Run]] = {}
    for run in runs:
        by_splits.setdefault(run.summary.splits_hash, []).append(run)
    if len(by_splits) < 2:
        return None
    listing = "; ".join(f"{', '.join(run.name for run in group)} on splits {splits[:12]} "
                        f"({len(group[0].summary.folds)} folds)" for splits, group in by_splits.items())
    return (f"{SPLITS_MARK.strip()} splits differ: {listing}. A fold holds other cars in each run, so the folds "
            "mean ± std (and Dice @T, a mean over folds) is each run's own and does not compare across runs; "
            "OOF Dice, its interval, Δ and p do: every image has exactly one out-of-fold prediction in every run, "
            "by a model that never saw its car, so they pair image by image")


STARTS = {"imagenet": "ImageNet weights", "none": "random init"}


def starts_note(runs: list[Run]) -> str | None:
    """The line under a board whose runs' encoders started differently (ImageNet weights, random init, a
    file): a head start that the ranking would otherwise credit to the recipe (None when they agree, or
    when runs from before the field cannot say)."""
    by_start: dict[str, list[str]] = {}
    for run in runs:
        start = run.summary.get("encoder_weights")
        if start is not None:
            by_start.setdefault(STARTS.get(start, f"weights from {start}"), []).append(run.name)
    if len(by_start) < 2:
        return None
    listing = "; ".join(f"{', '.join(names)} from {start}" for start, names in by_start.items())
    return (f"encoders start differently: {listing}. Pretrained weights are a head start on any budget, so these "
            "ranks measure the start as well as the recipe")


RISING_NOTE = (f"↑ still rising: validation Dice gained more than {results.STILL_RISING} at the run's last epoch; "
               "it stopped before converging, so its rank measures its budget more than its recipe")

_SUMMARY_COLUMNS = ("fold_dice_mean", "fold_dice_std", "train_seconds", "train_images_per_s",
                    "inference_images_per_s", "parameters", "device")
_LEADERBOARD_COLUMNS = ["rank", "recipe", "run", "oof_dice", "ci_low", "ci_high", "fold_dice_mean", "fold_dice_std",
                        "delta", "delta_low", "delta_high", "p_value", "p_exact", "cars", "images",
                        "still_rising", "dice_at_equal_time", "equal_time_seconds", "train_seconds",
                        "train_images_per_s", "inference_images_per_s", "parameters", "carvana_hours", "device",
                        "software", "path"]


def _carvana_hours(run: Run) -> float | None:
    """Estimated hours of the full Carvana run, from the latest benchmark of this recipe here."""
    benchmark = results.latest_benchmark(run)
    return None if benchmark is None else benchmark["carvana_cost"]["total_hours"]


def _matches(run: Run, text: str) -> bool:
    match = _FILTER.match(text)
    if match is None:
        raise BenchError(f"--filter {text!r}: expected FIELD OP VALUE with OP one of = != > >= < <= ~ "
                         "(e.g. recipe=vladimir, oof_dice>=0.99, device~cuda*)")
    name, op, value = match["field"], match["op"], match["value"]
    fields = {"data_hash": None, **run.summary.fields, "run": run.name}  # null in runs older than the field
    if name not in fields:
        known = sorted(k for k, v in fields.items() if not isinstance(v, (list, dict)))
        raise BenchError(f"--filter {text!r}: no field {name!r} in {run.folder.summary_path}; fields: {', '.join(known)}")
    actual = fields[name]
    if op != "~" and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        try:
            return _OPERATORS[op](actual, float(value))
        except ValueError:
            raise BenchError(f"--filter {text!r}: {name} is a number, {value!r} is not") from None
    return _OPERATORS[op](str(actual), value)


def _as_json(found: list[Board], unfinished: list[UnfinishedRun], options: Options) -> dict[str, Any]:
    return {
        "groups": [{"data": b.data, "data_hash": b.data_hash, "splits_hash": b.splits_hash, "splits": b.splits,
                    "splits_note": splits_note(b.runs),
                    "rows": json.loads(b.frame.to_json(orient="records", double_precision=15))} for b in found],
        "unfinished": [{"path": str(u.path), "folds_done": u.folds_done, "reason": u.reason} for u in unfinished],
        "statistics": {"interval": "95% percentile bootstrap over car ids, image-weighted",
                       "p_value": "two-sided sign-flip permutation test over car ids, paired on images",
                       "resamples": options.resamples, "seed": options.seed},
    }


def _unfinished_line(unfinished: list[UnfinishedRun]) -> str:
    return "unfinished, not ranked: " + ", ".join(f"{u.path} ({u.reason})" for u in unfinished)


def _formatters() -> dict[str, tuple[str, Callable[[pd.Series], str]]]:
    """Header and cell text of every column a view may hold, for the human formats."""
    def dice(v): return f"{v:.4f}"
    def integer(v): return "-" if v is None or pd.isna(v) else f"{int(v)}"
    return {
        "rank": ("#", lambda r: str(r["rank"])),
        "recipe": ("recipe", lambda r: str(r["recipe"])),
        "run": ("run", lambda r: str(r["run"])),
        "oof_dice": ("OOF Dice", lambda r: dice(r["oof_dice"]) + (" ↑" if _rising(r.get("still_rising")) else "")),
        "ci_low": ("95% CI (cars)", lambda r: f"{dice(r['ci_low'])}–{dice(r['ci_high'])}"),
        "fold_dice_mean": ("folds mean ± std", lambda r: f"{dice(r['fold_dice_mean'])} ± {dice(r['fold_dice_std'])}"),
        "delta": ("Δ to best [95% CI]", lambda r: "best" if r["rank"] == 1 else
                  f"{r['delta']:+.4f} [{r['delta_low']:+.4f}, {r['delta_high']:+.4f}]"),
        "p_value": ("p", lambda r: "-" if pd.isna(r["p_value"]) else _p_text(r["p_value"])),
        "dice_at_equal_time": ("Dice @T", lambda r: "-" if pd.isna(r["dice_at_equal_time"])
                               else dice(r["dice_at_equal_time"])),
        "train_seconds": ("train time", lambda r: _duration(r["train_seconds"])),
        "train_images_per_s": ("train img/s", lambda r: _number(r["train_images_per_s"])),
        "inference_images_per_s": ("infer img/s", lambda r: _number(r["inference_images_per_s"])),
        "parameters": ("params", lambda r: _parameters(r["parameters"])),
        "carvana_hours": ("Carvana h", lambda r: "-" if r["carvana_hours"] is None or pd.isna(r["carvana_hours"])
                          else f"{r['carvana_hours']:,.0f}"),
        "device": ("device", lambda r: str(r["device"])),
        "software": ("software", lambda r: str(r["software"])),
        "fold": ("fold", lambda r: str(r["fold"])),
        "images": ("images", lambda r: str(r["images"])),
        "dice": ("Dice", lambda r: dice(r["dice"])),
        "best_epoch": ("best epoch", lambda r: integer(r["best_epoch"])),
        "image": ("image", lambda r: str(r["image"])),
        "car": ("car", lambda r: str(r["car"])),
    }


def _rising(value) -> bool:
    """``still_rising`` as read back: True, False, or unknown (None, NaN)."""
    return value is not None and not pd.isna(value) and bool(value)


def _human_columns(frame: pd.DataFrame, mixed_splits: bool = False) -> list[tuple[str, Callable[[pd.Series], str]]]:
    """The columns a person reads: interval parts fold into one cell, paths and flags stay in csv/json.
    With ``mixed_splits`` (runs on different folds), the folds column's header carries ``SPLITS_MARK``."""
    formatters = _formatters()
    if mixed_splits:
        header, cell = formatters["fold_dice_mean"]
        formatters["fold_dice_mean"] = (header + SPLITS_MARK, cell)
    hidden = {"ci_high", "fold_dice_std", "delta_low", "delta_high", "p_exact", "cars", "path", "still_rising",
              "equal_time_seconds"}
    if "oof_dice" in frame:
        hidden.add("images")
    return [formatters[c] for c in frame.columns if c in formatters and c not in hidden]


def human_cells(frame: pd.DataFrame, mixed_splits: bool = False) -> tuple[list[str], list[list[str]]]:
    """Headers and cell texts of a view as a person reads it (the table, markdown and HTML formats)."""
    columns = _human_columns(frame, mixed_splits)
    return [header for header, _ in columns], [[cell(row) for _, cell in columns] for _, row in frame.iterrows()]


def is_text_column(header: str) -> bool:
    """Left-aligned columns; the others hold numbers and align right."""
    return header in ("recipe", "run", "device", "image", "car")


# The columns that name a row of each view (repeated in every table of a split board) and the
# ones it is read for: both always in the first table, whole, whatever the console's width.
_KEYS: dict[View, tuple[str, ...]] = {"run": ("#", "run"), "fold": ("run", "fold"), "image": ("run", "image")}
_DECISIVE: dict[View, tuple[str, ...]] = {"run": ("OOF Dice", "95% CI (cars)", "Δ to best [95% CI]", "p"),
                                          "fold": ("Dice",), "image": ("Dice",)}


def _print_table(frame: pd.DataFrame, title: str, mixed_splits: bool, view: View, console: Console,
                 wide: bool) -> None:
    headers, rows = human_cells(frame, mixed_splits)
    tables.print_table(console, title, headers, rows, key=_KEYS[view], decisive=_DECISIVE[view],
                       left=[header for header in headers if is_text_column(header)], wide=wide)


def _markdown(frame: pd.DataFrame, mixed_splits: bool) -> str:
    return tables.as_markdown(*human_cells(frame, mixed_splits))


def _p_text(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else "<0.001"


def _duration(seconds: float | None) -> str:
    if seconds is None or pd.isna(seconds):
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _number(value: float | None) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.1f}"


def _parameters(count: int | None) -> str:
    return "-" if count is None or pd.isna(count) else f"{count / 1e6:.1f} M"
