"""Artsiom's UNet from random init: the classic Ronneberger UNet with BatchNorm.

segmentation_models_pytorch has no backbone-free UNet (every smp model wraps a classification
encoder), which is why this one is written here.

Defaults reproduce artsiom's network (asanakoy/kaggle_carvana_segmentation, ``asanakoy/unet.py``,
class ``Unet`` built with ``is_deconv=False``, as ``train_scratch.sh`` ran it): six down blocks of
32, 64, 128, 256, 512, 1024 filters (two conv3x3+BN+ReLU, then a 2x2 max-pool), a 1024-filter centre
block, and six up blocks that upsample bilinearly, concatenate the skip and apply three
conv3x3+BN+ReLU. Widths double per level from ``base_filters`` and stop at ``max_filters``.

Size: ``depth`` pools need ``H`` and ``W`` divisible by ``2**depth``. The harness guarantees only
multiples of 32, and the default depth is 6, so the forward pass pads the input (replicating the
edge) up to the next multiple of ``2**depth`` and crops the logits back. At Carvana's padded
1920x1280 and at artsiom's 1024x1024 no padding happens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.api import BenchError

UPSAMPLE_MODES = ("bilinear", "transposed")


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    """One 3x3 conv (no bias: BatchNorm follows) + BatchNorm + ReLU."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def conv_stack(in_channels: int, out_channels: int, convs: int) -> nn.Sequential:
    """``convs`` conv+BN+ReLU layers, the first changing the width."""
    layers = conv_bn_relu(in_channels, out_channels)
    for _ in range(convs - 1):
        layers += conv_bn_relu(out_channels, out_channels)
    return nn.Sequential(*layers)


class UpBlock(nn.Module):
    """Double the resolution, concatenate the encoder's skip, mix with a conv stack."""

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, convs: int, upsample: str
    ) -> None:
        super().__init__()
        if upsample == "transposed":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, in_channels, 2, stride=2)
        else:
            # align_corners=True: how PyTorch 0.2's Upsample behaved when artsiom trained.
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.convs = conv_stack(in_channels + skip_channels, out_channels, convs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([skip, self.up(x)], 1))


class UNet(nn.Module):
    """Plain UNet: ``depth`` down blocks, a centre, ``depth`` up blocks, a 1x1 conv to logits."""

    def __init__(
        self, widths: list[int], up_convs: int = 3, upsample: str = "bilinear"
    ) -> None:
        super().__init__()
        *levels, center = widths
        ins = [3, *levels[:-1]]
        self.downs = nn.ModuleList(conv_stack(i, o, 2) for i, o in zip(ins, levels))
        self.pool = nn.MaxPool2d(2, 2)
        self.center = conv_stack(levels[-1], center, 2)
        outs_from = [center, *reversed(levels[1:])]
        self.ups = nn.ModuleList(
            UpBlock(i, skip, skip, up_convs, upsample)
            for i, skip in zip(outs_from, reversed(levels))
        )
        self.final = nn.Conv2d(levels[0], 1, kernel_size=1)
        self.multiple = 2 ** len(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = self.pool(x)
        x = self.center(x)
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return self.final(x)[..., :height, :width]


def unet(
    *,
    base_filters: int = 32,
    depth: int = 6,
    max_filters: int = 1024,
    up_convs: int = 3,
    upsample: str = "bilinear",
) -> nn.Module:
    """Artsiom's from-scratch UNet (the defaults are his network; see the module docstring).

    ``depth`` is the number of 2x2 pools; ``up_convs`` the conv+BN+ReLU layers per up block (he
    used 3 with bilinear upsampling); ``upsample`` is ``"bilinear"`` or ``"transposed"`` (a learnt
    2x2 stride-2 transposed conv, as in Ronneberger et al.).
    """
    if upsample not in UPSAMPLE_MODES:
        raise BenchError(f'model.upsample = "{upsample}": use one of {", ".join(UPSAMPLE_MODES)}')
    if depth < 1 or base_filters < 1 or max_filters < base_filters or up_convs < 1:
        raise BenchError(
            f"unet: need depth >= 1, up_convs >= 1 and 1 <= base_filters <= max_filters "
            f"(got depth={depth}, up_convs={up_convs}, base_filters={base_filters}, "
            f"max_filters={max_filters})"
        )
    widths = [min(base_filters * 2**level, max_filters) for level in range(depth + 1)]
    return UNet(widths, up_convs=up_convs, upsample=upsample)
