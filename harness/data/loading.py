"""From a data folder to batches: decoding, the decoded-image cache, augmentation, fitting.

Three decisions shape this module:

* **Decode once.** Decoding a 1918x1280 JPEG costs about 7 ms; when the decoded, preprocessed set
  fits the cache budget it is decoded once per run into one array, which DataLoader workers share
  copy-on-write (no pickling, no copy per worker). Otherwise each sample is decoded on demand.
* **Deterministic augmentation.** A sample is addressed by ``(draw, index)``, ``draw`` being the
  pass over the data (the epoch, unless epochs have a fixed length), and its augmentation is
  seeded from ``(seed, draw, index)``, so what a model sees does not depend on the number of
  workers or on which worker ran first, and a resumed run repeats the interrupted one exactly.
* **uint8 to the device.** Samples stay uint8 (4x less to copy; only a soft training mask is float32);
  the engine converts, normalises and orders the channels on the device (``Normalise``), where that
  is nearly free.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import albumentations as A
import numpy as np
import torch
from PIL import Image

from harness.data.dataset import DataFolder, read_image, read_mask
from harness.data.geometry import Fit, crop_shape
from harness.data.image_files import to_chw
from harness.errors import BenchError

CROP_STREAM = 1  # seeds a sample's crop apart from its augmentation
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# input.normalize -> (mean, std) per RGB channel, on the 0..1 scale; "none" has always meant x / 255
NORMALISATIONS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "scale": ((0.0,) * 3, (1.0,) * 3),
    "none": ((0.0,) * 3, (1.0,) * 3),
}


def sample_seed(*parts: int) -> int:
    """A 32-bit seed from integers; stable across processes and Python versions (unlike hash())."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


