"""Read a data folder in the folders layout, the one most binary segmentation sets come in, as is.

Layout::

    root/images/<name>.jpg|.jpeg|.png|.tif|.tiff|.bmp   training images, 8-bit grey or RGB, any sizes
    root/masks/<name><suffix>.png|.gif|.tif|.tiff|.bmp  one mask per image, values {0, 1} or {0, 255}
    root/test/<name>.<any image suffix>                 unlabelled images (optional)
    root/groups.csv                                     ``image,group`` (optional)

An image's id is its file name without the suffix; its mask is found by that id and the mask suffix
(``data.mask_suffix``; unset, the one the file names share: ``""`` for ``masks/a.png``, ``"_mask"``
for ``masks/a_mask.png``).

**Groups** (``harness.data.dataset``): from ``groups.csv`` in the folder or the CSV ``data.groups``
names (columns ``image`` and ``group``; an image by its file name or its id), or from a regular
expression on the id (``data.group_pattern``: its group named ``group``, else its first group, else
the whole match), or one group per image when neither is given, which the run warns about.

**Checked up front**, from file headers only: every problem of the folder is listed at once, one
line each (up to ``PROBLEMS_SHOWN``), naming the file and what was found. A mask's values are
checked when it is decoded (``read_mask``; ``bench data check`` decodes them all): that takes a
pass over the pixels, which opening a folder of 100,000 images should not.

**16-bit images are refused**, not stretched: the range to map onto 8 bits (the full 0-65535, the
image's own minimum and maximum, a percentile window) is the data's to choose, and a silent choice
would differ between training here and prediction elsewhere. A 16-bit *mask* is read like any other.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from harness.data.dataset import DataFolder, header_of, read_mask, wxh
from harness.data.image_files import SUFFIXES as IMAGE_SUFFIXES
from harness.errors import BenchError

MASK_SUFFIXES = (".png", ".gif", ".tif", ".tiff", ".bmp")
GROUPS_FILE = "groups.csv"
GROUPS_COLUMNS = ("image", "group")
PROBLEMS_SHOWN = 20
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # PIL modes of 16- and 32-bit images
ONE_PER_IMAGE = "one group per image"
UNGROUPED = ("no groups (groups.csv or data.group_pattern), so each image is its own group: near-duplicate images "
             "(fields of one slide, frames of one scene) will leak across folds")
_UNSAFE = re.compile(r'[,"\r\n]')


def is_folders(root: Path) -> bool:
    """Whether a folder looks like the folders layout (an images/ folder)."""
    return (root / "images").is_dir()


def open_folders(root: Path | str, mask_suffix: str | None = None, groups: str | None = None,
                 group_pattern: str | None = None) -> DataFolder:
    """Scan and check a folders-layout folder; raise one ``BenchError`` listing its problems."""
    root = Path(root)
    if not root.is_dir():
        raise BenchError(f"data folder {root} does not exist or is not a folder")
    if groups is not None and group_pattern is not None:
        raise BenchError("data.groups and data.group_pattern both set: groups come from one of them")
    for name in ("images", "masks"):
        if not (root / name).is_dir():
            raise BenchError(f"data folder {root} has no {name}/ folder (the folders layout: images/ and masks/)")
    problems: list[str] = []
    image_files = _files_by_id(root / "images", IMAGE_SUFFIXES, problems)
    if not image_files:
        raise BenchError(f"{root / 'images'} holds no images ({', '.join(IMAGE_SUFFIXES)} files)")
    found_masks = _files_by_id(root / "masks", MASK_SUFFIXES, problems)
    suffix = mask_suffix if mask_suffix is not None else _shared_suffix(set(image_files), set(found_masks))
    mask_files = {image_id: found_masks.pop(image_id + suffix) for image_id in image_files
                  if image_id + suffix in found_masks}
    sizes = _check_pairs(image_files, mask_files, suffix, problems)
    problems += [f"mask {path} has no image: no images/{name.removesuffix(suffix)}.* (mask suffix {suffix!r})"
                 for name, path in sorted(found_masks.items())]
    test_dir = root / "test"
    test_files = _files_by_id(test_dir, IMAGE_SUFFIXES, problems) if test_dir.is_dir() else {}
    train = tuple(sorted(image_files))
    group_of, grouping = _groups(root, train, image_files, groups, group_pattern, problems)
    if problems:
        raise problems_error(f"data folder {root}: {len(problems)} problem(s)", problems)
    return DataFolder(
        root=root, layout="folders", train=train, test=tuple(sorted(test_files)),
        image_files=image_files, test_files=test_files, test_dir=test_dir,
        mask_source="files", mask_files=mask_files, sizes=sizes, groups=group_of, grouping=grouping,
    )


def problems_error(headline: str, problems: list[str]) -> BenchError:
    """One error listing a folder's problems a line each, the first ``PROBLEMS_SHOWN`` of them."""
    shown = problems[:PROBLEMS_SHOWN]
    more = [f"... and {len(problems) - len(shown)} more"] if len(problems) > len(shown) else []
    return BenchError("\n  ".join([headline, *shown, *more]))


