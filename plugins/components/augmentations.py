"""Augmentations and preprocessors of the three Carvana recipes (albumentations 2.0).

Factories for ``bench_augmentations`` (random, training only) and ``bench_preprocessors``
(deterministic, every split). Each returns an albumentations transform applied to ``image``
(uint8 HxWx3 RGB) and ``mask`` (uint8 HxW, 0/1; float32 in [0, 1] with the recipe's
``input.mask_interpolation = "linear"``) together.

Most are albumentations built-ins under the recipes' parameter names. Two are custom because
albumentations has nothing equivalent: ``car_hsv_or_gray`` recolours only the car's pixels, so it
must read the mask (no built-in colour transform is mask-conditioned), and ``clahe`` equalises the
Y channel of YUV (``A.CLAHE`` works on the L channel of LAB).
"""

from __future__ import annotations

from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.pixel.functional import shift_hsv

_BORDER_MODES = {"constant": cv2.BORDER_CONSTANT, "reflect": cv2.BORDER_REFLECT_101}


def _check_probability(p: float) -> None:
    if not 0 <= p <= 1:
        raise ValueError(f"p must be a probability in [0, 1], got {p}")


def _check_non_negative(**limits: float) -> None:
    for name, value in limits.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0 (a symmetric limit), got {value}")


def hflip(*, p: float = 0.5) -> A.BasicTransform:
    """Horizontal flip of image and mask: a mirrored car is still a car (all three recipes)."""
    _check_probability(p)
    return A.HorizontalFlip(p=p)


def shift_scale_rotate(
    *,
    shift: float = 0.0625,
    scale: tuple[float, float] = (0.9, 1.1),
    rotate: float = 5.0,
    border: Literal["constant", "reflect"] = "reflect",
    p: float = 0.75,
) -> A.BasicTransform:
    """Random shift (fraction of the size, per axis), isotropic scale factor and rotation (degrees).

    Defaults are alexander's (0.0625, x0.9-1.1, 5 deg, p=0.75); artsiom's is ``scale = [0.91, 1.21]``,
    ``rotate = 10``. ``reflect`` (OpenCV's REFLECT_101, as both originals used) fills the uncovered
    corners with plausible studio background; ``constant`` fills them with zeros. The mask is
    resampled with nearest neighbour, so it stays in {0, 1}, unless the recipe says
    ``input.mask_interpolation = "linear"``: then it is a float mask resampled bilinearly, with soft
    values along the edges, as alexander's ``cv2.warpPerspective(mask, ..., INTER_LINEAR,
    BORDER_REFLECT_101)`` (``albu/src/transforms.py:229-231``). The border mode applies to the mask
    too (a reflected car is labelled car).
    """
    _check_probability(p)
    _check_non_negative(shift=shift, rotate=rotate)
    if not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale must be a range [low, high] with 0 < low <= high, got {scale}")
    return A.Affine(
        translate_percent={"x": (-shift, shift), "y": (-shift, shift)},
        scale=scale,
        keep_ratio=True,
        rotate=(-rotate, rotate),
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        border_mode=_BORDER_MODES[border],
        fill=0,
        fill_mask=0,
        p=p,
    )


def _color_jitter(
    *,
    brightness: tuple[float, float] = (1.0, 1.0),
    contrast: tuple[float, float] = (1.0, 1.0),
    saturation: tuple[float, float] = (1.0, 1.0),
    p: float,
) -> A.BasicTransform:
    """One torchvision-style jitter; factors of exactly 1 (and hue 0) are skipped by albumentations."""
    _check_probability(p)
    return A.ColorJitter(
        brightness=brightness, contrast=contrast, saturation=saturation, hue=(0.0, 0.0), p=p
    )


def brightness(*, factor: tuple[float, float] = (0.9, 1.1), p: float = 0.5) -> A.BasicTransform:
    """Multiply all pixels by a factor drawn from ``factor`` (alexander: x[0.9, 1.1], p=0.5)."""
    if not 0 <= factor[0] <= factor[1]:
        raise ValueError(f"factor must be a range [low, high] with 0 <= low <= high, got {factor}")
    return _color_jitter(brightness=factor, p=p)


def contrast(*, limit: float = 0.5, p: float = 0.5) -> A.BasicTransform:
    """Scale the distance to the mean grey level by ``1 ± limit`` (artsiom: ±0.5, p=0.5)."""
    _check_non_negative(limit=limit)
    return _color_jitter(contrast=(max(0.0, 1 - limit), 1 + limit), p=p)


def saturation(*, limit: float = 0.3, p: float = 0.5) -> A.BasicTransform:
    """Blend with the grey image by ``1 ± limit`` (artsiom: ±0.3, p=0.5)."""
    _check_non_negative(limit=limit)
    return _color_jitter(saturation=(max(0.0, 1 - limit), 1 + limit), p=p)