class Images:
    """Decoded, preprocessed training images and masks of a set of ids, cached when they fit."""

    def __init__(
        self, dataset: DataFolder, ids: Sequence[str], preprocess: A.Compose | None, cache_bytes: int
    ):
        self.dataset, self.ids, self.preprocess = dataset, list(ids), preprocess
        self._images: list[np.ndarray] | None = None
        self._masks: list[np.ndarray] | None = None
        needed = sum(h * w * 4 for h, w in (dataset.sizes[i] for i in self.ids))  # RGB + mask
        if needed <= cache_bytes:
            with ThreadPoolExecutor(max_workers=4) as pool:  # cv2 and PIL decode outside the GIL
                pairs = list(pool.map(self._decode, self.ids))
            self._images = [image for image, _ in pairs]
            self._masks = [mask for _, mask in pairs]

    @property
    def cached(self) -> bool:
        return self._images is not None

    def _decode(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        image, mask = read_image(self.dataset, image_id), read_mask(self.dataset, image_id)
        if self.preprocess is not None:
            image = self.preprocess(image=image)["image"]
        return image, mask

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._images is not None:
            return self._images[index], self._masks[index]
        return self._decode(self.ids[index])


class PhasedAugment:
    """The augmentation of each epoch: ``(first epoch, transforms or None)`` pairs of a recipe's phases.

    Samples look it up by the epoch their key carries, so loader workers that persist across epochs
    switch with the main process, and a run resumed inside a later phase augments as it would have.
    """

    def __init__(self, phases: Sequence[tuple[int, A.Compose | None]]):
        self.phases = sorted(phases, key=lambda phase: phase[0])

    def at(self, epoch: int) -> A.Compose | None:
        return [augment for start, augment in self.phases if start <= epoch][-1]


class TrainingSamples(torch.utils.data.Dataset):
    """Augmented, fitted (image, mask) pairs addressed by ``(epoch, draw, i)`` (``EpochSampler``); see the
    module docstring.

    The mask is uint8 0/1, or, with ``input.mask_interpolation = "linear"`` (``fit.mask_interpolation``),
    float32 in [0, 1]: a float mask is what linear resampling turns into soft edges (a uint8 0/1 one
    would round back to 0/1). alexander warped a uint8 0/255 mask (``albu/src/transforms.py:229-231``)
    and divided by 255 (``albu/src/dataset/neural_dataset.py:37``): the same targets up to his rounding
    to uint8 (at most 1/510).
    """

    def __init__(self, images: Images, indices: Sequence[int], augment: PhasedAugment | A.Compose | None, fit: Fit,
                 seed: int, augment_on_input: bool = False, crop: tuple[int, int] | None = None):
        self.images, self.indices, self.fit, self.seed = images, list(indices), fit, seed
        self.augment = augment if isinstance(augment, PhasedAugment) else PhasedAugment([(0, augment)])
        self.augment_on_input = augment_on_input  # input.augment_on: after the fit instead of before it
        self.crop = crop  # input.crop: (width, height) of a random window of the fitted sample, or None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, draw, position = key
        index = self.indices[position]
        image, mask = self.images[index]
        if self.fit.mask_interpolation == "linear":  # soft targets: a float mask, which resampling blends
            mask = mask.astype(np.float32)
        augment = self.augment.at(epoch)
        if self.augment_on_input:
            image, mask = self.fit.array(image), self.fit.array(mask, is_mask=True)
        if augment is not None:
            augment.set_random_seed(sample_seed(self.seed, draw, index))
            out = augment(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        if not self.augment_on_input:
            image, mask = self.fit.array(image), self.fit.array(mask, is_mask=True)
        if self.crop is not None:
            image, mask = self._cropped(image, mask, sample_seed(self.seed, draw, index, CROP_STREAM))
        return to_chw(image), torch.from_numpy(np.ascontiguousarray(mask))[None]

    def _cropped(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """A window of ``crop`` at a uniformly drawn position, the same in image and mask. Uniform, not
        biased to the objects as nnU-Net's foreground oversampling: the sets this serves have objects
        in most windows (nuclei everywhere, a car in most of the frame)."""
        height, width = crop_shape(self.crop, *image.shape[:2])
        rng = np.random.default_rng(seed)
        top = int(rng.integers(0, image.shape[0] - height + 1))
        left = int(rng.integers(0, image.shape[1] - width + 1))
        window = (slice(top, top + height), slice(left, left + width))
        return image[window], mask[window]


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, draw, i)`` keys: position ``i`` of the shuffled pass ``draw`` over the samples.

    By default an epoch is one pass and ``draw`` is the epoch. With ``samples_per_epoch`` an epoch
    is that many samples taken from an endless stream of passes, each shuffled afresh, so a budget
    in optimizer steps costs the same on 50 images as on 5,000. Keys depend only on (seed, epoch),
    which keeps a resumed run identical; the epoch and draw travel inside the key, so loader workers
    that persist across epochs, and the augmentation chosen by the one and seeded from the other, see
    the right ones.
    """

    def __init__(self, size: int, seed: int, shuffle: bool, samples_per_epoch: int | None = None):
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0
        self.samples_per_epoch = samples_per_epoch

    def __len__(self) -> int:
        return self.samples_per_epoch or self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.samples_per_epoch is None:
            return iter([(self.epoch, self.epoch, position) for position in self._order(self.epoch)])
        start = self.epoch * self.samples_per_epoch
        draws = range(start // self.size, (start + self.samples_per_epoch - 1) // self.size + 1)
        stream = [(self.epoch, draw, position) for draw in draws for position in self._order(draw)]
        offset = start - draws[0] * self.size
        return iter(stream[offset : offset + self.samples_per_epoch])

    def _order(self, draw: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(sample_seed(self.seed, draw))
        return torch.randperm(self.size, generator=generator).tolist()


def padded_batch(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch of (image, mask) samples; samples of other shapes (a set of mixed image sizes, a
    crop larger than some inputs) are padded with zeros on the right and bottom to the batch's largest,
    the padding labelled background.

    Why padding rather than bucketing batches by shape or resizing every image to one size: bucketing
    changes which images share a batch (with many sizes, batches of one or two), resizing changes the
    scale the model learns at, which prediction would then have to repeat; padding keeps both, at the
    cost of the padded pixels' compute and of a little background that is not in the data (zeros, which
    ``input.pad_mode = "constant"`` shows at test time too). Samples of one shape are stacked as the
    default collate does, so data of one size batches exactly as before.
    """
    images, masks = zip(*samples)
    height, width = max(image.shape[-2] for image in images), max(image.shape[-1] for image in images)
    if all(image.shape[-2:] == (height, width) for image in images):
        return torch.utils.data.default_collate(samples)  # in a loader worker, straight into shared memory
    return _padded(images, height, width), _padded(masks, height, width)


def _padded(tensors: Sequence[torch.Tensor], height: int, width: int) -> torch.Tensor:
    batch = tensors[0].new_zeros((len(tensors), tensors[0].shape[0], height, width))
    for slot, tensor in zip(batch, tensors):
        slot[:, : tensor.shape[-2], : tensor.shape[-1]] = tensor
    return batch


class ShapeBatches(torch.utils.data.Sampler):
    """Batches of prediction samples that share one input shape, so that each stacks into one tensor; in
    the samples' order within a shape, so that data of one size batches exactly as a plain loader does.
    Each map is restored to its own image's size from its own input, so no padding can leak into it."""

    def __init__(self, shapes: Sequence[tuple[int, int]], batch_size: int):
        by_shape: dict[tuple[int, int], list[int]] = {}
        for index, shape in enumerate(shapes):
            by_shape.setdefault(shape, []).append(index)
        self.batches = [indices[start : start + batch_size] for indices in by_shape.values()
                        for start in range(0, len(indices), batch_size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)


class CachedImage:
    """``read(i)`` for prediction over part of an ``Images`` (picklable, for DataLoader workers)."""

    def __init__(self, images: Images, indices: Sequence[int]):
        self.images, self.indices = images, list(indices)

    def __call__(self, position: int) -> np.ndarray:
        return self.images[self.indices[position]][0]


class PredictionSamples(torch.utils.data.Dataset):
    """Fitted images for prediction with their position; the original size is looked up by it."""

    def __init__(self, read: Callable[[int], np.ndarray], size: int, fit: Fit):
        self.read, self.size, self.fit = read, size, fit

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        return to_chw(self.fit.array(self.read(position))), position


def shapes_of_test_images(dataset: DataFolder) -> dict[str, tuple[int, int]]:
    """(height, width) of every test image, from the file headers (cheap: no decoding)."""
    shapes = {}
    for image_id, path in dataset.test_files.items():
        try:
            with Image.open(path) as image:
                shapes[image_id] = (image.height, image.width)
        except OSError as error:
            raise BenchError(f"{path}: cannot read the image ({error})") from None
    return shapes


class Normalise(torch.nn.Module):
    """uint8 NCHW RGB on the device -> the model's input: float, scaled, normalised and in the channel
    order the recipe says (``input.normalize``, ``input.channels``).

    Every path into a model goes through it (training, validation, test prediction), so the order
    and scaling a model was trained with are the ones it is evaluated with. ``imagenet``:
    ``(x / 255 - mean) / std`` with ImageNet's RGB statistics; ``scale`` and ``none``: ``x / 255``.
    ``bgr`` reverses the channels after normalising, so each colour keeps its own mean and std.
    Samples stay RGB up to here: augmentations and preprocessors see the colours they were written for.

    The seed's inputs: alexander fed BGR (``cv2.imread``, ``albu/src/dataset/carvana_dataset.py:21``)
    divided by 255 and nothing else (``albu/src/dataset/neural_dataset.py:27-28``): ``bgr`` with
    ``scale``. artsiom's scratch UNet got RGB (PIL) through ``ToTensor``, i.e. x/255, and ImageNet
    statistics only for the VGG encoders (``asanakoy/data_utils.py:227,275-279``,
    ``asanakoy/run_train.py:327``, ``asanakoy/generate_sub.py:177-209``): ``scale``.
    """

    def __init__(self, how: str, channels: str = "rgb"):
        super().__init__()
        if how not in NORMALISATIONS or channels not in ("rgb", "bgr"):
            raise ValueError(f"normalisation {how!r} with channels {channels!r}: expected one of "
                             f"{', '.join(NORMALISATIONS)} with rgb or bgr")
        mean, std = (torch.tensor(stat).view(1, 3, 1, 1) * 255 for stat in NORMALISATIONS[how])
        self.bgr = channels == "bgr"
        if self.bgr:  # the channels are reversed before normalising, and each keeps its own statistics
            mean, std = mean.flip(1), std.flip(1)
        self.register_buffer("scale", 1 / std)
        self.register_buffer("shift", -mean / std)

    def forward(self, images: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format
                ) -> torch.Tensor:
        """``(x - mean) / std`` as ``x * (1 / std) - mean / std``: one pass from uint8 to float32 (a
        full-size image: 6 ms against 13 for the three passes of subtract, divide and convert, AVX512,
        one thread), equal to it within a few float32 ulps. The result is laid out as ``memory_format``
        says whatever the input's strides: uint8 planes become a channels-last input in the same
        pass, and a channels-last view a contiguous one. (Under ``torch.compile`` the functional form,
        which the compiler fuses with what follows: a given output buffer would have to be written in
        full.)"""
        images = images.flip(1) if self.bgr else images
        if torch.compiler.is_compiling():
            return torch.addcmul(self.shift, images, self.scale).contiguous(memory_format=memory_format)
        normalised = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=memory_format)
        return torch.addcmul(self.shift, images, self.scale, out=normalised)
