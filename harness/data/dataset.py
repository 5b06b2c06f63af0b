"""A data folder, read as it is: which images are labelled, where each image and mask lives, and which
group each image belongs to. Two layouts give one (``harness.data.carvana``, ``harness.data.folders``);
everything downstream (folds, loading, scoring, submissions) reads only this.

**Groups** are what folds are made of. Images of one group are near-duplicates or share a source (the
16 views of a car, the fields of one slide, the tiles of one scene, the frames of one patient's scan):
an image validated in a fold whose group trained would score what the model remembers. Carvana's
group is the car id in the file name; a folders set names its groups in a table or a pattern, or
has one group per image.

**Lazily.** Opening reads file headers only (names, sizes, modes), so a folder of 100,000 images
opens in seconds and a broken one fails at once; pixels are decoded when a sample is needed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from harness.data import rle
from harness.data.image_files import EIGHT_BITS_ONLY, decode_image
from harness.errors import BenchError

Layout = Literal["carvana", "folders"]
# gif: Carvana's train_masks/; csv: Carvana's train_masks.csv; files: a folders set's masks/ (any format)
MaskSource = Literal["gif", "csv", "files"]
ImageSet = Literal["standard", "hq"]
Split = Literal["train", "test"]


@dataclass(frozen=True)
class DataFolder:
    """A checked data folder: ids, file paths, sizes and groups, never pixels.

    ``sizes`` holds (height, width) per training id, read from the headers at open time (an RLE
    string can only be decoded with its image's size, and the fit is checked against every size).
    ``mask_files`` is empty when the masks come from Carvana's ``train_masks.csv`` (``rle_masks``).
    ``grouping`` says in words where the groups came from, for the budget line and ``bench data check``.
    """

    root: Path
    layout: Layout
    train: tuple[str, ...]
    test: tuple[str, ...]
    image_files: Mapping[str, Path] = field(repr=False)
    test_files: Mapping[str, Path] = field(repr=False)
    test_dir: Path  # where test images are, or would be
    mask_source: MaskSource
    mask_files: Mapping[str, Path] = field(default_factory=dict, compare=False, repr=False)
    sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)
    groups: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    grouping: str = "car id"
    rle_masks: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    metadata: Path | None = None
    images: ImageSet = "standard"

    def __repr__(self) -> str:
        # The default repr would print 100,064 test ids.
        return (f"DataFolder(root={str(self.root)!r}, layout={self.layout!r}, train={len(self.train)} images, "
                f"test={len(self.test)} images, mask_source={self.mask_source!r}, grouping={self.grouping!r})")

    def group_of(self, image_id: str) -> str:
        try:
            return self.groups[image_id]
        except KeyError:
            raise BenchError(f"image {image_id!r} is not a training image of {self.root}") from None

    def image_path(self, image_id: str, split: Split = "train") -> Path:
        files = self.image_files if split == "train" else self.test_files
        try:
            return files[image_id]
        except KeyError:
            raise BenchError(f"no {split} image {image_id!r} in {self.root}") from None


def group_ids(dataset: DataFolder) -> list[str]:
    """Sorted distinct groups of the training set; folds are made over these, never over images."""
    return sorted(set(dataset.groups.values()))


def read_image(dataset: DataFolder, image_id: str, split: Split = "train") -> np.ndarray:
    """Decode one image as a uint8 HxWx3 RGB array (a grey image has its value in the three channels)."""
    path = dataset.image_path(image_id, split)
    image = decode_image(path)  # the decoder of bench predict too: the same pixels in training and at test time
    if image is None:
        raise BenchError(f"cannot decode image {path} (missing, truncated or not an image file)")
    if image.dtype != np.uint8:
        raise BenchError(f"image {path}: {EIGHT_BITS_ONLY}")
    return image


def read_mask(dataset: DataFolder, image_id: str) -> np.ndarray:
    """Decode one training mask as a uint8 HxW array of 0/1.

    Carvana's palette GIFs hold 0/1 and any non-zero pixel counts as car. A folders set's masks must
    hold {0, 1} or {0, 255} (the two ways binary masks are saved): anything else is more than one class
    or an anti-aliased drawing, and guessing a threshold would train on labels nobody made, so it is
    one line naming the file and the values found.
    """
    if dataset.mask_source == "csv":
        return rle.decode(_rle_of(dataset, image_id), dataset.sizes[image_id])
    path = dataset.mask_files[image_id]
    try:
        with Image.open(path) as mask:
            # Palette ("P") indices are the labels; colour is reduced to one channel first.
            pixels = np.asarray(mask if mask.mode in ("P", "L", "1", "I", "I;16") else mask.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise BenchError(f"cannot decode mask {path}: {error}") from error
    if dataset.mask_source == "files":
        problem = mask_values_problem(pixels)
        if problem:
            raise BenchError(f"mask {path}: {problem}")
    return (pixels != 0).view(np.uint8)


def mask_values_problem(pixels: np.ndarray) -> str | None:
    """Why a mask's values are not binary ({0, 1} or {0, 255}), or None."""
    if pixels.dtype == bool:
        return None
    top = int(pixels.max()) if pixels.size else 0
    if top not in (0, 1, 255) or np.count_nonzero((pixels != 0) & (pixels != top)):
        values = np.unique(pixels)
        shown = ", ".join(map(str, values[:6])) + (", ..." if values.size > 6 else "")
        return f"values {{{shown}}}; expected {{0, 1}} or {{0, 255}} (a binary mask)"
    return None


def mask_area(dataset: DataFolder, image_id: str) -> int:
    """Number of object pixels in one training mask; from Carvana's csv this sums run lengths, no decoding."""
    if dataset.mask_source == "csv":
        return int(rle.values(_rle_of(dataset, image_id))[1::2].sum())
    return int(np.count_nonzero(read_mask(dataset, image_id)))


def group_mask_areas(dataset: DataFolder) -> dict[str, int]:
    """Total mask area per group over all its images, one mask in memory at a time.

    This is what area-balanced folds are made from.
    """
    areas: dict[str, int] = {}
    for image_id in dataset.train:
        group = dataset.group_of(image_id)
        areas[group] = areas.get(group, 0) + mask_area(dataset, image_id)
    return areas


DATA_HASH_VERSION = "segbench data v1"  # changes only if what is hashed changes


def data_hash(dataset: DataFolder) -> str:
    """sha256 (hex) of the labelled data a run is scored on: every training image id, its size, and
    its mask as stored (the mask file's bytes, or the ``train_masks.csv`` row with its spaces
    normalised), in id order, with the mask source.

    Runs with equal data hashes scored the same images against the same masks, so their per-image
    Dice pair image by image whatever their folds (``harness.runs.folder.data_groups``). The images
    themselves are not hashed: they are the input, which a recipe may choose (``data.images = "hq"``
    reads other JPEGs of the same cars), not the labels a run is scored against; neither are the
    folder's path, its groups (the splits hash covers them) nor its test images (``bench ensemble``
    checks those image by image).

    Why the stored bytes rather than the decoded masks or their areas: reading 5,088 Carvana gifs
    (about 30 MB) takes well under a second once cached, a few seconds from disk, while decoding
    them is 12 GB of pixels (5 ms a mask to decode, about a minute with the hashing), and areas
    alone would miss a mask redrawn with the same number of pixels. The price is strictness: the same
    masks stored in two formats (gif and csv, or Carvana's gifs and a folders set's PNGs), or
    re-encoded, hash differently, and runs on them are refused as on different data, never wrongly merged.
    """
    digest = hashlib.sha256(f"{DATA_HASH_VERSION} {dataset.mask_source}\n".encode())
    for image_id in sorted(dataset.train):
        if dataset.mask_source == "csv":
            stored = " ".join(_rle_of(dataset, image_id).split()).encode()
        else:
            path = dataset.mask_files[image_id]
            try:
                stored = path.read_bytes()
            except OSError as error:
                raise BenchError(f"cannot read mask {path}: {error}") from None
        height, width = dataset.sizes[image_id]
        digest.update(f"{image_id} {height} {width} {len(stored)}\n".encode())
        digest.update(stored)
    return digest.hexdigest()


def header_of(path: Path) -> tuple[tuple[int, int], str]:
    """((height, width), PIL mode) from the file header only: about 30 us a file, so 5088 images take ~0.2 s."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            return (height, width), image.mode
    except FileNotFoundError as error:
        raise BenchError(f"file {path} does not exist") from error
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise BenchError(f"cannot read image {path}: not a readable image file ({error})") from error


def wxh(size: tuple[int, int]) -> str:
    height, width = size
    return f"{width}x{height}"


def _rle_of(dataset: DataFolder, image_id: str) -> str:
    try:
        return dataset.rle_masks[image_id]
    except KeyError:
        raise BenchError(f"no training mask for image id {image_id!r} in {dataset.root}") from None
