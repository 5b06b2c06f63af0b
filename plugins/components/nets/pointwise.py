"""``pointwise``: one 1x1 convolution from the image's colours to a logit, no spatial context at all.

Not a recipe's network: the floor under every model, against which the work around a model is
measured. ``bench predict`` with it costs what decoding, fitting, TTA, restoring, thresholding,
encoding and writing cost at a given image size (``docs/scale.md``), as timm's benchmark times a
trivial model to find the harness's share. It trains in seconds, so tests of prediction use it too.

The convolution is computed as a multiply and a channel sum: PyTorch's CPU ``conv2d`` takes 1.1 s
for a batch of 8 full-size (1920x1280) NCHW images with 3 input channels and 1 output, the
multiply-and-sum 0.16 s (AVX512, 2 cores), and a floor must not be slower than what it measures.
"""

from __future__ import annotations

import torch
from torch import nn


class Pointwise(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 1, kernel_size=1)  # its parameters and initialisation

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images * self.conv.weight.view(1, -1, 1, 1)).sum(1, keepdim=True) + self.conv.bias.view(1, 1, 1, 1)


def pointwise(*, in_channels: int = 3) -> nn.Module:
    """A 1x1 convolution, ``in_channels`` -> 1 logit per pixel."""
    return Pointwise(in_channels)
