"""The ``bench`` command.

Each subcommand is a thin layer over a library function; the CLI parses flags, loads plugins when
the command needs them, and turns a ``BenchError`` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.errors import BenchError

app = typer.Typer(
    help="Benchmark binary segmentation recipes: run, compare, tune and ensemble them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Make, check and split data sets in the Carvana layout.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console(soft_wrap=True)  # a long line stays one line in logs

RecipeArgument = Annotated[Path, typer.Argument(help="A recipe TOML file.")]
ProfileOption = Annotated[
    Optional[list[str]], typer.Option("--profile", "-p", help="A [profiles.NAME] to apply (repeatable).")
]
SetOption = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override KEY=VALUE, e.g. train.epochs=3 (repeatable).")
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
    from harness.plugins import load_plugins

    plugins = load_plugins(ctx.obj["plugins_dir"], strict=ctx.obj["strict"])
    for failure in plugins.failures:
        Console(stderr=True).print(f"[yellow]warning:[/] {escape(failure.describe())}", highlight=False)
    return plugins


@app.command("plugins")
def plugins_command(ctx: typer.Context) -> None:
    """List the loaded plugins: name, version, source, hooks and the components they register."""
    plugins = _plugins(ctx)
    table = Table(title="bench plugins", show_lines=True)
    for column in ("plugin", "version", "source", "hooks", "registers"):
        table.add_column(column, overflow="fold")
    for info in plugins.infos:
        registers = "\n".join(f"{kind}: {', '.join(names)}" for kind, names in info.components.items())
        table.add_row(info.name, info.version, info.source, "\n".join(info.hooks), registers)
    for failure in plugins.failures:
        table.add_row(failure.name, "-", failure.source, "", f"[red]failed: {escape(failure.error)}[/]")
    console.print(table)


@app.command("show")
def show_command(
    ctx: typer.Context,
    recipe: RecipeArgument,
    profile: ProfileOption = None,
    set_: SetOption = None,
) -> None:
    """Print the recipe as it resolves after profiles and --set overrides, validated."""
    from harness.recipe import load_recipe

    resolved = load_recipe(recipe, _plugins(ctx), profile or [], set_ or [])
    typer.echo(resolved.to_toml(), nl=False)


@app.command("run")
def run_command(
    ctx: typer.Context,
    recipe: RecipeArgument,
    profile: ProfileOption = None,
    set_: SetOption = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N (default: cuda when present).")] = None,
    results: Annotated[Path, typer.Option(help="Where run folders go.")] = Path("results"),
    name: Annotated[Optional[str], typer.Option(help="Run folder name (default: recipe name + recipe hash).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Finish an interrupted run; finished folds are kept.")] = False,
    estimate: Annotated[bool, typer.Option("--estimate", help="Measure a few steps, print the estimated duration, stop.")] = False,
) -> None:
    """Train every fold of a recipe, predict out-of-fold and test images, into a run folder."""
    import json

    from harness.recipe import load_recipe
    from harness.run import RunRequest, run

    plugins = _plugins(ctx)
    resolved = load_recipe(recipe, plugins, profile or [], set_ or [])
    request = RunRequest(resolved, results, name, resume, device, estimate)
    folder = run(request, plugins, console)
    if not estimate:
        summary = json.loads((folder / "summary.json").read_text())
        console.print(f"{resolved.name}: out-of-fold Dice {summary['oof_dice']:.4f} "
                      f"(folds {summary['fold_dice_mean']:.4f} ± {summary['fold_dice_std']:.4f}) in {folder}",
                      highlight=False)


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
) -> None:
    """Write the built-in synthetic Carvana-like set into OUT, in the Carvana layout."""
    import time

    from harness.synthetic import write_synthetic_carvana

    width, height = _parse_size(size)
    start = time.perf_counter()
    write_synthetic_carvana(out, cars=cars, test_cars=test_cars, size=(width, height), seed=seed)
    seconds = time.perf_counter() - start
    images = 16 * (cars + test_cars)
    console.print(f"wrote {images} images ({cars} + {test_cars} cars, {width}x{height}) to {out} "
                  f"in {seconds:.1f} s ({images / seconds:.0f} images/s)")


@data_app.command("check")
def data_check(root: Annotated[Path, typer.Argument(help="A folder in the Carvana layout.")]) -> None:
    """Read a Carvana-layout folder and report what is in it (every image header is checked)."""
    from harness.carvana import car_ids, open_carvana

    dataset = open_carvana(root)
    console.print(
        f"{root}: {len(dataset.train)} training images of {len(car_ids(dataset))} cars "
        f"(masks from {dataset.mask_source}), {len(dataset.test)} test images"
    )


@data_app.command("split")
def data_split(
    root: Annotated[Path, typer.Argument(help="A folder in the Carvana layout.")],
    out: Annotated[Path, typer.Option(help="Where to write splits.json.")] = Path("splits.json"),
    folds: Annotated[int, typer.Option(help="Number of folds.")] = 5,
    method: Annotated[str, typer.Option(help="rank_by_area or stratified_by_area.")] = "rank_by_area",
    seed: Annotated[int, typer.Option(help="Seed of the fold assignment.")] = 0,
) -> None:
    """Split the training cars into folds by car id and write splits.json with its content hash."""
    from harness.carvana import car_mask_areas, open_carvana
    from harness.splits import make_splits, write_splits

    if method not in ("rank_by_area", "stratified_by_area"):
        raise BenchError(f"--method {method}: expected rank_by_area or stratified_by_area")
    splits = make_splits(car_mask_areas(open_carvana(root)), folds, method, seed)
    write_splits(splits, out)
    console.print(f"wrote {out}: {folds} folds ({method}, seed {seed}), hash {splits.hash[:16]}")


def main() -> None:
    """Entry point: run the app; bad input is one line and exit code 2, never a traceback."""
    from harness.progress import EstimateOnly

    try:
        app()
    except EstimateOnly as done:
        Console(stderr=True).print(str(done), highlight=False)
        sys.exit(0)
    except BenchError as error:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