def hsv(
    *, hue_shift: float = 10.0, sat_shift: float = 25.0, val_shift: float = 25.0, p: float = 0.5
) -> A.BasicTransform:
    """Additive HSV shifts in OpenCV uint8 units (hue 0-179, wrapping; sat and val 0-255, clipped).

    Defaults are alexander's (hue ±10, sat ±25, val ±25, p=0.5). The originals used ``cv2.add``,
    which clips the hue instead of wrapping it; wrapping is the correct rotation of the hue circle.
    """
    _check_probability(p)
    _check_non_negative(hue_shift=hue_shift, sat_shift=sat_shift, val_shift=val_shift)
    return A.HueSaturationValue(
        hue_shift_limit=(-hue_shift, hue_shift),
        sat_shift_limit=(-sat_shift, sat_shift),
        val_shift_limit=(-val_shift, val_shift),
        p=p,
    )


def grayscale(*, p: float = 0.25) -> A.BasicTransform:
    """Whole image to grey, kept 3-channel (artsiom: p=0.25), so colour is not a cue for 'car'."""
    _check_probability(p)
    return A.ToGray(num_output_channels=3, method="weighted_average", p=p)


class CarHsvOrGray(A.DualTransform):
    """vladimir's recolouring: either an HSV shift or greyscale, on the car's pixels only.

    A ``DualTransform`` because it reads the mask (``get_params_dependent_on_data``); the mask itself
    passes through unchanged. Recolouring only the car teaches that a car of any paint is a car while
    the studio background, identical in every photo, stays what it is.
    """

    def __init__(
        self,
        hue_shift: float,
        sat_shift: float,
        val_shift: float,
        gray_probability: float,
        hsv_on_car_only: bool,
        p: float,
    ) -> None:
        super().__init__(p=p)
        self.hue_shift = hue_shift
        self.sat_shift = sat_shift
        self.val_shift = val_shift
        self.gray_probability = gray_probability
        self.hsv_on_car_only = hsv_on_car_only

    def get_params(self) -> dict[str, Any]:
        return {
            "to_gray": self.py_random.random() < self.gray_probability,
            "hue": self.py_random.uniform(-self.hue_shift, self.hue_shift),
            "sat": self.py_random.uniform(-self.sat_shift, self.sat_shift),
            "val": self.py_random.uniform(-self.val_shift, self.val_shift),
        }

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        if "mask" not in data:
            raise ValueError(f"{type(self).__name__} needs the mask: call it with mask=...")
        return {"car": np.asarray(data["mask"]).reshape(data["image"].shape[:2]) > 0}

    def apply(
        self,
        img: np.ndarray,
        to_gray: bool,
        hue: float,
        sat: float,
        val: float,
        car: np.ndarray,
        **params: Any,
    ) -> np.ndarray:
        if to_gray:
            recoloured = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        else:
            recoloured = shift_hsv(img, hue, sat, val)
            if not self.hsv_on_car_only:
                return recoloured
        return np.where(car[..., None], recoloured, img)

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        return mask

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("hue_shift", "sat_shift", "val_shift", "gray_probability", "hsv_on_car_only")


def car_hsv_or_gray(
    *,
    hue_shift: float = 50.0,
    sat_shift: float = 5.0,
    val_shift: float = 15.0,
    gray_probability: float = 0.5,
    hsv_on_car_only: bool = True,
    p: float = 0.5,
) -> A.BasicTransform:
    """vladimir's: with probability ``p``, greyscale (``gray_probability``) or an HSV shift of the car.

    Shifts are symmetric limits in OpenCV units, as in ``hsv``. vladimir's code shifted HSV over the
    whole image and greyed only the car; ``hsv_on_car_only = false`` reproduces that exactly.
    """
    _check_probability(p)
    _check_probability(gray_probability)
    _check_non_negative(hue_shift=hue_shift, sat_shift=sat_shift, val_shift=val_shift)
    return CarHsvOrGray(hue_shift, sat_shift, val_shift, gray_probability, hsv_on_car_only, p)


class YuvClahe(A.ImageOnlyTransform):
    """CLAHE on the Y channel of YUV; colour (U, V) untouched. Always applied (p=1).

    alexander's preprocessing: it evens out the studio lighting and brings out dark cars' edges
    against dark shadows. Deterministic, so the same transform serves train, validation and test.
    """

    def __init__(self, clip_limit: float, tile_grid_size: tuple[int, int]) -> None:
        super().__init__(p=1.0)
        self.clip_limit = clip_limit
        self.tile_grid_size = tuple(tile_grid_size)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        # A CLAHE object is cheap to build and does not pickle (DataLoader workers): build per call.
        equalizer = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=self.tile_grid_size)
        yuv = cv2.cvtColor(img, cv2.COLOR_RGB2YUV)
        yuv[..., 0] = equalizer.apply(np.ascontiguousarray(yuv[..., 0]))
        return cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("clip_limit", "tile_grid_size")


def clahe(*, clip_limit: float = 2.0, tile_grid_size: tuple[int, int] = (8, 8)) -> A.BasicTransform:
    """alexander's CLAHE preprocessor (clip 2.0, 8x8 tiles, Y of YUV), used at train and test time."""
    if clip_limit <= 0:
        raise ValueError(f"clip_limit must be positive, got {clip_limit}")
    if min(tile_grid_size) < 1:
        raise ValueError(f"tile_grid_size must be positive, got {tile_grid_size}")
    return YuvClahe(clip_limit, tile_grid_size)
