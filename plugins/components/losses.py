"""Segmentation losses of the three Carvana recipes, as factories for ``bench_losses``.

Every factory returns ``loss(logits, target) -> scalar tensor`` with ``logits`` and ``target`` of
shape ``(N, 1, H, W)`` and ``target`` float in {0, 1}, or in [0, 1] with soft masks
(``input.mask_interpolation = "linear"``): BCE with logits and the soft Dice take soft targets as they
are, and the border band (``border_weights``) is where the pooled target is in [0.01, 0.99], soft or
not. The returned loss is a ``functools.partial``
of a module-level function, so it pickles (DataLoader workers, DDP) and its repr shows its settings.

Losses are computed in fp32 even under autocast: sums of a million sigmoid probabilities and
``log(dice)`` lose too much precision in fp16/bf16, and the border weight map needs exact 0.01/0.99
thresholds. Casting the logits is enough: none of the ops used here is down-cast by autocast.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F

from harness.api import Loss

_REDUCE_DIMS = (1, 2, 3)  # channel, height, width of an (N, 1, H, W) tensor


def soft_dice(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    per_image: bool,
    smooth: float = 1.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft Dice ``(2 sum(w p t) + s) / (sum(w p) + sum(w t) + s)``, in [0, 1].

    ``per_image`` computes one Dice per image and averages them, which is what the metric does
    (mean over images), so a small car counts as much as a big one; otherwise the whole batch is one
    pool of pixels. ``smooth`` keeps an empty mask with an empty prediction at Dice 1.
    """
    if weights is not None:
        probs_w, target_w = probs * weights, target * weights
    else:
        probs_w, target_w = probs, target
    dims = _REDUCE_DIMS if per_image else tuple(range(probs.dim()))
    intersection = (probs_w * target).sum(dims)
    denominator = probs_w.sum(dims) + target_w.sum(dims)
    return ((2 * intersection + smooth) / (denominator + smooth)).mean()


def border_weights(target: torch.Tensor, *, kernel: int, border_weight: float) -> torch.Tensor:
    """Pixel weights: ``border_weight`` where ``0.01 <= avg_pool(target, kernel) <= 0.99``, else 1.

    artsiom's recipe: the band of pixels within about ``kernel / 2`` of the mask's edge is where the
    Dice is won or lost, so it weighs 3x. ``count_include_pad=False`` makes the frame of the image
    not count as a mask edge (a car touching the bottom of the photo has no border there); the
    original zero-padded, which also weighted car pixels along the frame.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be a positive odd integer, got {kernel}")
    local_mean = F.avg_pool2d(
        target.float(), kernel, stride=1, padding=kernel // 2, count_include_pad=False
    )
    band = (local_mean >= 0.01) & (local_mean <= 0.99)
    return torch.where(band, border_weight, 1.0).to(torch.float32)


def scaled_kernel(kernel: int, height: int, reference_height: int) -> int:
    """``kernel`` rescaled from ``reference_height`` to ``height``, rounded to an odd size >= 3.

    artsiom used 41 at 1024 px and 51 at 1280 px, i.e. a band of a fixed fraction (4%) of the
    image, so the band covers the same part of the car whatever the training resolution.
    """
    size = max(3, round(kernel * height / reference_height))
    return size if size % 2 == 1 else size + 1


def _bce_dice(
    logits: torch.Tensor, target: torch.Tensor, *, per_image: bool, dice_weight: float
) -> torch.Tensor:
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    dice = soft_dice(torch.sigmoid(logits), target, per_image=per_image)
    return bce + dice_weight * (1 - dice)


def _bce_log_dice(
    logits: torch.Tensor, target: torch.Tensor, *, per_image: bool, dice_weight: float
) -> torch.Tensor:
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    dice = soft_dice(torch.sigmoid(logits), target, per_image=per_image)
    return bce - dice_weight * torch.log(dice)


def _weighted_bce_dice(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    border_weight: float,
    kernel: int,
    reference_height: int,
    dice_weight: float,
) -> torch.Tensor:
    logits, target = logits.float(), target.float()
    size = scaled_kernel(kernel, target.shape[-2], reference_height)
    weights = border_weights(target, kernel=size, border_weight=border_weight)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (per_pixel * weights).sum() / weights.sum()
    dice = soft_dice(torch.sigmoid(logits), target, per_image=True, weights=weights.square())
    return bce + dice_weight * (1 - dice)


def _top_k_bce(logits: torch.Tensor, target: torch.Tensor, *, top_k: float) -> torch.Tensor:
    per_pixel = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    flat = per_pixel.flatten()
    count = max(1, math.ceil(top_k * flat.numel()))
    return flat.topk(count, sorted=False).values.mean()


def bce_dice(*, per_image: bool = True, dice_weight: float = 1.0) -> Loss:
    """alexander's loss: ``BCE + dice_weight * (1 - soft Dice)``, Dice per image by default.

    BCE gives well-behaved per-pixel gradients early on; the Dice term optimises the metric itself.
    """
    return partial(_bce_dice, per_image=per_image, dice_weight=dice_weight)


def bce_log_dice(*, dice_weight: float = 1.0, per_image: bool = False) -> Loss:
    """vladimir's (TernausNet) loss: ``BCE - dice_weight * log(soft Dice)``.

    ``-log`` keeps pushing when Dice is already 0.99+, where ``1 - Dice`` has flattened out. TernausNet
    pooled the whole batch into one Dice, hence ``per_image=False`` by default.
    """
    return partial(_bce_log_dice, per_image=per_image, dice_weight=dice_weight)


def weighted_bce_dice(
    *,
    border_weight: float = 3.0,
    kernel: int = 41,
    reference_height: int = 1024,
    dice_weight: float = 1.0,
) -> Loss:
    """artsiom's loss: weighted BCE + ``dice_weight * (1 - weighted soft Dice)``.

    Pixels in the band around the mask edge (see ``border_weights``) weigh ``border_weight``, others 1.
    ``kernel`` is the pooling size at an input ``reference_height`` px high and is rescaled to the
    actual height (``scaled_kernel``): 41 at 1024 px gives 51 at 1280 px, as the original used. To
    pin the kernel, set ``reference_height`` to the training height. As in the original, BCE is the
    weighted mean ``sum(w * bce) / sum(w)`` and the Dice weighs each pixel by ``w ** 2``, per image.
    """
    if border_weight <= 0:
        raise ValueError(f"border_weight must be positive, got {border_weight}")
    if kernel < 1 or reference_height < 1:
        raise ValueError(
            f"kernel and reference_height must be positive, got {kernel} and {reference_height}"
        )
    return partial(
        _weighted_bce_dice,
        border_weight=border_weight,
        kernel=kernel,
        reference_height=reference_height,
        dice_weight=dice_weight,
    )


def top_k_bce(*, top_k: float = 0.1) -> Loss:
    """Pixel-level hard negative mining: BCE averaged over the ``top_k`` fraction of hardest pixels.

    A pixel-level cousin of alexander's batch replay (``plugins.components.mining``): at 0.997 Dice nearly all
    pixels are solved, and averaging over all of them drowns the few wrong ones along the edges.
    The fraction is taken over all pixels of the batch, at least one pixel.
    """
    if not 0 < top_k <= 1:
        raise ValueError(f"top_k must be a fraction in (0, 1], got {top_k}")
    return partial(_top_k_bce, top_k=top_k)
