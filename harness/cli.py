"""The ``bench`` command.

Each subcommand is a thin layer over a library function; the CLI parses flags, loads plugins when
the command needs them, and turns a ``BenchError`` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from harness.errors import BenchError
from harness.runs.folder import RUNS_HELP, SUMMARY_FILE, skipped_line
from harness.tables import as_csv, as_markdown, check_format, print_table

app = typer.Typer(
    help="Benchmark binary segmentation recipes: run, compare, tune and ensemble them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: rich's would eat [brackets] in help texts and print from get_help()
)
data_app = typer.Typer(
    help="Make, check and split data sets in the Carvana layout.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(data_app, name="data")

# A long line stays one line in logs; tables get room when stdout is a file (rich would use 80 columns).
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)

RecipeArgument = Annotated[Path, typer.Argument(help="A recipe TOML file.")]
ProfileOption = Annotated[
    Optional[list[str]], typer.Option("--profile", "-p", help="A [profiles.NAME] to apply (repeatable).")
]
DeviceOption = Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N (default: cuda when present).")]
TrackOption = Annotated[
    Optional[list[str]], typer.Option("--track", help="Also send the run to a tracker: mlflow or tensorboard (repeatable; "
                                                      "see bench plugins for others).", show_default=False)
]
SetOption = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override KEY=VALUE, e.g. train.epochs=3 (repeatable).")
]
FormatOption = Annotated[str, typer.Option("--format", help="table, csv, markdown or json.")]
WideOption = Annotated[
    bool, typer.Option("--wide", help="Print each table whole, every column at full width, however wide "
                                      "(default: the columns that do not fit the terminal go into tables below).")
]


@app.callback()
def _global_options(
    ctx: typer.Context,
    plugins_dir: Annotated[
        Optional[list[Path]],
        typer.Option("--plugins-dir", help="A folder of one-file plugins (repeatable; also $SEGBENCH_PLUGINS_DIR)."),
    ] = None,
    strict_plugins: Annotated[
        bool, typer.Option("--strict-plugins", help="Fail when a plugin cannot load (also $SEGBENCH_STRICT_PLUGINS=1).")
    ] = False,
) -> None:
    ctx.obj = {"plugins_dir": plugins_dir or [], "strict": strict_plugins or None}


def _plugins(ctx: typer.Context):
    """Load plugins once per command, and say which ones were skipped."""
    from harness.recipe.plugins import load_plugins

    plugins = load_plugins(ctx.obj["plugins_dir"], strict=ctx.obj["strict"])
    for failure in plugins.failures:
        Console(stderr=True).print(f"[yellow]warning:[/] {escape(failure.describe())}", highlight=False)
    return plugins


@app.command("plugins")
def plugins_command(ctx: typer.Context, wide: WideOption = False, format_: FormatOption = "table") -> None:
    """List the loaded plugins: name, version, source, hooks and the components they register."""
    check_format(format_)
    plugins = _plugins(ctx)
    if format_ == "json":
        listing = [{"plugin": i.name, "version": i.version, "source": i.source, "hooks": list(i.hooks),
                    "registers": {kind: list(names) for kind, names in i.components.items()}} for i in plugins.infos]
        listing += [{"plugin": f.name, "source": f.source, "error": f.error} for f in plugins.failures]
        console.out(json.dumps(listing, indent=2), highlight=False)
        return
    headers = ("plugin", "version", "source", "hooks", "registers")
    rows = [[info.name, info.version, info.source, "\n".join(info.hooks),
             "\n".join(f"{kind}: {', '.join(names)}" for kind, names in info.components.items())]
            for info in plugins.infos]
    rows += [[failure.name, "-", failure.source, "", Text(f"failed: {failure.error}", style="red")]
             for failure in plugins.failures]
    if format_ == "csv":
        console.out(as_csv(headers, [[str(cell).replace("\n", "; ") for cell in row] for row in rows]), end="",
                    highlight=False)
    elif format_ == "markdown":
        console.out(f"### bench plugins\n\n{as_markdown(headers, rows)}", highlight=False)
    else:
        print_table(console, "bench plugins", headers, rows, key=("plugin",), decisive=("registers",), left=headers,
                    wide=wide)


@app.command("show")
def show_command(
    ctx: typer.Context,
    recipe: RecipeArgument,
    profile: ProfileOption = None,
    set_: SetOption = None,
) -> None:
    """Print the recipe as it resolves after profiles and --set overrides, validated, and then, as
    TOML comments, its phases and the learning rate of every epoch."""
    from harness.engine.assembly import Assembly
    from harness.recipe.schema import load_recipe

    plugins = _plugins(ctx)
    resolved = load_recipe(recipe, plugins, profile or [], set_ or [])
    typer.echo(resolved.to_toml(), nl=False)
    typer.echo("\n" + "\n".join(f"# {line}" for line in describe_epochs(Assembly(resolved, plugins).epoch_table())))


def describe_epochs(rows: list[dict]) -> list[str]:
    """Epochs that train alike (phase, lr, a new optimizer or not) on one line each."""
    lines = ["epoch  phase  optimizer  lr          augment"]
    start = 0
    for index, row in enumerate(rows):
        following = rows[index + 1] if index + 1 < len(rows) else None
        same = ("phase", "lr")
        if following and all(following[k] == row[k] for k in same) and not following["new_optimizer"]:
            continue
        epochs = f"{start}" if start == row["epoch"] else f"{start}-{row['epoch']}"
        optimizer = row["optimizer"] + (" (new)" if rows[start]["new_optimizer"] else "")
        lines.append(f"{epochs:<6} {row['phase']:<6} {optimizer:<10} {row['lr']:<11.4g} "
                     f"{', '.join(row['augment']) or '-'}")
        start = row["epoch"] + 1
    return lines


SlurmPartition = Annotated[Optional[str], typer.Option(help="--launcher slurm: the partition.")]
SlurmTime = Annotated[int, typer.Option(min=1, help="--launcher: minutes a job may run.")]
SlurmGpus = Annotated[int, typer.Option(min=0, help="--launcher slurm: GPUs a job gets.")]
SlurmCpus = Annotated[Optional[int], typer.Option(
    min=1, help="--launcher: CPU cores (and threads) a job gets (default: 8 on SLURM; locally, this machine's "
                "cores shared out among the jobs).", show_default=False)]
SlurmSetup = Annotated[Optional[list[str]], typer.Option(
    help="--launcher slurm: a shell line run before each job, e.g. 'source .venv/bin/activate' (repeatable).",
    show_default=False)]


@app.command("run")
def run_command(
    ctx: typer.Context,
    recipe: RecipeArgument,
    profile: ProfileOption = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    results: Annotated[Path, typer.Option(help="Where run folders go.")] = Path("results"),
    name: Annotated[Optional[str], typer.Option(help="Run folder name (default: recipe name + recipe hash).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Finish an interrupted run; finished folds are kept.")] = False,
    estimate: Annotated[bool, typer.Option("--estimate", help="Measure a few steps, print the estimated duration, stop.")] = False,
    folds: Annotated[Optional[str], typer.Option(
        help="Train only these folds, e.g. 0,2, into the run folder; other processes may train the others at the "
             "same time, and the one that finishes the last fold assembles the run.", show_default=False)] = None,
    devices: Annotated[Optional[str], typer.Option(
        help="One worker process per device, each taking the next unfinished fold: cuda:0,cuda:1 or cpu,cpu "
             "(a CPU named n times gives each worker 1/n of its cores).", show_default=False)] = None,
    launcher: Annotated[Optional[str], typer.Option(
        help="Submit one job per fold with submitit: slurm, or local (the same jobs as processes on this "
             "machine, to try it).", show_default=False)] = None,
    ddp: Annotated[Optional[int], typer.Option(
        min=2, help="Train each fold with N processes on this host (DistributedDataParallel, started as torchrun "
                    "does): one a GPU, or sharing the CPU's cores.", show_default=False)] = None,
    slurm_partition: SlurmPartition = None,
    slurm_time: SlurmTime = 24 * 60,
    slurm_gpus: SlurmGpus = 1,
    slurm_cpus: SlurmCpus = None,
    slurm_setup: SlurmSetup = None,
    track: TrackOption = None,
) -> None:
    """Train every fold of a recipe, predict out-of-fold and test images, into a run folder."""
    from harness.engine.distributed import ranks_from_environment
    from harness.engine.run import RunRequest, run, run_folder, run_recipe
    from harness.recipe.schema import load_recipe

    spread = [flag for flag, value in (("--devices", devices), ("--launcher", launcher), ("--ddp", ddp))
              if value is not None]  # --devices "" is a bad value, not no value
    if len(spread) > 1 or (spread and (estimate or device and devices)):
        clash = spread + (["--estimate"] if estimate else []) + (["--device"] if device and devices else [])
        raise BenchError(f"{' and '.join(clash[:2])} cannot be used together")
    if track and (folds or estimate):
        raise BenchError(f"--track and {'--folds' if folds else '--estimate'} cannot be used together: tracking "
                         "goes with the command that runs the whole run (it starts the workers of --devices, "
                         "--launcher or --ddp itself)")
    plugins = _plugins(ctx)
    resolved = load_recipe(recipe, plugins, profile or [], set_ or [])
    request = RunRequest(resolved, results, name, resume, device, estimate, folds=_parse_folds(folds))
    ranks = ranks_from_environment()
    under_torchrun_not_first = ranks is not None and not ranks.main  # rank 0 tracks for all
    tracking = None if under_torchrun_not_first else _tracking(plugins, track, run_folder(request), run_recipe(request))
    # what every process it starts is given: the same command, less what spreads it (and tracking:
    # the trackers are fed from here when the workers are done)
    same = [*[f"--profile={p}" for p in profile or []], *[f"--set={s}" for s in set_ or []]]
    try:
        if ddp is not None:
            _run_with_ddp(ctx, request, ddp, ["run", str(recipe), *same, "--results", str(results),
                                              *(["--name", name] if name else []), *(["--resume"] if resume else []),
                                              *(["--device", device] if device else []),
                                              *(["--folds", folds] if folds else [])])
            folder = run_folder(request).path
        elif spread:
            from harness.distribute.cluster import Cluster

            cluster = Cluster(launcher, slurm_partition, slurm_time, slurm_gpus, slurm_cpus, slurm_setup or [], device)
            folder = _run_spread(ctx, request, devices, cluster, [str(recipe.absolute()), *same])
        else:
            folder = run(replace(request, monitor=tracking), plugins, console)
    except BaseException:
        if tracking is not None:
            tracking.failed()
        raise
    if tracking is not None:
        tracking.finish()
    if ddp is not None:
        return
    if not estimate and not under_torchrun_not_first:  # under --ddp, rank 0 speaks for all
        _say_run_result(resolved.name, folder)


def _tracking(plugins, names: list[str] | None, folder, recipe, tags: dict[str, str] | None = None):
    """The run's trackers as its monitor, or None without ``--track``."""
    if not names:
        return None
    from harness.track.tracking import Tracking, trackers

    return Tracking(trackers(plugins, names), folder, recipe, console, tags)


