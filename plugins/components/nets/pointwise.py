"""``pointwise``: one 1x1 convolution from the image's colours to a logit, no spatial context at all.

Not a recipe's network: the floor under every model, against which the work around a model is
measured. ``bench predict`` with it costs what decoding, fitting, TTA, restoring, thresholding,
encoding and writing cost at a given image size (``docs/scale.md``), as timm's benchmark times a
trivial model to find the harness's share. It trains in seconds, so tests of prediction use it too.

The convolution is computed as a batched matrix product, weights ``(1, C)`` times pixels ``(C, H*W)``:
on a full-size (1920x1280) NCHW image PyTorch's CPU ``conv2d`` takes 3.6 ms on one thread but 137-170
on two, a multiply and a channel sum 5 ms, the product 2-3 ms on either (AVX512), and a floor must
not be slower than what it measures. Under ``torch.compile`` it is the multiply and sum, which the
compiler fuses with the normalising before it and the flips, sigmoid and quantising after it into
one pass over the image (a full-size image with flip TTA over 2 folds: 5 ms against 29 with the
product, which stays a library call; ``harness.engine.inference.Predictor._levels``).
"""

from __future__ import annotations

import torch
from torch import nn


class Pointwise(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 1, kernel_size=1)  # its parameters and initialisation

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return (images * self.conv.weight.view(1, -1, 1, 1)).sum(1, keepdim=True) + self.conv.bias.view(1, 1, 1, 1)
        batch, channels, height, width = images.shape
        weights = self.conv.weight.view(1, 1, channels).expand(batch, 1, channels)
        pixels = images.reshape(batch, channels, height * width)
        return torch.baddbmm(self.conv.bias.view(1, 1, 1), weights, pixels).view(batch, 1, height, width)


def pointwise(*, in_channels: int = 3) -> nn.Module:
    """A 1x1 convolution, ``in_channels`` -> 1 logit per pixel."""
    return Pointwise(in_channels)
