"""Fitting images to the network's input and predictions back to the image's own size.

The networks need sides that are multiples of 32; Carvana's 1918 is not. Two ways, as the seed
teams did: pad (reflect or zero) to a multiple of 32 and crop back, or resize to a fixed input and
upsample the logits bilinearly back (artsiom). A third resizes each image by its short side, or by
a factor chosen from the size of the objects in the masks (``harness.engine.choices``). Training and
prediction use these same functions, so a model never sees a different geometry at test time than
it trained on (a training crop, ``crop_shape``, is a window of the same fitted input).

Padding is centred by default (``input.pad_side = "centre"``: vladimir's 1 px left and 1 px right,
1918 -> 1920) or all on the right and bottom (``"right"``: alexander pasted the image into the
top-left corner of a 1280x1920 array of zeros, ``albu/src/dataset/abstract_dataset.py:13-19``, and
cropped ``[:1280, :1918]`` back, ``albu/src/carvana_eval.py:37``); ``restore`` crops the same pixels
away. A mask is padded with the image's mode, so that reflected car pixels are labelled as car
(zero-padding pads the mask with 0, as the image with black).

Resizing is bilinear for the image (OpenCV). A mask is resized with nearest neighbour, so it stays
in {0, 1}, or bilinearly with ``input.mask_interpolation = "linear"`` (a float mask: soft targets in
[0, 1] along the edges). Logits go back to the image's size bilinearly with torch, by default with
``align_corners=False``; ``input.align_corners = true`` is PyTorch 0.2's ``F.upsample`` (artsiom,
``asanakoy/generate_sub.py:49``, which predates the flag and behaved as ``align_corners=True``).
Only that upsampling follows the flag: the input's resize is OpenCV's, which has no such flag (it
aligns pixel centres, as ``align_corners=False`` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F

MULTIPLE = 32
CV2_BORDERS = {"reflect": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT}
CV2_INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR}


@dataclass(frozen=True)
class Fit:
    """How an image of any size becomes a network input (see the module docstring)."""

    mode: Literal["pad", "resize"]
    size: tuple[int, int] | None  # (width, height) of the network input; None: the image's own
    pad_mode: Literal["reflect", "constant"] = "constant"
    short_side: int | None = None  # resize: the image scaled so its short side is about this
    scale: float | None = None  # resize: the image scaled by this factor (input.size = "objects")
    pad_side: Literal["centre", "right"] = "centre"  # pad: split evenly, or all on the right and bottom
    mask_interpolation: Literal["nearest", "linear"] = "nearest"  # resize: how a mask is resampled
    align_corners: bool = False  # resize: of the bilinear upsampling of logits in ``restore``

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) the network sees for an image of this size."""
        if self.size is not None:
            return self.size[1], self.size[0]
        if self.short_side is not None or self.scale is not None:
            scale = self.scale if self.scale is not None else self.short_side / min(height, width)
            return _round_nearest(height * scale), _round_nearest(width * scale)
        return _round_up(height), _round_up(width)

    def check(self, height: int, width: int) -> str | None:
        """Why this fit cannot take an image of this size, or None."""
        if self.size is None:
            return None
        fit_w, fit_h = self.size
        if fit_w % MULTIPLE or fit_h % MULTIPLE:
            return f"input.size {fit_w}x{fit_h} is not a multiple of {MULTIPLE} on both sides"
        if self.mode == "pad" and (fit_w < width or fit_h < height):
            return f"input.size {fit_w}x{fit_h} is smaller than the {width}x{height} images; use fit = 'resize'"
        return None

    def array(self, image: np.ndarray, is_mask: bool = False) -> np.ndarray:
        """Fit an HxW(xC) array (uint8; a mask uint8 0/1, or float32 in [0, 1]) to the network input."""
        height, width = image.shape[:2]
        target_h, target_w = self.input_shape(height, width)
        if self.mode == "resize":
            interpolation = CV2_INTERPOLATIONS[self.mask_interpolation if is_mask else "linear"]
            return cv2.resize(image, (target_w, target_h), interpolation=interpolation)
        top, bottom, left, right = _pads(height, width, target_h, target_w, self.pad_side)
        if not (top or bottom or left or right):
            return image
        return cv2.copyMakeBorder(image, top, bottom, left, right, CV2_BORDERS[self.pad_mode], value=0)

    def restore(self, logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Logits ``(N, C, h, w)`` of fitted inputs, back at the original ``height`` x ``width``."""
        if self.mode == "resize":
            if logits.shape[-2:] == (height, width):
                return logits
            return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=self.align_corners)
        top, _, left, _ = _pads(height, width, logits.shape[-2], logits.shape[-1], self.pad_side)
        return logits[..., top : top + height, left : left + width]


def _round_up(side: int) -> int:
    return -(-side // MULTIPLE) * MULTIPLE


def _round_nearest(side: float) -> int:
    return max(MULTIPLE, round(side / MULTIPLE) * MULTIPLE)


def _pads(height: int, width: int, target_h: int, target_w: int, side: str = "centre") -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding; centred puts the odd pixel at the bottom or right."""
    if side == "right":
        return 0, target_h - height, 0, target_w - width
    top, left = (target_h - height) // 2, (target_w - width) // 2
    return top, target_h - height - top, left, target_w - width - left


def crop_shape(crop: tuple[int, int] | None, height: int, width: int) -> tuple[int, int]:
    """(height, width) of a training crop ``crop`` = (width, height) of an input of this shape: the
    crop, cut down to the input where the input is smaller; the input itself without a crop."""
    if crop is None:
        return height, width
    return min(crop[1], height), min(crop[0], width)