def _run_with_ddp(ctx: typer.Context, request, processes: int, bench_args: list[str]) -> None:
    """``--ddp N``: the command's input checked here once, then the command in N processes."""
    from harness.distribute.ddp import launch
    from harness.engine.run import check_folds, check_startable

    recipe = request.recipe
    check_folds(request.folds, recipe.folds.k)
    check_startable(request)
    if recipe.train.batch_size % processes:
        raise BenchError(f"train.batch_size {recipe.train.batch_size} cannot be shared by {processes} processes "
                         f"(--ddp): make it a multiple of {processes}")
    launch(processes, _bench_args(ctx) + bench_args, request.device)


def _run_spread(ctx: typer.Context, request, devices: str | None, cluster, recipe_args: list[str]) -> Path:
    """``--devices`` or ``--launcher``: the folds trained by workers, each ``bench run ... --folds K``."""
    from harness.distribute import folds as spread_folds
    from harness.engine.run import run_folder

    worker = spread_folds.Worker(_bench_args(ctx) + [
        "run", *recipe_args, "--results", str(request.results.absolute()),
        "--name", run_folder(request).path.name], env={"NO_ALBUMENTATIONS_UPDATE": "1"})
    if devices is not None:
        start = spread_folds.on_devices(worker, spread_folds.parse_devices(devices), console)
    else:
        from harness.distribute.cluster import on_cluster

        start = on_cluster(worker, cluster, console)
    return spread_folds.train_folds(request, start, console)


