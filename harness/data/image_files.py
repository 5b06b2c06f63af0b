"""Image files of any folder: naming them, decoding them, and feeding them to a model one by one.

``bench predict`` takes folders, image files and lists of paths; ``bench run`` its data's test images.
Both decode here, with the training path's own decoder (``decode_image``, which
``harness.data.dataset.read_image`` uses too), so a model sees at test time the very pixels it
would have seen in training: another JPEG decoder may round its IDCT differently, and a network
tuned to the third decimal notices.

At 1918x1280 decoding is the bottleneck of prediction (about 5-8 ms an image on one core, against
a fraction of that for a batched forward pass on a GPU), so it runs in DataLoader workers
(``ImageSamples``). A file that cannot be decoded does not stop the job: its sample is a marker
carrying the reason, which the caller reports and skips.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import albumentations as A
import cv2
import numpy as np
import simplejpeg
import torch
from PIL import Image

from harness.data.geometry import Fit
from harness.errors import BenchError

# The image files segbench reads, for training (harness.data.folders) and prediction alike: what
# ``decode_image`` decodes (simplejpeg for JPEGs, OpenCV for the rest)
SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
DECODER = f"simplejpeg {simplejpeg.__version__} (JPEG), OpenCV {cv2.__version__} (others)"
_JPEG_START = b"\xff\xd8"


def decode_image(path: Path) -> np.ndarray | None:
    """An HxWx3 RGB array, or None when the file is missing, truncated or not an image. uint8, but for a
    16-bit PNG or TIFF, which stays uint16 so that its caller can refuse it (``EIGHT_BITS_ONLY``) rather
    than have OpenCV stretch it silently.

    JPEGs go through simplejpeg (libjpeg-turbo, accurate IDCT and fancy upsampling, as OpenCV's
    own libjpeg-turbo does): the same pixels as ``cv2.imread`` on every JPEG we compared (4:4:4,
    4:2:2, 4:2:0, grayscale, noise), and about a third faster at 1918x1280. What it cannot decode
    (a CMYK JPEG, a PNG) goes to OpenCV.
    """
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if data.startswith(_JPEG_START):
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError:
            pass  # not every JPEG is one libjpeg-turbo's RGB output takes; OpenCV may read it
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# Training refuses such images at open time (harness.data.folders), prediction image by image, with this line.
EIGHT_BITS_ONLY = ("a 16-bit image; segbench reads 8-bit grey or RGB images: convert it with the range "
                   "that suits the data (the same way as the training images)")


@dataclass(frozen=True)
class ImageFile:
    image_id: str  # the file's stem: the row of a submission, the name of a mask
    path: Path


def list_images(inputs: Sequence[Path]) -> list[ImageFile]:
    """The images ``inputs`` name, in order: a folder stands for the image files (``SUFFIXES``) directly
    inside it (sorted by name), a ``.txt`` file for the paths on its lines (relative ones from the
    list's own folder), and any other file for itself. Ids are file stems, so two files with one stem
    would write one output: that is one line naming both."""
    found: dict[str, ImageFile] = {}
    for path in (p for given in inputs for p in _expand(Path(given))):
        image = ImageFile(path.stem, path)
        if image.image_id in found:
            raise BenchError(f"{path} and {found[image.image_id].path} share the image id {image.image_id!r} "
                             "(ids are file names without suffix); rename one or predict them separately")
        found[image.image_id] = image
    return list(found.values())


def _expand(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted((p for p in path.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file()),
                      key=lambda p: p.name)
    if not path.is_file():
        raise BenchError(f"{path}: no such image, folder or list of images")
    if path.suffix.lower() != ".txt":
        return [path]
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise BenchError(f"{path}: cannot read the list of images ({error})") from None
    listed = [path.parent / line.strip() for line in lines if line.strip()]
    missing = next((p for p in listed if not p.is_file()), None)
    if missing is not None:
        raise BenchError(f"{path}: lists {missing}, which is not a file")
    return listed


def image_shape(path: Path) -> tuple[int, int] | None:
    """(height, width) from the file's header (cheap: no decoding), or None when it has none."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


@dataclass(frozen=True)
class Sample:
    """One image, fitted to the network input, or why it could not be (``image`` None); once predicted,
    its map in place of the image, as uint8 levels or as its output encodes them
    (``harness.engine.inference``)."""

    index: int
    image: torch.Tensor | None  # uint8 CHW (``to_chw``), fitted
    shape: tuple[int, int]  # the original (height, width)
    problem: str | None = None
    levels: np.ndarray | None = None  # uint8 (height, width)
    encoded: bytes | None = None


class ImageSamples(torch.utils.data.Dataset):
    """Decoded, preprocessed and fitted images, in DataLoader workers; batches are lists (``collate``),
    since images of other sizes fit to other input shapes."""

    def __init__(self, images: Sequence[ImageFile], preprocess: A.Compose | None, fit: Fit):
        self.images, self.preprocess, self.fit = list(images), preprocess, fit

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        image = decode_image(self.images[index].path)
        if image is None:
            return Sample(index, None, (0, 0), "cannot decode (missing, truncated or not an image file)")
        if image.dtype != np.uint8:
            return Sample(index, None, image.shape[:2], EIGHT_BITS_ONLY)
        shape = image.shape[:2]
        problem = self.fit.check(*shape)
        if problem:
            return Sample(index, None, shape, problem)
        if self.preprocess is not None:
            image = self.preprocess(image=image)["image"]
        return Sample(index, to_chw(self.fit.array(image)), shape)


def to_chw(image: np.ndarray) -> torch.Tensor:
    """An HxWxC image as a contiguous CxHxW tensor, the layout a model's input starts from (training's
    samples and prediction's alike).

    OpenCV's ``split`` into the planes of one array: 0.4 ms for a 1920x1280 image against 2.2 for
    NumPy's strided copy (``np.ascontiguousarray(image.transpose(2, 0, 1))``), AVX512, one thread.
    Planes matter past the copy: a compiled prediction reads each channel with vector loads, where
    interleaved pixels are gathered byte by byte (``harness.engine.inference``).
    """
    planes = np.empty((image.shape[2], *image.shape[:2]), image.dtype)
    cv2.split(image, list(planes))
    return torch.from_numpy(planes)


def collate(samples: list[Sample]) -> list[Sample]:
    return samples
