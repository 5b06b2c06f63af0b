"""``bench report``: one self-contained HTML page about a group of runs.

Self-contained means one file that opens in a browser with no network: every figure is a PNG
embedded as a base64 data URI, the style sheet is inline, nothing is fetched. The page holds the
leaderboard of ``bench compare``, learning curves, Dice against throughput with the Pareto front,
per-fold Dice, and the worst-predicted images of each run with the ground truth and the
out-of-fold prediction overlaid, because a table says which recipe fails and only the pictures say
how.

Figures use matplotlib's object API (``matplotlib.figure.Figure`` draws on an Agg canvas without
pyplot), so no global backend or figure state is touched.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from harness.data.dataset import read_image, read_mask
from harness.data.layouts import open_data
from harness.errors import BenchError
from harness.evaluate import compare
from harness.evaluate import stats
from harness.evaluate.results import STILL_RISING, Run, read_history, read_per_image, still_rising
from harness.io import atomic_write_text
from harness.runs.probabilities import binarise

# Overlay colours (RGB): agreement, false positive, false negative.
_TRUE_POSITIVE = np.array([40, 200, 90])
_FALSE_POSITIVE = np.array([235, 40, 40])
_FALSE_NEGATIVE = np.array([40, 110, 255])
_DPI = 110


def write_report(runs: list[Run], out: Path, worst: int = 4, resamples: int = stats.RESAMPLES,
                 seed: int = stats.SEED) -> Path:
    """Write the page for ``runs`` (one data group: ``harness.runs.folder.data_groups``) to ``out``; return ``out``."""
    if not runs:
        raise BenchError("no complete runs to report on")
    if worst < 1:
        raise BenchError(f"--worst {worst}: expected a positive number of images")
    per_image = {run.name: read_per_image(run) for run in runs}
    board = compare.leaderboard(runs, per_image, resamples, seed)
    by_name = {run.name: run for run in runs}
    ordered = [by_name[name] for name in board["run"]]
    splits_note = compare.splits_note(runs)
    sections = [
        ("leaderboard", "Leaderboard", _leaderboard_html(board, mixed_splits=splits_note is not None),
         " ".join([_LEADERBOARD_NOTE, *compare.board_notes(board), *filter(None, [splits_note])])),
        ("learning-curves", "Learning curves", _img(learning_curves(ordered), "learning curves"),
         "Validation Dice and training loss per epoch; thin lines are folds, thick lines their mean. "
         "On the right, the mean validation Dice against training time per fold: runs of unequal length "
         "compared at the same budget (dashed: the shortest fold's, where Dice @T is read). "
         f"A run marked (still rising) gained more than {STILL_RISING} Dice at its last epoch: it stopped "
         "before converging, so its rank measures its budget more than its recipe."),
        ("dice-vs-throughput", "Dice against throughput",
         _img(dice_vs_throughput(board), "Dice against throughput"),
         "Out-of-fold Dice (bars: 95% bootstrap interval over cars) against images per second. "
         "Circled runs are on the Pareto front: no other run is both more accurate and faster."),
        ("per-fold", "Per-fold Dice", _img(per_fold(ordered, per_image), "per-fold Dice"),
         "Mean Dice of each fold's validation images; the spread is what the fold std summarises."
         + ("" if splits_note is None else " The runs' splits differ: fold K holds other cars in each run, "
                                           "so bars of one fold number do not pair across runs.")),
        ("worst-images", "Worst-predicted images", _worst_images_html(ordered, per_image, worst),
         f"The {worst} lowest-Dice out-of-fold images of each run, prediction thresholded at 0.5: "
         "green where prediction and ground truth agree, red where the model adds car (false positive), "
         "blue where it misses car (false negative)."),
    ]
    for study_folder in sorted({run.path.parent for run in runs if (run.path.parent / "trials.csv").exists()}):
        sections.append(_study_section(study_folder))
    atomic_write_text(out, _page(sections, compare.Board(runs, board)))
    return out


def learning_curves(runs: list[Run]) -> Figure:
    figure = Figure(figsize=(15, 4.2), dpi=_DPI, layout="constrained")
    dice_axes, loss_axes, time_axes = figure.subplots(1, 3)
    histories = {run.name: read_history(run) for run in runs}
    for colour, run in zip(_colours(len(runs)), runs):
        history = histories[run.name]
        if history.empty:
            continue
        if "train_seconds" in history:
            on_time = history.groupby("epoch")[["train_seconds", "val_dice"]].mean()
            time_axes.plot(on_time["train_seconds"], on_time["val_dice"], color=colour, linewidth=2.2, marker="o",
                           markersize=3.5, label=run.name)
        for _, fold in history.groupby("fold"):
            dice_axes.plot(fold["epoch"] + 1, fold["val_dice"], color=colour, alpha=0.35, linewidth=0.9)
            loss_axes.plot(fold["epoch"] + 1, fold["train_loss"], color=colour, alpha=0.35, linewidth=0.9)
        mean = history.groupby("epoch")[["val_dice", "train_loss"]].mean()
        rising = " (still rising)" if still_rising(history) else ""
        dice_axes.plot(mean.index + 1, mean["val_dice"], color=colour, linewidth=2.2, marker="o",
                       markersize=3.5, label=run.name + rising)
        loss_axes.plot(mean.index + 1, mean["train_loss"], color=colour, linewidth=2.2, marker="o", markersize=3.5)
    budget = compare.equal_time(histories)
    if budget is not None:
        time_axes.axvline(budget, color="0.4", linestyle="--", linewidth=1)
    dice_axes.set(title="validation Dice", xlabel="epoch", ylabel="Dice")
    loss_axes.set(title="training loss", xlabel="epoch", ylabel="loss")
    time_axes.set(title="validation Dice against training time", xlabel="training seconds per fold", ylabel="Dice")
    time_axes.grid(alpha=0.3)
    for axes in (dice_axes, loss_axes):
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    dice_axes.legend(fontsize=8, loc="lower right")
    return figure


def dice_vs_throughput(board: pd.DataFrame) -> Figure:
    figure = Figure(figsize=(12, 4.4), dpi=_DPI, layout="constrained")
    colours = dict(zip(board["run"], _colours(len(board))))
    panels = (("inference_images_per_s", "inference (images/s)"), ("train_images_per_s", "training (images/s)"))
    for axes, (column, label) in zip(figure.subplots(1, 2), panels):
        points = board.dropna(subset=[column])
        front = pareto_front(points[column].to_numpy(float), points["oof_dice"].to_numpy(float))
        frontier = points[front].sort_values(column)
        axes.step(frontier[column], frontier["oof_dice"], where="post", color="0.55", linestyle="--",
                  linewidth=1, label="Pareto front", zorder=1)
        for on_front, (_, row) in zip(front, points.iterrows()):
            error = [[row["oof_dice"] - row["ci_low"]], [row["ci_high"] - row["oof_dice"]]]
            axes.errorbar(row[column], row["oof_dice"], yerr=error, fmt="o", color=colours[row["run"]],
                          markersize=7, capsize=3, zorder=3, label=row["run"])
            if on_front:
                axes.scatter(row[column], row["oof_dice"], s=260, facecolors="none", edgecolors="black",
                             linewidths=1.2, zorder=4)
            axes.annotate(row["recipe"], (row[column], row["oof_dice"]), textcoords="offset points",
                          xytext=(8, -4), fontsize=8)
        axes.set(title=f"Dice against {label}", xlabel=label, ylabel="out-of-fold Dice")
        axes.grid(alpha=0.3)
        axes.margins(x=0.2, y=0.15)
    figure.axes[0].legend(fontsize=8, loc="best")
    return figure


def _study_section(folder: Path) -> tuple[str, str, str, str]:
    """A ``bench tune`` study whose trials are among the runs: its optimisation history."""
    trials = pd.read_csv(folder / "trials.csv")
    objective = json.loads((folder / "study.json").read_text())["objectives"][0]
    figure = optimisation_history(trials, objective, folder.name)
    return (f"study-{folder.name}", f"Optimisation history of study {folder.name}", _img(figure, "optimisation history"),
            f"Each bench tune trial's {objective} in the order the trials started; crosses are pruned trials at the "
            "Dice of the folds they finished, the line is the best so far. Every trial's values are in "
            f"{folder / 'trials.csv'}.")


def optimisation_history(trials: pd.DataFrame, objective: str, name: str) -> Figure:
    figure = Figure(figsize=(12, 4), dpi=_DPI, layout="constrained")
    axes = figure.subplots()
    complete = trials[trials["state"] == "complete"]
    axes.scatter(complete["trial"], complete[objective], color="tab:blue", zorder=3, label="complete")
    if "partial_dice" in trials and objective == "oof_dice":
        pruned = trials[trials["state"] == "pruned"]
        axes.scatter(pruned["trial"], pruned["partial_dice"], marker="x", color="tab:red", zorder=3,
                     label="pruned (Dice so far)")
    best = complete.set_index("trial")[objective].cummax().reindex(trials["trial"]).ffill()
    axes.step(best.index, best.to_numpy(), where="post", color="0.3", linewidth=1.2, label="best so far")
    failed = trials[trials["state"] == "fail"]["trial"]
    for number in failed:
        axes.axvline(number, color="0.8", linewidth=0.8, zorder=1)
    counts = trials["state"].value_counts()
    axes.set(title=f"study {name}: {counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned, "
                   f"{counts.get('fail', 0)} failed (grey lines)", xlabel="trial", ylabel=objective)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    return figure


def pareto_front(speed: np.ndarray, dice: np.ndarray) -> np.ndarray:
    """Which points no other point beats on both axes (at least as good on both, better on one)."""
    at_least = (speed[None, :] >= speed[:, None]) & (dice[None, :] >= dice[:, None])
    better = (speed[None, :] > speed[:, None]) | (dice[None, :] > dice[:, None])
    return ~(at_least & better).any(axis=1)


def per_fold(runs: list[Run], per_image: dict[str, pd.DataFrame]) -> Figure:
    figure = Figure(figsize=(12, 3.8), dpi=_DPI, layout="constrained")
    axes = figure.subplots()
    width = 0.8 / len(runs)
    lowest = 1.0
    for index, (colour, run) in enumerate(zip(_colours(len(runs)), runs)):
        folds = per_image[run.name].groupby("fold")["dice"].mean()
        lowest = min(lowest, float(folds.min()))
        bars = axes.bar(folds.index + (index - (len(runs) - 1) / 2) * width, folds.to_numpy(), width * 0.92,
                        color=colour, label=run.name)
        axes.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    axes.set(xlabel="fold", ylabel="mean Dice of the fold's images", ylim=(max(0.0, lowest - 0.05), 1.0))
    axes.set_xticks(sorted({int(f) for run in runs for f in per_image[run.name]["fold"].unique()}))
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure


def overlay(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """The image dimmed, with agreement, false positives and false negatives tinted (see the colours)."""
    truth, prediction = truth.astype(bool), prediction.astype(bool)
    result = image.astype(np.float32) * 0.6
    for where, colour, weight in ((truth & prediction, _TRUE_POSITIVE, 0.35),
                                  (prediction & ~truth, _FALSE_POSITIVE, 0.8),
                                  (truth & ~prediction, _FALSE_NEGATIVE, 0.8)):
        result[where] = result[where] * (1 - weight) + colour * weight
    return result.clip(0, 255).astype(np.uint8)


def worst_images_figure(runs: list[Run], per_image: dict[str, pd.DataFrame], count: int) -> Figure:
    """A grid: one row per run, its ``count`` lowest-Dice images with ground truth and prediction overlaid."""
    dataset = open_data(runs[0].summary.data)
    figure = Figure(figsize=(3.1 * count, 2.35 * len(runs) + 0.5), dpi=_DPI, layout="constrained")
    grid = figure.subplots(len(runs), count, squeeze=False)
    for row, run in zip(grid, runs):
        maps = run.oof
        worst = per_image[run.name].nsmallest(count, "dice", keep="first")
        for axes, (_, image) in zip(row, worst.iterrows()):
            prediction = binarise(maps.quantised(image["image"]))
            axes.imshow(overlay(read_image(dataset, image["image"]), read_mask(dataset, image["image"]), prediction))
            axes.set_title(f"{image['image']}  Dice {image['dice']:.3f}", fontsize=8)
        for axes in row:
            axes.set_xticks([])
            axes.set_yticks([])
        row[0].set_ylabel(run.name, fontsize=9)
    figure.legend(handles=[Patch(color=_TRUE_POSITIVE / 255, label="agree"),
                           Patch(color=_FALSE_POSITIVE / 255, label="false positive"),
                           Patch(color=_FALSE_NEGATIVE / 255, label="false negative")],
                  loc="outside upper center", ncols=3, fontsize=8, frameon=False)
    return figure


def _worst_images_html(runs: list[Run], per_image: dict[str, pd.DataFrame], count: int) -> str:
    """The overlay grid, or a note when the data the runs were trained on is not on this machine."""
    try:
        return _img(worst_images_figure(runs, per_image, count), "worst-predicted images with masks overlaid")
    except BenchError as error:
        return f'<p class="note">No overlays: {html.escape(str(error))}</p>'


def _img(figure: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _colours(count: int) -> list[tuple[float, float, float, float]]:
    palette = colormaps["tab10"]
    return [palette(i % 10) for i in range(count)]


def _leaderboard_html(board: pd.DataFrame, mixed_splits: bool) -> str:
    headers, rows = compare.human_cells(board, mixed_splits)
    align = ["" if compare.is_text_column(h) else ' class="num"' for h in headers]
    head = "".join(f"<th{a}>{html.escape(h)}</th>" for h, a in zip(headers, align))
    body = "".join("<tr>" + "".join(f"<td{a}>{html.escape(c)}</td>" for c, a in zip(row, align)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_LEADERBOARD_NOTE = ("Best first by out-of-fold Dice pooled over all images. Intervals: 95% percentile bootstrap "
                     "over car ids; Δ: paired difference to the best run over the same images; p: two-sided "
                     "sign-flip permutation test over car ids.")

_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto;
       max-width: 1340px; color: #1d2330; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 2px; } h2 { font-size: 17px; margin: 26px 0 6px; }
.meta, .caption, .note { color: #5a6272; font-size: 12.5px; }
table { border-collapse: collapse; font-size: 12.5px; width: 100%; }
th, td { padding: 5px 8px; border-bottom: 1px solid #e2e5ea; text-align: left; white-space: nowrap; }
td:last-child { white-space: normal; } th { background: #f3f5f8; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:first-child td { font-weight: 600; }
figure { margin: 0; } img { max-width: 100%; display: block; }
"""


def _page(sections: list[tuple[str, str, str, str]], group: compare.Board) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    data_hash = f" · data hash {group.data_hash[:16]}" if group.data_hash else ""
    splits = f"splits {group.splits_hash[:16]}" if group.splits_hash else "splits differ (see the leaderboard)"
    body = "".join(
        f'<section><h2>{html.escape(title)}</h2><figure id="{key}">{content}'
        f'<figcaption class="caption">{html.escape(caption)}</figcaption></figure></section>'
        for key, title, content, caption in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>segbench report</title>'
            f"<style>{_STYLE}</style></head><body><h1>segbench report</h1>"
            f'<p class="meta">data {html.escape(group.data)}{data_hash} · {html.escape(splits)} · {when}</p>'
            f"{body}</body></html>\n")