def _parse_folds(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        folds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise BenchError(f"--folds {text}: expected fold numbers separated by commas, e.g. 0,2") from None
    return tuple(sorted(set(folds)))


def _bench_args(ctx: typer.Context) -> list[str]:
    """The global options of this command, for the ``bench`` processes it starts."""
    options = [arg for folder in ctx.obj["plugins_dir"] for arg in ("--plugins-dir", str(Path(folder).absolute()))]
    return options + (["--strict-plugins"] if ctx.obj["strict"] else [])


def _predict_as_jobs(ctx: typer.Context, cluster, shards: int, run: str, images: list[Path], out: Path,
                     options: list[str]) -> None:
    """``--launcher L --shards N``: one job per shard, each ``bench predict ... --shard i/N``."""
    from harness.distribute import shards as sharding
    from harness.distribute.cluster import predict_shards
    from harness.engine.predict_run import listed_images

    # one line now for no images or too many shards, rather than one per job
    sharding.check_count(f"--shards {shards}", shards, len(listed_images(images)))
    predict_shards(cluster, shards, _bench_args(ctx) + [
        "predict", run, *(str(Path(i).absolute()) for i in images), "--out", str(out.absolute()), *options],
        out, console)
    console.print(f"{shards} shards predicted and merged into {out}", highlight=False)


def _say_run_result(recipe_name: str, folder: Path) -> None:
    from harness.runs.folder import RunFolder

    run = RunFolder(folder)
    if not run.complete():  # --folds: other processes still train the rest (the run said which)
        return
    summary = run.read_summary()
    console.print(f"{recipe_name}: out-of-fold Dice {summary['oof_dice']:.4f} "
                  f"(folds {summary['fold_dice_mean']:.4f} ± {summary['fold_dice_std']:.4f}) in {folder}",
                  highlight=False)


@app.command("predict")
def predict_command(
    ctx: typer.Context,
    run: Annotated[Optional[str], typer.Argument(help="A run folder, an ensemble folder (bench ensemble --out), an ONNX "
                                                      "export (bench export --out), or a run name under --results.",
                                                 show_default=False)] = None,
    images: Annotated[Optional[list[Path]], typer.Argument(
        help="Folders (their .jpg/.jpeg/.png/.tif/.tiff/.bmp files), image files, or .txt files with one image "
             "path a line.",
        show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option(help="Where the masks or maps and predict.json go.",
                                                show_default=False)] = None,
    format_: Annotated[str, typer.Option("--format", help="rle (submission.csv.gz), png (masks/ID.png, 0/255) "
                                                          "or maps (a probability store).")] = "rle",
    device: DeviceOption = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Images a batch (default: the recipe's).")] = None,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Loader processes (default: one per core on a CPU, "
                                                               "each predicting; as the recipe trains on a GPU).")] = None,
    results: Annotated[Path, typer.Option(help="Where run names are looked up.")] = Path("results"),
    shard: Annotated[Optional[str], typer.Option(
        help="i/N: predict every N-th image from the i-th, into OUT/shards/; the last shard to finish merges all "
             "into OUT as one unsharded run would write it.", show_default=False)] = None,
    merge_shards: Annotated[Optional[Path], typer.Option(
        help="Merge the finished shards in this --out folder (what the last shard does by itself).",
        show_default=False)] = None,
    shards: Annotated[Optional[int], typer.Option(
        min=1, help="With --launcher: submit one job per shard (each --shard i/N) and wait for them.",
        show_default=False)] = None,
    launcher: Annotated[Optional[str], typer.Option(
        help="With --shards: slurm, or local (the same jobs as processes here).", show_default=False)] = None,
    slurm_partition: SlurmPartition = None,
    slurm_time: SlurmTime = 24 * 60,
    slurm_gpus: SlurmGpus = 1,
    slurm_cpus: SlurmCpus = None,
    slurm_setup: SlurmSetup = None,
) -> None:
    """Apply a run's fold models, or an ensemble's runs, merger and post-processing, to images; rerun to resume."""
    from harness.distribute import shards as sharding
    from harness.engine.predict_run import PredictRequest, listed_images, predict
    from harness.ensemble.apply import ensemble_folder, predict_ensemble
    from harness.export.folder import export_folder

    if merge_shards is not None:
        if run or images or shard:
            raise BenchError("--merge-shards DIR takes no RUN, IMAGES or --shard: it merges what the shards wrote")
        merged = sharding.merge(merge_shards)
        console.print(f"merged {merged['shards']} shards into {merge_shards}: {merged['predicted']} images, "
                      f"{len(merged['skipped'])} skipped", highlight=False)
        return
    if not run or not images or out is None:
        raise BenchError("bench predict needs RUN, IMAGES and --out (or --merge-shards DIR)")
    from harness.engine.outputs import FORMATS

    if format_ not in FORMATS:  # before a shard writes its plan
        raise BenchError(f"--format {format_}: expected one of {', '.join(FORMATS)}")
    if (shards is None) != (launcher is None):
        raise BenchError("--shards N and --launcher go together: one job per shard")
    if shards is not None and shard is not None:
        raise BenchError("--shard i/N is what each job of --shards N is given: pass one or the other")
    if launcher is not None:
        from harness.distribute.cluster import Cluster

        cluster = Cluster(launcher, slurm_partition, slurm_time, slurm_gpus, slurm_cpus, slurm_setup or [], device)
        _predict_as_jobs(ctx, cluster, shards, run, images, out, [
            "--format", format_, "--results", str(results.absolute()), *(["--device", device] if device else []),
            *(["--batch-size", str(batch_size)] if batch_size else []),
            *(["--workers", str(workers)] if workers is not None else [])])
        return
    request = PredictRequest(run, images, out, results, format_, device, batch_size, workers)
    part = sharding.Shard.parse(shard) if shard is not None else None
    if part is not None:
        listing, shard_out = sharding.shard_images(out, part, listed_images(images), format_)
        request = PredictRequest(run, [listing], shard_out, results, format_, device, batch_size, workers)
        console.print(f"shard {part.index} of {part.count} into {shard_out}", highlight=False)
    ensemble, export = ensemble_folder(run, results), export_folder(run)
    if export is not None:
        from harness.export.runtime import predict_export

        outcome = predict_export(request, export, _plugins(ctx), console)
    elif ensemble is None:
        outcome = predict(request, _plugins(ctx), console)
    else:
        outcome = predict_ensemble(request, ensemble, _plugins(ctx), console)
    if part is not None and sharding.merge_when_complete(out):
        console.print(f"every shard is finished: merged {part.count} shards into {out}", highlight=False)
    if outcome.skipped:
        raise SystemExit(1)  # after everything else is written: the skipped images are in predict.json


RunsArgument = Annotated[
    Optional[list[str]],
    typer.Argument(help=RUNS_HELP, show_default=False),
]
ResultsOption = Annotated[Path, typer.Option(help="Where run names are looked up, and every run is found when no RUNS are given.")]
FilterOption = Annotated[
    Optional[list[str]],
    typer.Option("--filter", help=f"FIELD OP VALUE on {SUMMARY_FILE}, OP one of = != > >= < <= ~ (glob); repeatable."),
]


@app.command("export")
def export_command(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(help="A run folder, or a run name under --results.", show_default=False)],
    out: Annotated[Path, typer.Option(help="The export folder: the ONNX files, their card and the run's recipe.",
                                      show_default=False)],
    format_: Annotated[str, typer.Option("--format", help="onnx (the one format so far).")] = "onnx",
    check_images: Annotated[Optional[list[Path]], typer.Option(
        "--check-images", help="Images to compare onnxruntime with PyTorch on (default: 8 of the run's data).",
        show_default=False)] = None,
    results: Annotated[Path, typer.Option(help="Where run names are looked up.")] = Path("results"),
) -> None:
    """Export a run's fold models to ONNX, with the card (model.json) that says how to use them without
    segbench; onnxruntime is checked against PyTorch on real images first."""
    from harness.engine.predict_run import listed_images, run_folder
    from harness.ensemble.apply import ENSEMBLE_FILE, ensemble_folder
    from harness.export.onnx import FORMATS, export_run

    if format_ not in FORMATS:
        raise BenchError(f"--format {format_}: expected one of {', '.join(FORMATS)}")
    if ensemble_folder(run, results) is not None:
        raise BenchError(f"{run}: an ensemble; bench export exports runs so far: export each of its runs (the "
                         f"ensemble's {ENSEMBLE_FILE} names them, with their weights, threshold and post-processing)")
    images = listed_images(check_images) if check_images else None
    exported = export_run(run_folder(run, results), out, _plugins(ctx), console, images)
    card = exported.card
    check = card["check"]
    console.print(f"exported {len(card['folds'])} folds of {card['run']} to {out} (ONNX opset {card['opset']}, "
                  f"input {card['input']['height_width']}); {check['runtime']} matches PyTorch within "
                  f"{check['max_abs_probability_difference']:.1e} on {check['images']} images (bound {check['bound']:g})",
                  highlight=False)


