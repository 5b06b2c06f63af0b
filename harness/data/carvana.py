"""Read a data folder in the Kaggle Carvana layout, as is, without loading it into memory.

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

``open_carvana`` checks the whole training set up front (names, a mask for every image, image and
mask sizes from the file headers, every RLE row), so a broken folder fails in a second with one line
naming the file, not hours later in the middle of fold 3. Pixels are decoded only on demand.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from harness.data import rle
from harness.data.image_files import decode_image
from harness.errors import BenchError

MaskSource = Literal["gif", "csv"]
Split = Literal["train", "test"]
ImageSet = Literal["standard", "hq"]
_SUFFIX: dict[str, str] = {"standard": "", "hq": "_hq"}  # the image folders are train<suffix>, test<suffix>

_IMAGE_ID = re.compile(r"^(?P<car>.+)_(?P<view>\d{2})$")
_CSV_COLUMNS = ("img", "rle_mask")


@dataclass(frozen=True)
class CarvanaSet:
    """A checked Carvana-layout folder: ids and where their masks come from, never pixels.

    ``sizes`` holds (height, width) per training id, read from the headers at open time, because
    an RLE string can only be decoded with its image's size. ``rle_masks`` is empty unless the
    masks come from ``train_masks.csv``.
    """

    root: Path
    train: tuple[str, ...]
    test: tuple[str, ...]
    mask_source: MaskSource
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)
    rle_masks: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    metadata: Path | None = None
    images: ImageSet = "standard"

    def image_dir(self, split: Split) -> Path:
        """The folder of a split's images: ``train/`` or ``test/``, or ``train_hq/`` or ``test_hq/``."""
        if split not in ("train", "test"):
            raise BenchError(f"unknown split {split!r}; expected 'train' or 'test'")
        return self.root / f"{split}{_SUFFIX[self.images]}"

    def __repr__(self) -> str:
        # The default repr would print 100,064 test ids.
        return (
            f"CarvanaSet(root={str(self.root)!r}, train={len(self.train)} images, "
            f"test={len(self.test)} images, mask_source={self.mask_source!r}, images={self.images!r})"
        )


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


def car_ids(dataset: CarvanaSet) -> list[str]:
    """Sorted distinct car ids of the training set; folds are made over these, never over images."""
    return sorted({car_id(image_id) for image_id in dataset.train})


def open_carvana(root: Path | str, images: ImageSet = "standard") -> CarvanaSet:
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
    sizes = {image_id: _header_size(train_dir / f"{image_id}.jpg") for image_id in train}
    mask_source, rle_masks = _open_masks(root, sizes, train_dir)
    metadata = root / "metadata.csv"
    return CarvanaSet(
        root=root,
        train=train,
        test=test,
        mask_source=mask_source,
        sizes=sizes,
        rle_masks=rle_masks,
        metadata=metadata if metadata.is_file() else None,
        images=images,
    )


def read_image(dataset: CarvanaSet, image_id: str, split: Split = "train") -> np.ndarray:
    """Decode one image as a uint8 HxWx3 RGB array."""
    path = _image_path(dataset, image_id, split)
    image = decode_image(path)  # the decoder of bench predict too: the same pixels in training and at test time
    if image is None:
        raise BenchError(f"cannot decode image {path} (missing, truncated or not an image file)")
    return image


