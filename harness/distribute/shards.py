"""``bench predict ... --shard i/N``: one of N hosts' share of a prediction, and the merge of the shares.

Shard i (1 to N) predicts every N-th image of the listed images, starting at the i-th, as an ordinary
``bench predict`` of a list file (``DIR/shards/i-of-N.txt``) into ``DIR/shards/i-of-N/``; so it
resumes like one, on any host that sees ``DIR``. ``DIR/shards/plan.json`` holds what every shard
must agree on (how many shards, the format, every image in order), written by the first to start.

When a shard finishes and finds every shard's ``predict.json``, it merges them into ``DIR`` as the
unsharded command would have written it: ``submission.csv.gz`` (rows in the listed order, the same
bytes), ``masks/`` or ``maps/`` (the shards' files linked, not copied), and ``predict.json``.
``bench predict --merge-shards DIR`` does the same by hand. Two shards that both merge write the same.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from harness.data.image_files import ImageFile
from harness.data.submission import read_submission, write_submission
from harness.engine.outputs import FORMATS
from harness.errors import BenchError
from harness.io import atomic_write_json, atomic_write_text, write_once_json
from harness.runs.folder import read_json
from harness.runs.probabilities import ProbabilityMaps

SHARDS = "shards"


@dataclass(frozen=True)
class Shard:
    index: int  # 1 to count
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        index, slash, count = text.partition("/")
        if not (slash and index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
            raise BenchError(f"--shard {text}: expected i/N with 1 <= i <= N, e.g. 1/4 (the first of four shards)")
        return cls(int(index), int(count))

    @property
    def name(self) -> str:
        return f"{self.index}-of-{self.count}"

    def of(self, images: list[ImageFile]) -> list[ImageFile]:
        return images[self.index - 1::self.count]


def shard_images(out: Path, shard: Shard, images: list[ImageFile], format_: str) -> tuple[Path, Path]:
    """Record the plan, write the shard's list of images; return (the list file, the shard's output folder).

    One line when ``out`` holds the shards of another prediction (other images, shard count or format).
    """
    folder = out / SHARDS
    check_count(f"--shard {shard.index}/{shard.count}", shard.count, len(images))
    plan = {"shards": shard.count, "format": format_, "images": [image.image_id for image in images]}
    folder.mkdir(parents=True, exist_ok=True)
    if write_once_json(folder / "plan.json", plan) != plan:
        raise BenchError(f"{folder / 'plan.json'}: {out} holds the shards of another prediction (other images, "
                         "number of shards or --format); give another --out")
    listing = folder / f"{shard.name}.txt"
    atomic_write_text(listing, "".join(f"{image.path.absolute()}\n" for image in shard.of(images)))
    return listing, folder / shard.name


def check_count(flag: str, shards: int, images: int) -> None:
    """Every shard has an image to predict."""
    if shards > images:
        raise BenchError(f"{flag}: {images} images cannot make {shards} shards; use at most {images}")


def merge_when_complete(out: Path) -> bool:
    """Merge the shards into ``out`` if every one has finished; whether it did."""
    plan = _plan(out)
    if _missing(out, plan):
        return False
    merge(out)
    return True


def merge(out: Path) -> dict:
    """Write ``out``'s merged outputs and ``predict.json`` from its finished shards; return the latter."""
    plan = _plan(out)
    missing = _missing(out, plan)
    if missing:
        raise BenchError(f"{out / SHARDS}: shard {', '.join(missing)} of {plan['shards']} not finished (no "
                         "predict.json); run it, or run it again to resume, then merge")
    shards = [out / SHARDS / Shard(i, plan["shards"]).name for i in range(1, plan["shards"] + 1)]
    if plan["format"] == "rle":
        rows = {image_id: rle for shard in shards for _, image_id, rle in read_submission(shard / "submission.csv.gz")}
        names = {Path(line).stem: Path(line).name for shard in shards
                 for line in shard.with_suffix(".txt").read_text().splitlines()}
        write_submission(out / "submission.csv.gz", ((i, rows[i]) for i in plan["images"] if i in rows), names)
    elif plan["format"] == "png":
        _link_all([shard / "masks" for shard in shards], out / "masks")
    else:
        _merge_stores([shard / "maps" for shard in shards], out / "maps", plan["images"])
    reports = [read_json(shard / "predict.json") for shard in shards]
    merged = {key: value for key, value in reports[0].items() if key not in _SUMMED}
    merged.update({key: sum(report[key] for report in reports) for key in ("images", "predicted", "resumed")},
                  skipped=[entry for report in reports for entry in report["skipped"]],
                  seconds=round(max(report["seconds"] for report in reports), 3), shards=len(shards))
    merged["images_per_s"] = round(merged["predicted"] / max(merged["seconds"], 1e-9), 2)
    atomic_write_json(out / "predict.json", merged)
    return merged


_SUMMED = ("images", "predicted", "resumed", "skipped", "seconds", "images_per_s")


def _plan(out: Path) -> dict:
    path = out / SHARDS / "plan.json"
    if not path.is_file():
        raise BenchError(f"{out}: holds no shards (no {SHARDS}/plan.json); bench predict --shard i/N writes them")
    plan = read_json(path)
    if not (isinstance(plan.get("shards"), int) and plan["shards"] >= 1 and plan.get("format") in FORMATS
            and isinstance(plan.get("images"), list)):
        raise BenchError(f"{path}: not a plan of shards (expected shards, format and images); run the shards "
                         "again into a new --out")
    return plan


def _missing(out: Path, plan: dict) -> list[str]:
    return [str(i) for i in range(1, plan["shards"] + 1)
            if not (out / SHARDS / Shard(i, plan["shards"]).name / "predict.json").is_file()]


def _link_all(sources: list[Path], target: Path) -> None:
    """Every file of ``sources`` in ``target`` under its name: a hard link (no second copy of 100,064
    masks), or a copy where the file system has none."""
    target.mkdir(parents=True, exist_ok=True)
    for source in sources:
        if not source.is_dir():
            continue
        for entry in os.scandir(source):
            if entry.name.startswith(".") or (target / entry.name).exists():
                continue
            try:
                os.link(entry.path, target / entry.name)
            except FileExistsError:  # another shard merging at the same time
                pass
            except OSError:
                shutil.copyfile(entry.path, target / entry.name)


def _merge_stores(sources: list[Path], target: Path, order: list[str]) -> None:
    """One probability store of the shards' stores: their maps linked, an index in the listed order."""
    shapes = {}
    for source in sources:
        shapes.update(ProbabilityMaps.open(source).shapes)
    ProbabilityMaps.create(target, {image_id: shapes[image_id] for image_id in order if image_id in shapes})
    _link_all(sources, target)  # the shards' own index.json files are skipped: the target has its own