@app.command("compare")
def compare_command(
    runs: RunsArgument = None,
    results: ResultsOption = Path("results"),
    format_: FormatOption = "table",
    sort: Annotated[str, typer.Option(help="dice, fold_mean, fold_std, train_seconds, train_speed, "
                                           "inference_speed, parameters, recipe or run.")] = "dice",
    filter_: FilterOption = None,
    by: Annotated[str, typer.Option(help="run (the leaderboard), fold, or image (the worst images).")] = "run",
    worst: Annotated[int, typer.Option(help="Images per run in --by image.")] = 10,
    resamples: Annotated[int, typer.Option(min=100, help="Bootstrap and permutation resamples.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the resamples: same seed, same intervals.")] = 0,
    wide: WideOption = False,
) -> None:
    """Rank complete runs of one data set (folds may differ), with intervals, p-values, speed and cost."""
    from harness.evaluate import compare
    from harness.evaluate.results import scan

    check_format(format_)
    if by not in ("run", "fold", "image"):
        raise BenchError(f"--by {by}: expected run, fold or image")
    options = compare.Options(by, sort, tuple(filter_ or ()), worst, resamples, seed)
    index = scan(runs or [], results)
    _say_skipped(index.skipped)
    found = compare.boards(compare.select_groups(index, options.filters, explicit=bool(runs)), options)
    compare.render(found, index.unfinished, format_, console, options, wide)


