"""``bench predict ENSEMBLE IMAGES... --out DIR``: an ensemble that ``bench ensemble`` chose, applied to any images.

``ensemble.json`` holds what rebuilds it (``apply``, written by ``harness.ensemble.ensemble.applied``):
the member runs' folders, weights, merger, cutoff and post-processors by registered name and
parameters. Every run of it then predicts the images into a store of its own,
``DIR/members/<NN>-<run>/test_maps``, through ``bench predict``'s code (``harness.engine.predict_run``: the
run's recipe, fold models and TTA), and the ensemble's test pass (``harness.ensemble.test_pass``: the
exact merge, the kept post-processors, in worker processes) merges those maps as it merges the
runs' own test maps in ``bench ensemble``. So the masks are those ``bench ensemble`` would have written
had the images been its data's test set.

The members' maps are kept (a store takes about a twentieth of the raw maps, ``harness.runs.probabilities``):
a job killed at any point is finished by running it again, which predicts only the maps missing and
merges again, and they can be deleted once the masks are written. An image no member can read is
skipped by name, as ``bench predict`` skips it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from harness.engine.inference import Outcome
from harness.engine.outputs import MapStore, MaskFiles
from harness.engine.predict_run import PredictRequest, RunPrediction, listed_images, readable_shapes, write_report
from harness.ensemble import test_pass
from harness.ensemble.ensemble import Ensemble, Post, component_from_text, write_test_submission
from harness.ensemble.members import Group, runs_of
from harness.errors import BenchError
from harness.recipe.components import build_component
from harness.recipe.plugins import Plugins
from harness.runs.folder import Run, RunFolder, read_json

ENSEMBLE_FILE = "ensemble.json"  # written by bench ensemble into its --out folder
FORMATS = ("rle", "png")


def ensemble_folder(target: str, results: Path) -> Path | None:
    """The ensemble folder ``target`` names (itself, or a name under ``results``), or None for a run."""
    for candidate in (Path(target), results / target):
        if (candidate / ENSEMBLE_FILE).is_file():
            return candidate
    return None


def load_applied(folder: Path, plugins: Plugins) -> Ensemble:
    """The ensemble of ``folder/ensemble.json``, its runs found but their stores not opened."""
    path = folder / ENSEMBLE_FILE
    spec = read_json(path).get("apply")
    if spec is None:
        raise BenchError(f"{path}: written before bench predict could apply ensembles; build it again with the "
                         "command in its reproduce.apply")
    try:
        members = []
        for entry in spec["members"]:
            runs = tuple(_member_run(Path(folder_), path) for folder_ in entry["folders"])
            members.append(Group(entry["name"], runs) if entry["group"] else runs[0])
        posts = [Post(post["name"], build_component(plugins, "postprocessor", post["name"], post["params"],
                                                     f"{path}: post-processor {post['name']!r}"),
                      post["reads"], post["name"], post["params"]) for post in spec["post"]]
        return Ensemble(members, [entry["weight"] for entry in spec["members"]],
                        component_from_text(plugins, "merger", spec["merger"]), spec["cutoff_u8"], posts)
    except (KeyError, TypeError, IndexError) as error:  # edited by hand, or cut short
        raise BenchError(f"{path}: its 'apply' table is damaged ({type(error).__name__}: {error}); build the "
                         "ensemble again with the command in its reproduce.apply") from None


def _member_run(folder: Path, ensemble: Path) -> Run:
    if not folder.is_dir():
        raise BenchError(f"{ensemble}: member run {folder} is not there any more; bench predict needs its fold models")
    run_folder = RunFolder(folder)
    return Run(run_folder, run_folder.read_summary())


def predict_ensemble(request: PredictRequest, folder: Path, plugins: Plugins, console: Console) -> Outcome:
    """Every member run's maps of the images, then the ensemble's masks; the summary is ``out/predict.json``."""
    if request.format not in FORMATS:
        raise BenchError(f"--format {request.format}: an ensemble writes masks, {' or '.join(FORMATS)} (post-processors "
                         f"act on masks); each member's maps are kept in {request.out / 'members'}")
    ensemble = load_applied(folder, plugins)
    images = listed_images(request.images)
    shapes = readable_shapes(images)
    started = time.perf_counter()
    runs = list({str(run.path): run for member in ensemble.runs for run in runs_of(member)}.values())
    skipped: dict[str, str] = {}
    predicted: dict[str, Run] = {}
    for number, run in enumerate(runs, 1):
        job = RunPrediction.of(run.folder, plugins, request)
        member = RunFolder(request.out / "members" / f"{number:02d}-{run.name.replace('/', '-')}")
        console.print(f"member {number}/{len(runs)}: {run.name} on {job.predictor.compute.describe()}", highlight=False)
        outcome = job.predict(images, MapStore.create(member.test_maps, shapes), console)
        console.print(outcome.line(), highlight=False)
        skipped.update(outcome.skipped)
        predicted[str(run.path)] = Run(member, run.summary)
    merged = _reading(ensemble, predicted)
    ids = [image.image_id for image in images if image.image_id in shapes and str(image.path) not in skipped]
    _write_masks(merged, ids, request, console, {image.image_id: image.path.name for image in images})
    outcome = Outcome(len(images), predicted=len(ids), skipped=sorted(skipped.items()),
                      seconds=time.perf_counter() - started)
    write_report(request, outcome, {"ensemble": str(folder), "runs": [run.name for run in runs]})
    console.print(f"ensemble of {len(runs)} runs: {outcome.line()}", highlight=False)
    return outcome


def _reading(ensemble: Ensemble, stores: dict[str, Run]) -> Ensemble:
    """``ensemble`` with each run replaced by the one whose test store holds its maps of the new images."""
    def swapped(member: Run | Group) -> Run | Group:
        if isinstance(member, Group):
            return Group(member.name, tuple(stores[str(run.path)] for run in member.runs))
        return stores[str(member.path)]

    return replace(ensemble, runs=[swapped(member) for member in ensemble.runs])


def _write_masks(ensemble: Ensemble, ids: list[str], request: PredictRequest, console: Console,
                 names: dict[str, str]) -> None:
    if request.format == "rle":
        write_test_submission(ensemble, request.out / "submission.csv.gz", console, test_pass.default_workers(), ids,
                              names)
        return
    masks, files = test_pass.SubmissionMasks(ensemble), MaskFiles(request.out, threshold=0.5)
    for image_id in ids:
        if not files.done(image_id):
            files.write(image_id, files.encode(masks(image_id).view("uint8") * 255))
