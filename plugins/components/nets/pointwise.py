"""``pointwise``: one 1x1 convolution from the image's colours to a logit, no spatial context at all.

Not a recipe's network: the floor under every model, against which the work around a model is
measured. ``bench predict`` with it costs what decoding, fitting, TTA, restoring, thresholding,
encoding and writing cost at a given image size (``docs/scale.md``), as timm's benchmark times a
trivial model to find the harness's share. It trains in seconds, so tests of prediction use it too.
"""

from __future__ import annotations

from torch import nn


def pointwise(*, in_channels: int = 3) -> nn.Module:
    """A 1x1 convolution, ``in_channels`` -> 1 logit per pixel."""
    return nn.Conv2d(in_channels, 1, kernel_size=1)