def _say_skipped(skipped: list[str]) -> None:
    """One line on stderr for what a glob like results/* matched besides runs; stdout stays csv or json."""
    if skipped:
        Console(stderr=True, soft_wrap=True).print(escape(skipped_line(skipped)), highlight=False)


@app.command("report")
def report_command(
    runs: RunsArgument = None,
    results: ResultsOption = Path("results"),
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("report.html"),
    filter_: FilterOption = None,
    worst: Annotated[int, typer.Option(help="Worst-predicted images shown per run.")] = 4,
) -> None:
    """Write one self-contained HTML page: leaderboard, learning curves, Dice vs speed, folds, worst images."""
    from harness.evaluate import compare
    from harness.evaluate.report import write_report
    from harness.evaluate.results import scan

    index = scan(runs or [], results)
    _say_skipped(index.skipped)
    groups = compare.select_groups(index, tuple(filter_ or ()), explicit=True)
    if not groups:
        raise BenchError(f"no complete runs in {', '.join(runs) if runs else results}")
    write_report(groups[0], out, worst)
    console.print(f"wrote {out} ({len(groups[0])} runs)", highlight=False)


@app.command("ensemble")
def ensemble_command(
    ctx: typer.Context,
    runs: RunsArgument = None,
    out: Annotated[Path, typer.Option(help="Folder for submission.csv.gz and ensemble.json.")] = Path("results/ensemble"),
    results: ResultsOption = Path("results"),
    top: Annotated[Optional[int], typer.Option(help="Keep only the K runs with the best out-of-fold Dice.")] = None,
    weights: Annotated[Optional[str], typer.Option(help="w1,w2,...: merge all runs with these weights (no selection).")] = None,
    search: Annotated[str, typer.Option(help="How weights are chosen: greedy (weights are counts of picks: the second "
                                              "run enters at 50%) or grid (a run enters at 10% to 50%).")] = "greedy",
    max_members: Annotated[int, typer.Option(help="Selection steps at most (a run may be picked again).")] = 8,
    threshold: Annotated[Optional[float], typer.Option(help="Fix the threshold (default: tuned out-of-fold).")] = None,
    post: Annotated[str, typer.Option(help="Post-processors to try, in order: NAME[:key=value...],... or none.")] = "convex_hull,keep_largest",
    force_post: Annotated[bool, typer.Option("--force-post", help="Apply --post as given, without the out-of-fold guard.")] = False,
    tolerance: Annotated[float, typer.Option(help="Share of images a kept post-processor may make worse.")] = 0.02,
    merger: Annotated[str, typer.Option(help="How maps are merged (a registered merger).")] = "mean",
    data: Annotated[Optional[Path], typer.Option(help=f"Data folder (default: the one in the runs' {SUMMARY_FILE}).")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Processes for the test pass (default: one per core).")] = None,
    check: Annotated[Optional[Path], typer.Option("--check", help="Validate this submission instead (needs --data or a run).")] = None,
) -> None:
    """Choose and weigh the best runs on out-of-fold data and write a Kaggle submission (or --check one).

    With one argument SPEC.toml, build the ensemble that spec states (ensembles/seed_merge.toml is the
    winning Carvana merge); the options it sets replace the command line's.
    """
    import shlex

    from harness.ensemble import ensemble

    if check is not None:
        rows = ensemble.check(check, data, runs or [], results)
        console.print(f"{check}: valid, {rows} test images, each once", highlight=False)
        return
    request = ensemble.EnsembleRequest(
        runs=runs or [], out=out, results=results, top=top, weights=_parse_weights(weights), max_members=max_members,
        threshold=threshold, post=[] if post.strip() == "none" else [p for p in post.split(",") if p],
        force_post=force_post, tolerance=tolerance, merger=merger, search=search, data=data, workers=workers,
        command=shlex.join(["bench", *sys.argv[1:]]),
    )
    spec = Path(runs[0]) if runs and len(runs) == 1 and runs[0].endswith(".toml") else None
    if spec is not None:  # an ensemble spec (harness/ensemble/spec.py) states members, weights, post-processing
        report = ensemble.build_from_spec(spec, request, _plugins(ctx), console)
    else:
        report = ensemble.build_ensemble(request, _plugins(ctx), console)
    oof = report["oof"]
    members = ", ".join(f"{m.get('run') or m['member']} {m['weight']:.3f}" for m in report["members"])
    if len(report["members"]) == 1:
        verdict = "merging did not help: selection kept one run"
    else:
        verdict = "merging helped" if oof["helped"] else "merging did not clearly help"
    console.print(
        f"ensemble of {members}; threshold {report['threshold']:.3f}; "
        f"post-processing {', '.join(report['postprocessing']['kept']) or 'none'}\n"
        f"out-of-fold Dice {oof['ensemble_dice']:.5f} [{oof['ensemble_interval'][0]:.5f}, {oof['ensemble_interval'][1]:.5f}] "
        f"vs best run {oof['best_run']} {oof['best_run_dice']:.5f} [{oof['best_run_interval'][0]:.5f}, "
        f"{oof['best_run_interval'][1]:.5f}]: difference {oof['difference']:+.5f} "
        f"[{oof['difference_interval'][0]:+.5f}, {oof['difference_interval'][1]:+.5f}]\n"
        f"merging alone (before post-processing, best run at its own threshold {oof['best_run_own_threshold']:.3f}): "
        f"{oof['merge_gain']:+.5f} [{oof['merge_gain_interval'][0]:+.5f}, {oof['merge_gain_interval'][1]:+.5f}], {verdict}\n"
        f"wrote {report['submission']} ({report['test']['images']} images, {report['test']['images_per_s']:.1f} images/s "
        f"in {_processes(report['test']['workers'])}) "
        f"and {out / 'ensemble.json'}", highlight=False)


def _processes(count: int) -> str:
    return "this process" if count == 1 else f"{count} worker processes"


def _parse_weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise BenchError(f"--weights {text}: expected comma-separated numbers, e.g. 0.5,0.25,0.25") from None


@app.command("benchmark")
def benchmark_command(
    ctx: typer.Context,
    recipe: RecipeArgument,
    profile: ProfileOption = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    variants: Annotated[str, typer.Option(help="Also measure these, comma-separated: PRECISION[+cl][+compile]; "
                                                 "'auto': what auto chooses among here; 'all'.")] = "auto",
    size: Annotated[Optional[str], typer.Option(help="Network input WIDTHxHEIGHT (default: the recipe's).")] = None,
    batch: Annotated[Optional[int], typer.Option(min=1, help="Batch size (default: the recipe's).")] = None,
    repeats: Annotated[int, typer.Option(min=2, help="Timed steps per measurement.")] = 10,
    warmup: Annotated[int, typer.Option(min=1, help="Untimed steps first.")] = 3,
    workers: Annotated[str, typer.Option(help="Loader worker counts to try, comma-separated.")] = "0,1,2",
    skip: Annotated[str, typer.Option(help="Parts to skip, comma-separated: loader, overhead (slow at full size on a CPU).")] = "",
    results: Annotated[Path, typer.Option(help="Benchmarks go to RESULTS/benchmarks/.")] = Path("results"),
    wide: WideOption = False,
    format_: Annotated[str, typer.Option("--format", help="table, markdown, json (the result file's json) or csv "
                                                          "(the variants' numbers); with json and csv only they "
                                                          "go to stdout.")] = "table",
) -> None:
    """Throughput, memory, GFLOPs, data pipeline, harness overhead and full-Carvana cost of a recipe."""
    from harness.recipe.schema import load_recipe
    from harness.speed.benchmark import benchmark_recipe, print_result, write_result

    check_format(format_)
    plugins = _plugins(ctx)
    resolved = load_recipe(recipe, plugins, profile or [], set_ or [])
    try:
        counts = [int(w) for w in workers.split(",")]
    except ValueError:
        raise BenchError(f"--workers {workers}: expected worker counts like 0,1,2") from None
    progress = Console(stderr=True, soft_wrap=True) if format_ in ("json", "csv") else console  # stdout: data only
    result = benchmark_recipe(
        resolved, plugins, progress, device=device, variants=variants, size=_parse_size(size) if size else None,
        batch_size=batch, warmup=warmup, repeats=repeats, loader_batches=max(4, repeats), worker_counts=counts,
        skip=_parse_skip(skip),
    )
    print_result(result, write_result(result, results), console, wide, format_)


def _parse_skip(text: str) -> set[str]:
    parts = {part.strip() for part in text.split(",") if part.strip()}
    if not parts <= {"loader", "overhead"}:
        raise BenchError(f"--skip {text}: expected a comma-separated list of loader, overhead")
    return parts


@app.command("ablate")
def ablate_command(
    ctx: typer.Context,
    recipe: RecipeArgument,
    trick: Annotated[list[str], typer.Option("--trick", help="A trick to switch alone (repeatable): tta, hnm, clahe, "
                                                             "augment, pseudo or grad_clip.")],
    profile: ProfileOption = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    results: Annotated[Path, typer.Option(help="Where the variants' run folders go.")] = Path("results"),
    out: Annotated[Path, typer.Option(help="The markdown file whose section for this recipe is (re)written.")] = Path("docs/ablations.md"),
    resume: Annotated[bool, typer.Option("--resume", help="Finish interrupted variant runs.")] = False,
) -> None:
    """Run the recipe and one variant per trick (switched off if used, on if not) on the same folds; report Dice."""
    import shlex

    from harness.evaluate.ablation import report_section, run_variants, variants, write_section
    from harness.recipe.schema import load_recipe

    plugins = _plugins(ctx)
    resolved = load_recipe(recipe, plugins, profile or [], set_ or [])
    found = variants(resolved, trick, plugins)
    scored = run_variants(found, results, resume, device, plugins, console)
    write_section(out, resolved.name, report_section(found, scored, shlex.join(["bench", *sys.argv[1:]])))
    console.print(f"wrote the {resolved.name} section of {out} ({len(found)} variants)", highlight=False)


@app.command("tune")
def tune_command(
    ctx: typer.Context,
    recipe: RecipeArgument,
    profile: ProfileOption = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    study: Annotated[Optional[str], typer.Option(help="Study name (default: recipe file name and profiles, e.g. alexander-quick).")] = None,
    storage: Annotated[Optional[str], typer.Option(help="Shared storage: an RDB URL (sqlite:///..., postgresql://...) or a "
                                                        "journal file path (default: RESULTS/tune/STUDY/study.db).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes on this machine working on the study.")] = 1,
    host: Annotated[Optional[str], typer.Option(help="This machine's name in a shared study (default: its hostname; "
                                                     "give each container its own): a dead process's trial of the same "
                                                     "host is retried at once, another host's after --heartbeat-grace.")] = None,
    heartbeat_grace: Annotated[int, typer.Option(min=3, help="Seconds a running trial may go without its worker's "
                                                             "heartbeat before another worker fails and retries it "
                                                             "(RDB storages).")] = 60,
    results: Annotated[Path, typer.Option(help="Studies go to RESULTS/tune/STUDY/, one run folder per trial.")] = Path("results"),
    tuned: Annotated[Path, typer.Option(help="Where the best trial is written as STUDY.toml.")] = Path("recipes/tuned"),
    wide: WideOption = False,
    track: TrackOption = None,
) -> None:
    """Search the recipe's [tune] space with Optuna; write the best trial as a recipe. Run it again to resume."""
    import shlex
    import socket

    from harness.tune.study import StudyPlace
    from harness.tune.summary import summarise
    from harness.tune.tune import TuneJob, tune

    name = study or "-".join([recipe.stem, *(profile or [])])
    job = TuneJob(recipe, tuple(profile or ()), tuple(set_ or ()), tuple(ctx.obj["plugins_dir"]), ctx.obj["strict"],
                  StudyPlace(name, results / "tune" / name, storage, host or socket.gethostname(), heartbeat_grace),
                  device, workers, trackers=tuple(track or ()))
    if track:
        from harness.track.tracking import trackers

        trackers(_plugins(ctx), track)  # a missing library is one line here, not a failed trial per worker
    _plugins(ctx)  # say which plugins were skipped, once, before the workers load them again
    space, found = tune(job, console)
    summarise(found, space, job.place, tuned, shlex.join(["bench", *sys.argv[1:]]), console, wide)


def _parse_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise BenchError(f"--size {text}: expected WIDTHxHEIGHT, e.g. 240x160")
    return int(width), int(height)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Folder to write (must not exist, or be empty).")],
    cars: Annotated[int, typer.Option(min=1, help="Labelled cars (16 views each).")] = 24,
    test_cars: Annotated[int, typer.Option(min=0, help="Unlabelled test cars (16 views each).")] = 8,
    size: Annotated[str, typer.Option(help="Image size WIDTHxHEIGHT.")] = "240x160",
    seed: Annotated[int, typer.Option(help="Same seed, same files, byte for byte.")] = 0,
    layout: Annotated[str, typer.Option(help="carvana (train/, train_masks/) or folders (images/, masks/ of "
                                             "PNG 0/255, groups.csv, test/).")] = "carvana",
) -> None:
    """Write the built-in synthetic Carvana-like set into OUT, in the Carvana layout or the folders layout."""
    import tempfile
    import time

    from harness.data.carvana import open_carvana
    from harness.data.folders import copy_as_folders
    from harness.data.synthetic import write_synthetic_carvana

    if layout not in ("carvana", "folders"):
        raise BenchError(f"--layout {layout}: expected carvana or folders")
    width, height = _parse_size(size)
    start = time.perf_counter()
    if layout == "carvana":
        write_synthetic_carvana(out, cars=cars, test_cars=test_cars, size=(width, height), seed=seed)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as rendered:
            carvana = write_synthetic_carvana(Path(rendered) / "carvana", cars=cars, test_cars=test_cars,
                                              size=(width, height), seed=seed)
            copy_as_folders(open_carvana(carvana), out)
    seconds = time.perf_counter() - start
    images = 16 * (cars + test_cars)
    console.print(f"wrote {images} images ({cars} + {test_cars} cars, {width}x{height}, {layout} layout) to {out} "
                  f"in {seconds:.1f} s ({images / seconds:.0f} images/s)")