def read_mask(dataset: CarvanaSet, image_id: str) -> np.ndarray:
    """Decode one training mask as a uint8 HxW array of 0/1 (any non-zero pixel counts as car)."""
    if dataset.mask_source == "csv":
        return rle.decode(_rle_of(dataset, image_id), dataset.sizes[image_id])
    path = _gif_path(dataset.root / "train_masks", image_id)
    try:
        with Image.open(path) as mask:
            # Palette ("P") indices are the labels; anything else is reduced to one channel first.
            pixels = np.asarray(mask if mask.mode in ("P", "L", "1") else mask.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise BenchError(f"cannot decode mask {path}: {error}") from error
    return (pixels != 0).view(np.uint8)


def mask_area(dataset: CarvanaSet, image_id: str) -> int:
    """Number of car pixels in one training mask; from the csv this sums run lengths, no decoding."""
    if dataset.mask_source == "csv":
        return int(_run_lengths(_rle_of(dataset, image_id)).sum())
    return int(np.count_nonzero(read_mask(dataset, image_id)))


DATA_HASH_VERSION = "segbench data v1"  # changes only if what is hashed changes


def data_hash(dataset: CarvanaSet) -> str:
    """sha256 (hex) of the labelled data a run is scored on: every training image id, its size, and
    its mask as stored (the gif file's bytes, or the ``train_masks.csv`` row with its spaces
    normalised), in id order, with the mask source.

    Runs with equal data hashes scored the same images against the same masks, so their per-image
    Dice pair image by image whatever their folds (``harness.runs.folder.data_groups``). The images
    themselves are not hashed: they are the input, which a recipe may choose (``data.images = "hq"``
    reads other JPEGs of the same cars), not the labels a run is scored against; neither are the
    folder's path nor its test images (``bench ensemble`` checks those image by image).

    Why the stored bytes rather than the decoded masks or their areas: reading 5,088 Carvana gifs
    (about 30 MB) takes well under a second once cached, a few seconds from disk, while decoding
    them is 12 GB of pixels (5 ms a mask to decode, about a minute with the hashing), and areas
    alone would miss a mask redrawn with the same number of pixels. The price is strictness: the same masks
    stored as gifs and as csv, or re-encoded, hash differently, and runs on them are refused as on
    different data, never wrongly merged.
    """
    digest = hashlib.sha256(f"{DATA_HASH_VERSION} {dataset.mask_source}\n".encode())
    mask_dir = dataset.root / "train_masks"
    for image_id in sorted(dataset.train):
        if dataset.mask_source == "csv":
            stored = " ".join(_rle_of(dataset, image_id).split()).encode()
        else:
            path = _gif_path(mask_dir, image_id)
            try:
                stored = path.read_bytes()
            except OSError as error:
                raise BenchError(f"cannot read mask {path}: {error}") from None
        height, width = dataset.sizes[image_id]
        digest.update(f"{image_id} {height} {width} {len(stored)}\n".encode())
        digest.update(stored)
    return digest.hexdigest()


def car_mask_areas(dataset: CarvanaSet) -> dict[str, int]:
    """Total mask area per car over all its views, one mask in memory at a time.

    This is what area-balanced folds are made from.
    """
    areas: dict[str, int] = {}
    for image_id in dataset.train:
        car = car_id(image_id)
        areas[car] = areas.get(car, 0) + mask_area(dataset, image_id)
    return areas


def view_mask_areas(dataset: CarvanaSet, view: str, key: str = "view") -> dict[str, int]:
    """Mask area of one view (``"05"``) per car, one mask in memory at a time.

    alexander's "f04a" folds, which vladimir trained on too, rank cars by the mask of view 05 alone
    (kaggle_carvana_segmentation, albu/src/generate_folds.py:21-22). Every car must have that view:
    a car without it could not be ranked, so it is an error naming the missing image (and ``key``,
    the setting that asked for the view).
    """
    images = {car_id(image_id): image_id for image_id in dataset.train if view_of(image_id) == view}
    if not images:
        present = sorted({view_of(image_id) for image_id in dataset.train})
        raise BenchError(f"{key} = {view!r}: no training image in {dataset.image_dir('train')} is view {view} "
                         f"(<carid>_{view}.jpg); the views there are {', '.join(present)}")
    missing = [car for car in car_ids(dataset) if car not in images]
    if missing:
        more = f" (and {len(missing) - 1} more cars)" if len(missing) > 1 else ""
        image = dataset.image_dir("train") / f"{missing[0]}_{view}.jpg"
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


def _header_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header only: about 30 us a file, so 5088 images take ~0.2 s."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError as error:
        raise BenchError(f"file {path} does not exist") from error
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise BenchError(f"cannot read image {path}: not a readable image file ({error})") from error
    return height, width


def _open_masks(root: Path, sizes: dict[str, tuple[int, int]],
                image_dir: Path) -> tuple[MaskSource, dict[str, str]]:
    """The gif folder wins when both exist: it is what the competition shipped as ground truth."""
    if (root / "train_masks").is_dir():
        _check_gif_masks(root / "train_masks", sizes, image_dir)
        return "gif", {}
    csv_path = root / "train_masks.csv"
    if csv_path.is_file():
        return "csv", _load_rle_csv(csv_path, sizes)
    raise BenchError(f"data folder {root} has neither a train_masks/ folder nor train_masks.csv")


def _gif_path(mask_dir: Path, image_id: str) -> Path:
    return mask_dir / f"{image_id}_mask.gif"


def _check_gif_masks(mask_dir: Path, sizes: dict[str, tuple[int, int]], image_dir: Path) -> None:
    """Every training image needs a readable mask of exactly its size."""
    for image_id, image_size in sizes.items():
        path = _gif_path(mask_dir, image_id)
        if not path.is_file():
            raise BenchError(f"image {image_dir / (image_id + '.jpg')} has no mask: {path} is missing")
        mask_size = _header_size(path)
        if mask_size != image_size:
            raise BenchError(
                f"mask {path} is {_wxh(mask_size)} but its image {image_id}.jpg is {_wxh(image_size)}"
            )


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
        numbers = _rle_numbers(text)
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


def _rle_numbers(text: str) -> np.ndarray:
    return np.array(text.split(), dtype=np.int64) if text.strip() else np.empty(0, dtype=np.int64)


def _run_lengths(text: str) -> np.ndarray:
    return _rle_numbers(text)[1::2]


def _rle_of(dataset: CarvanaSet, image_id: str) -> str:
    try:
        return dataset.rle_masks[image_id]
    except KeyError:
        raise BenchError(f"no training mask for image id {image_id!r} in {dataset.root}") from None


def _image_path(dataset: CarvanaSet, image_id: str, split: Split) -> Path:
    return dataset.image_dir(split) / f"{image_id}.jpg"


def _wxh(size: tuple[int, int]) -> str:
    height, width = size
    return f"{width}x{height}"