def _files_by_id(folder: Path, suffixes: tuple[str, ...], problems: list[str]) -> dict[str, Path]:
    """Files with one of ``suffixes`` (any case) directly in ``folder``, by id; hidden files and other
    suffixes are not data (a README, a .DS_Store). Two files of one id are a problem."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in suffixes or not path.is_file():
            continue
        if path.stem in files:
            problems.append(f"{path} and {files[path.stem]} share the id {path.stem!r}: keep one")
            continue
        if _UNSAFE.search(path.stem):
            problems.append(f"{path}: a comma, quote or line break in the name (the per-image tables are CSV): rename it")
            continue
        files[path.stem] = path
    return files


def _shared_suffix(image_ids: set[str], mask_ids: set[str]) -> str:
    """The mask suffix that pairs the most masks with images: ``""`` or an ending all masks share."""
    shared = _common_ending(mask_ids)
    candidates = [""] + [shared[start:] for start in range(len(shared))]
    return max(candidates, key=lambda suffix: (sum(m.removesuffix(suffix) in image_ids for m in mask_ids
                                                   if m.endswith(suffix)), -len(suffix)))


def _common_ending(names: set[str]) -> str:
    if not names:
        return ""
    reversed_names = [name[::-1] for name in names]
    first, last = min(reversed_names), max(reversed_names)
    length = next((i for i, (a, b) in enumerate(zip(first, last)) if a != b), min(len(first), len(last)))
    return first[:length][::-1]


def _check_pairs(image_files: dict[str, Path], mask_files: dict[str, Path], suffix: str,
                 problems: list[str]) -> dict[str, tuple[int, int]]:
    """Every image readable, 8-bit, with a readable mask of its size; their (height, width)."""
    sizes = {}
    for image_id, path in sorted(image_files.items()):
        try:
            size, mode = header_of(path)
        except BenchError as error:
            problems.append(str(error))
            continue
        if mode in _SIXTEEN_BIT:
            problems.append(f"image {path} is {mode} (16 or 32 bits a pixel); segbench reads 8-bit grey or RGB "
                            "images: convert it with the range that suits the data")
            continue
        sizes[image_id] = size
        mask = mask_files.get(image_id)
        if mask is None:
            problems.append(f"image {path} has no mask: no masks/{image_id}{suffix}"
                            f"{{{','.join(MASK_SUFFIXES)}}}")
            continue
        try:
            mask_size = header_of(mask)[0]
        except BenchError as error:
            problems.append(str(error))
            continue
        if mask_size != size:
            problems.append(f"mask {mask} is {wxh(mask_size)} but its image {path.name} is {wxh(size)}")
    return sizes


def _groups(root: Path, train: tuple[str, ...], image_files: dict[str, Path], table: str | None,
            pattern: str | None, problems: list[str]) -> tuple[dict[str, str], str]:
    """Each training image's group and where the groups came from (see the module docstring)."""
    if pattern is not None:
        return _groups_from_pattern(train, pattern, problems), f"data.group_pattern {pattern!r}"
    path = root / (table if table is not None else GROUPS_FILE)
    if table is not None and not path.is_file():
        raise BenchError(f"data.groups = {table!r}: no such file {path} (a relative path is read from the data folder)")
    if path.is_file():
        return _groups_from_table(path, train, image_files, problems), path.name
    return {image_id: image_id for image_id in train}, ONE_PER_IMAGE


def _groups_from_pattern(train: tuple[str, ...], pattern: str, problems: list[str]) -> dict[str, str]:
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise BenchError(f"data.group_pattern {pattern!r} is not a regular expression: {error}") from None
    groups = {}
    for image_id in train:
        match = compiled.search(image_id)
        if match is None:
            problems.append(f"image {image_id!r} does not match data.group_pattern {pattern!r}")
            continue
        if "group" in compiled.groupindex:
            group = match.group("group")
        else:
            group = match.group(1) if compiled.groups else match.group(0)
        if not group:
            problems.append(f"image {image_id!r}: data.group_pattern {pattern!r} matches an empty group")
        groups[image_id] = group
    return groups


def _groups_from_table(path: Path, train: tuple[str, ...], image_files: dict[str, Path],
                       problems: list[str]) -> dict[str, str]:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise BenchError(f"cannot read {path} as csv: {error}".replace("\n", " ")) from None
    if any(column not in table.columns for column in GROUPS_COLUMNS):
        raise BenchError(f"{path}: expected columns image,group, found {','.join(map(str, table.columns))!r}")
    by_name = {path_.name: image_id for image_id, path_ in image_files.items()}
    groups: dict[str, str] = {}
    for line, (image, group) in enumerate(zip(table["image"], table["group"]), start=2):
        image_id = by_name.get(image, image)
        if image_id not in image_files:
            problems.append(f"{path} line {line}: image {image!r} is not in images/")
        elif image_id in groups:
            problems.append(f"{path} line {line}: image {image!r} has a second row")
        elif not group.strip() or _UNSAFE.search(group):
            problems.append(f"{path} line {line}: image {image!r} has group {group!r}; expected a name without commas "
                            "or quotes")
        else:
            groups[image_id] = group.strip()
    problems += [f"{path}: image {image_files[image_id].name} has no row" for image_id in train if image_id not in groups]
    return groups


def copy_as_folders(dataset: DataFolder, out: Path) -> Path:
    """Write ``dataset`` into ``out`` (new, or empty) in the folders layout: the image files copied byte for
    byte (so their pixels are the same), each mask as a PNG of 0 and 255, the groups in ``groups.csv``,
    the test images in ``test/``. The same data in two layouts, which train alike (``bench data synth
    --layout folders``, the tests)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BenchError(f"{out} already exists and is not empty; choose a new folder")
    for name in ("images", "masks", "test"):
        (out / name).mkdir(parents=True, exist_ok=True)
    for image_id in dataset.train:
        source = dataset.image_path(image_id)
        shutil.copyfile(source, out / "images" / source.name)
        Image.fromarray(read_mask(dataset, image_id) * np.uint8(255)).save(out / "masks" / f"{image_id}.png")
    for image_id in dataset.test:
        source = dataset.image_path(image_id, "test")
        shutil.copyfile(source, out / "test" / source.name)
    rows = "".join(f"{image_id},{dataset.group_of(image_id)}\n" for image_id in dataset.train)
    (out / GROUPS_FILE).write_text(",".join(GROUPS_COLUMNS) + "\n" + rows)
    return out