MaskSuffixOption = Annotated[Optional[str], typer.Option(
    help="Folders layout: what a mask's name adds to its image's (default: the ending the mask names share).")]
GroupsOption = Annotated[Optional[str], typer.Option(
    help="Folders layout: CSV image,group, relative to ROOT (default: ROOT/groups.csv if present).")]
GroupPatternOption = Annotated[Optional[str], typer.Option(
    help="Folders layout: a regular expression on an image's id whose group 'group' (or first) is its group.")]


@data_app.command("check")
def data_check(
    root: Annotated[Path, typer.Argument(help="A data folder: the folders layout (images/, masks/) or Carvana's.")],
    mask_suffix: MaskSuffixOption = None,
    groups: GroupsOption = None,
    group_pattern: GroupPatternOption = None,
) -> None:
    """Read a data folder and report what is in it: its layout, images, masks, groups, test images and
    image sizes (every header is read; a folders set's masks are decoded to check their values)."""
    from harness.data.inspect import describe_folder
    from harness.data.layouts import open_data

    dataset = open_data(root, mask_suffix=mask_suffix, groups=groups, group_pattern=group_pattern)
    for line in describe_folder(dataset):
        console.print(line, highlight=False)


@data_app.command("split")
def data_split(
    root: Annotated[Path, typer.Argument(help="A data folder: the folders layout (images/, masks/) or Carvana's.")],
    out: Annotated[Path, typer.Option(help="Where to write: splits.json, or a folds CSV (id,fold) "
                                           "when the name ends in .csv.")] = Path("splits.json"),
    folds: Annotated[int, typer.Option(help="Number of folds.")] = 5,
    method: Annotated[str, typer.Option(help="rank_by_area, stratified_by_area, rank_mod_k, kfold, "
                                              "stratified_kfold or file (as the recipe's folds.method).")] = "rank_by_area",
    seed: Annotated[int, typer.Option(help="Seed of the fold assignment.")] = 0,
    view: Annotated[Optional[str], typer.Option(help="rank_mod_k: rank by this view's mask area, e.g. 05 "
                                                     "(default: the total over all views).")] = None,
    file: Annotated[Optional[Path], typer.Option(help="file: the folds CSV to read (id,fold).")] = None,
    mask_suffix: MaskSuffixOption = None,
    groups: GroupsOption = None,
    group_pattern: GroupPatternOption = None,
) -> None:
    """Split the training groups (Carvana's cars) into folds and write splits.json with its content hash,
    or a folds CSV that a recipe reads with folds.method = "file"."""
    from typing import get_args

    from harness.data.layouts import open_data
    from harness.data.splits import SplitMethod, splits_for, write_folds_csv, write_splits

    if method not in get_args(SplitMethod):
        raise BenchError(f"--method {method}: expected one of {', '.join(get_args(SplitMethod))}")
    if view is not None and method != "rank_mod_k":
        raise BenchError(f"--view {view}: only --method rank_mod_k ranks by one view, not {method}")
    if (file is not None) != (method == "file"):
        raise BenchError("--method file reads --file, and --file goes with --method file only")
    dataset = open_data(root, mask_suffix=mask_suffix, groups=groups, group_pattern=group_pattern)
    splits = splits_for(dataset, method, folds, seed, view=view, file=file)
    how = ", ".join(filter(None, [method, view and f"view {view}", file and str(file),
                                  splits.seed is not None and f"seed {seed}"]))
    if out.suffix.lower() == ".csv":
        write_folds_csv(splits, out)
        console.print(f"wrote {out}: {folds} folds ({how}), one id,fold row per group", highlight=False)
    else:
        write_splits(splits, out)
        console.print(f"wrote {out}: {folds} folds ({how}), hash {splits.hash[:16]}", highlight=False)


def main() -> None:
    """Entry point: bad input (a flag or a file) is one line and exit code 2, never a traceback."""
    from typer.exceptions import TyperException

    errors = Console(stderr=True, soft_wrap=True, highlight=False)
    try:
        code = app(standalone_mode=False, prog_name="bench")
    except TyperException as error:  # typer's (vendored click's) own: unknown flag, missing argument
        context = getattr(error, "ctx", None)
        help_text = context.get_help() if context is not None else None
        if error.format_message() == help_text:  # a bare `bench` or `bench data`: show the help
            typer.echo(help_text)
            code = 0
        else:
            command = context.command_path if context is not None else "bench"
            errors.print(f"[red]error:[/] {escape(command)}: {escape(error.format_message())} (see {command} --help)")
            code = 2
    except BenchError as error:
        errors.print(f"[red]error:[/] {escape(str(error))}")
        code = 2
    except (KeyboardInterrupt, typer.Abort):
        errors.print("interrupted")
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
