"""Read a data folder in the Kaggle Carvana layout, as is, into a ``DataFolder`` whose groups are the cars.

Layout::

    root/train/<carid>_<NN>.jpg             training images (RGB)
    root/train_masks/<carid>_<NN>_mask.gif  palette masks, values 0/1
    root/train_masks.csv                    ``img,rle_mask``; used only when train_masks/ is absent
    root/test/<carid>_<NN>.jpg              unlabelled images (optional)
    root/metadata.csv                       one row per car (optional)
    root/train_hq/, root/test_hq/           the same images as high-quality JPEGs (read with images="hq")

``images = "hq"`` (the recipe's ``data.images``) reads the images from ``train_hq/`` and ``test_hq/``,
as both seed teams did (``albu/src/train.py:232``, ``albu/src/carvana_eval.py:40,45``;
``asanakoy/dataset.py:104,180-181`` unless ``--no_hq``, which their scripts never pass); the masks
are the same ``train_masks/`` either way.

The 16 views of a car are near-duplicates: its group is the car id in the file name (``car_id``).
``open_carvana`` checks the whole training set up front (names, a mask for every image, image and
mask sizes from the file headers, every RLE row), so a broken folder fails in a second with one line
naming the file, not hours later in the middle of fold 3. Pixels are decoded only on demand.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from harness.data import rle
from harness.data.dataset import DataFolder, ImageSet, MaskSource, header_of, mask_area, wxh
from harness.errors import BenchError

_SUFFIX: dict[str, str] = {"standard": "", "hq": "_hq"}  # the image folders are train<suffix>, test<suffix>

_IMAGE_ID = re.compile(r"^(?P<car>.+)_(?P<view>\d{2})$")
_CSV_COLUMNS = ("img", "rle_mask")


def car_id(image_id: str) -> str:
    """The car an image shows: everything before the last underscore (``<carid>_<NN>``)."""
    match = _IMAGE_ID.match(image_id)
    if match is None:
        raise BenchError(f"image id {image_id!r} does not match <carid>_<NN> (e.g. 00087a6bd4dc_01)")
    return match.group("car")


def view_of(image_id: str) -> str:
    """The view an image shows, as its two digits (``"05"`` for ``<carid>_05``)."""
    car_id(image_id)  # the same check, the same message
    return _IMAGE_ID.match(image_id).group("view")


def is_carvana(root: Path) -> bool:
    """Whether a folder looks like the Carvana layout (a train/ or train_hq/ folder)."""
    return any((root / f"train{suffix}").is_dir() for suffix in _SUFFIX.values())


def open_carvana(root: Path | str, images: ImageSet = "standard") -> DataFolder:
    """Scan and check a Carvana-layout folder; raise ``BenchError`` naming the first bad file.

    ``images``: which image folders (see the module docstring). With ``hq``, a ``test/`` folder
    without its ``test_hq/`` is an error rather than a run without test images.
    """
    root = Path(root)
    if not root.is_dir():
        raise BenchError(f"data folder {root} does not exist or is not a folder")
    if images not in _SUFFIX:
        raise BenchError(f"unknown image set {images!r}; expected 'standard' or 'hq'")
    train_name, test_name = f"train{_SUFFIX[images]}", f"test{_SUFFIX[images]}"
    chosen = "" if images == "standard" else (f"; data.images = {images!r} reads {train_name}/ and {test_name}/, "
                                              "--set data.images=standard reads train/ and test/")
    train_dir = root / train_name
    if not train_dir.is_dir():
        raise BenchError(f"data folder {root} has no {train_name}/ folder "
                         f"(expected {train_name}/<carid>_<NN>.jpg{chosen})")
    train = _scan_ids(train_dir)
    if not train:
        raise BenchError(f"{train_dir} holds no training images (expected <carid>_<NN>.jpg files)")
    test_dir = root / test_name
    if images != "standard" and not test_dir.is_dir() and (root / "test").is_dir():
        raise BenchError(f"data folder {root} has test/ but no {test_name}/ folder{chosen}")
    test = _scan_ids(test_dir) if test_dir.is_dir() else ()
    image_files = {image_id: train_dir / f"{image_id}.jpg" for image_id in train}
    sizes = {image_id: header_of(path)[0] for image_id, path in image_files.items()}
    mask_source, mask_files, rle_masks = _open_masks(root, sizes, train_dir)
    metadata = root / "metadata.csv"
    return DataFolder(
        root=root,
        layout="carvana",
        train=train,
        test=test,
        image_files=image_files,
        test_files={image_id: test_dir / f"{image_id}.jpg" for image_id in test},
        test_dir=test_dir,
        mask_source=mask_source,
        mask_files=mask_files,
        sizes=sizes,
        groups={image_id: car_id(image_id) for image_id in train},
        grouping="car id (<carid>_<NN>)",
        rle_masks=rle_masks,
        metadata=metadata if metadata.is_file() else None,
        images=images,
    )


def view_mask_areas(dataset: DataFolder, view: str, key: str = "view") -> dict[str, int]:
    """Mask area of one view (``"05"``) per car, one mask in memory at a time.

    alexander's "f04a" folds, which vladimir trained on too, rank cars by the mask of view 05 alone
    (kaggle_carvana_segmentation, albu/src/generate_folds.py:21-22). Every car must have that view:
    a car without it could not be ranked, so it is an error naming the missing image (and ``key``,
    the setting that asked for the view). Views are Carvana's: another layout is one line.
    """
    if dataset.layout != "carvana":
        raise BenchError(f"{key} = {view!r}: views are Carvana's (<carid>_<NN>.jpg), and {dataset.root} is in the "
                         f"{dataset.layout} layout; --set folds.method=rank_by_area balances its groups by mask area")
    train_dir = dataset.image_path(dataset.train[0]).parent
    images = {car_id(image_id): image_id for image_id in dataset.train if view_of(image_id) == view}
    if not images:
        present = sorted({view_of(image_id) for image_id in dataset.train})
        raise BenchError(f"{key} = {view!r}: no training image in {train_dir} is view {view} "
                         f"(<carid>_{view}.jpg); the views there are {', '.join(present)}")
    missing = sorted({car_id(image_id) for image_id in dataset.train} - set(images))
    if missing:
        more = f" (and {len(missing) - 1} more cars)" if len(missing) > 1 else ""
        image = train_dir / f"{missing[0]}_{view}.jpg"
        raise BenchError(f"{key} = {view!r}: car {missing[0]} has no view {view}, {image} is missing{more}; "
                         f"ranking cars by one view needs it for every car")
    return {car: mask_area(dataset, image_id) for car, image_id in sorted(images.items())}


def _scan_ids(folder: Path) -> tuple[str, ...]:
    """Sorted ids of the ``.jpg`` files in a folder; a badly named jpg is an error, not skipped."""
    ids = sorted(path.stem for path in folder.iterdir() if path.suffix == ".jpg")
    for image_id in ids:
        if _IMAGE_ID.match(image_id) is None:
            raise BenchError(
                f"image {folder / (image_id + '.jpg')} is not named <carid>_<NN>.jpg "
                "(e.g. 00087a6bd4dc_01.jpg)"
            )
    return tuple(ids)


def _open_masks(root: Path, sizes: dict[str, tuple[int, int]],
                image_dir: Path) -> tuple[MaskSource, dict[str, Path], dict[str, str]]:
    """The gif folder wins when both exist: it is what the competition shipped as ground truth."""
    if (root / "train_masks").is_dir():
        return "gif", _check_gif_masks(root / "train_masks", sizes, image_dir), {}
    csv_path = root / "train_masks.csv"
    if csv_path.is_file():
        return "csv", {}, _load_rle_csv(csv_path, sizes)
    raise BenchError(f"data folder {root} has neither a train_masks/ folder nor train_masks.csv")


def _check_gif_masks(mask_dir: Path, sizes: dict[str, tuple[int, int]], image_dir: Path) -> dict[str, Path]:
    """Every training image needs a readable mask of exactly its size; returns their paths."""
    paths = {}
    for image_id, image_size in sizes.items():
        path = paths[image_id] = mask_dir / f"{image_id}_mask.gif"
        if not path.is_file():
            raise BenchError(f"image {image_dir / (image_id + '.jpg')} has no mask: {path} is missing")
        mask_size = header_of(path)[0]
        if mask_size != image_size:
            raise BenchError(f"mask {path} is {wxh(mask_size)} but its image {image_id}.jpg is {wxh(image_size)}")
    return paths


def _load_rle_csv(path: Path, sizes: dict[str, tuple[int, int]]) -> dict[str, str]:
    """The RLE string of every training image, each checked against its image's size.

    Strings, not decoded masks: 5088 strings are tens of megabytes, 5088 masks would be 12 GB.
    """
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise BenchError(f"cannot parse {path} as csv: {error}".replace("\n", " ")) from error
    missing = [column for column in _CSV_COLUMNS if column not in table.columns]
    if missing:
        raise BenchError(
            f"{path} lacks column(s) {', '.join(missing)}; expected header 'img,rle_mask', "
            f"found {','.join(map(str, table.columns))!r}"
        )
    masks = _rows_by_id(path, zip(table["img"], table["rle_mask"]))
    for image_id, image_size in sizes.items():
        if image_id not in masks:
            raise BenchError(f"image {image_id}.jpg has no mask: no row img={image_id}.jpg in {path}")
        _check_rle(path, image_id, masks[image_id], image_size)
    return masks


def _rows_by_id(path: Path, rows: Iterable[tuple[str, str]]) -> dict[str, str]:
    masks: dict[str, str] = {}
    for img, rle_mask in rows:
        image_id = img.removesuffix(".jpg")
        if image_id in masks:
            raise BenchError(f"{path} has two rows for img={img}")
        masks[image_id] = rle_mask
    return masks


def _check_rle(path: Path, image_id: str, text: str, size: tuple[int, int]) -> None:
    """Validate runs the way ``rle.decode`` does, without allocating the full-size mask."""
    height, width = size
    try:
        numbers = rle.values(text)
        if numbers.size % 2:
            raise ValueError("odd number of values (expected start/length pairs)")
        starts, lengths = numbers[0::2] - 1, numbers[1::2]
        if numbers.size and (starts.min() < 0 or lengths.min() < 1
                             or (starts + lengths).max() > height * width):
            raise ValueError(f"a run lies outside the {width}x{height} image")
        if np.any(starts[1:] < (starts + lengths)[:-1]):
            raise ValueError("runs are not sorted and non-overlapping")
    except ValueError as error:
        raise BenchError(f"malformed rle_mask in {path} for img={image_id}.jpg: {error}") from error
