"""UNet with a VGG11 encoder: TernausNet's ``UNet11`` (vladimir) and artsiom's wide variant.

TernausNet (Iglovikov & Shvets, arXiv:1801.05746; github ternaus/TernausNet ``UNet11``): the encoder
is torchvision's ``vgg11().features`` (eight 3x3 convs of 64, 128, 256, 256, 512, 512, 512, 512
channels with ReLU, five 2x2 max-pools); every decoder block is conv3x3+ReLU followed by a
ConvTranspose2d(k=3, s=2, p=1, output_padding=1)+ReLU that doubles the resolution; the decoder
concatenates the encoder's features at each scale, full resolution (conv1) included; a 1x1 conv
gives one logit per pixel.

Artsiom's "wide VGG11-UNet" (asanakoy/kaggle_carvana_segmentation, ``asanakoy/vgg_unet.py``,
``UnetVgg11(num_filters=64, v=1)``, run as ``-net=vgg11v1``) is the same network with
``num_filters=64`` and one more difference: a decoder block's middle conv has as many channels as
the decoder features coming into it, where TernausNet's has twice as many. ``decoder_expansion``
holds that ratio, so both published networks come out of one class.

The encoder is kept as torchvision's ``features`` Sequential, indexed as torchvision indexes it,
so a torchvision ``vgg11`` weights file (keys ``features.N.weight``) loads into it unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.api import UrlFile, load_encoder_weights

# torchvision's published ImageNet VGG11 (what TernausNet and artsiom started from):
# ``torchvision.models.VGG11_Weights.IMAGENET1K_V1.url``, written out (tests/test_nets.py checks it)
# so that loading the plugins does not import torchvision's models, a second of every bench command.
VGG11_IMAGENET = UrlFile("https://download.pytorch.org/models/vgg11-8a719046.pth")
VGG11_CHANNELS = (64, 128, 256, 512, 512)  # after conv1, conv2, conv3, conv4, conv5


def vgg11_features() -> nn.Sequential:
    """``torchvision.models.vgg11().features``, initialised as torchvision initialises it.

    Built from torchvision's own layer list rather than ``vgg11()``, which would also build (and
    initialise, about a second on a CPU) the 120M-parameter classifier only to throw it away.
    """
    import torchvision  # here, not at the top: see VGG11_IMAGENET

    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"])
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return features


class ConvRelu(nn.Module):
    """3x3 conv (padding 1, so the size is kept) followed by ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.conv(x))


class DecoderBlock(nn.Module):
    """TernausNet's ``DecoderBlock``: conv3x3+ReLU, then a transposed conv that doubles H and W."""

    def __init__(self, in_channels: int, middle_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            ConvRelu(in_channels, middle_channels),
            nn.ConvTranspose2d(
                middle_channels, out_channels, kernel_size=3, stride=2, padding=1, output_padding=1
            ),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class UNet11(nn.Module):
    """VGG11-encoder UNet; ``H`` and ``W`` must be multiples of 32 (five pools).

    Decoder widths are multiples of ``num_filters``: the centre and ``dec5`` emit ``8 * nf``,
    ``dec4`` ``4 * nf``, ``dec3`` ``2 * nf``, ``dec2`` and ``dec1`` ``nf``. The centre's middle conv
    has ``16 * nf`` channels; every later block's middle conv has ``decoder_expansion`` times the
    width of the decoder features entering it (2 in TernausNet, 1 in artsiom's wide net).

    The original code wrote the encoder's widths as multiples of ``num_filters``
    (``16 * 32 = 512``), which only adds up for ``num_filters=32``; here they are VGG11's own
    widths, so every ``num_filters`` builds, and ``num_filters=32`` gives exactly TernausNet's
    layer shapes.

    Module names (and the ``conv1``...``conv5`` aliases into ``encoder``) are TernausNet's, so a
    TernausNet checkpoint's ``state_dict`` loads into this class unchanged.
    """

    def __init__(self, num_filters: int = 32, decoder_expansion: int = 2) -> None:
        super().__init__()
        nf, ex = num_filters, decoder_expansion
        e1, e2, e3, e4, e5 = VGG11_CHANNELS
        self.pool = nn.MaxPool2d(2, 2)
        self.encoder = vgg11_features()
        self.relu = self.encoder[1]
        self.conv1 = self.encoder[0]
        self.conv2 = self.encoder[3]
        self.conv3s = self.encoder[6]
        self.conv3 = self.encoder[8]
        self.conv4s = self.encoder[11]
        self.conv4 = self.encoder[13]
        self.conv5s = self.encoder[16]
        self.conv5 = self.encoder[18]
        self.center = DecoderBlock(e5, 16 * nf, 8 * nf)
        self.dec5 = DecoderBlock(8 * nf + e5, ex * 8 * nf, 8 * nf)
        self.dec4 = DecoderBlock(8 * nf + e4, ex * 8 * nf, 4 * nf)
        self.dec3 = DecoderBlock(4 * nf + e3, ex * 4 * nf, 2 * nf)
        self.dec2 = DecoderBlock(2 * nf + e2, ex * 2 * nf, nf)
        self.dec1 = ConvRelu(nf + e1, nf)
        self.final = nn.Conv2d(nf, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv1 = self.relu(self.conv1(x))
        conv2 = self.relu(self.conv2(self.pool(conv1)))
        conv3 = self.relu(self.conv3(self.relu(self.conv3s(self.pool(conv2)))))
        conv4 = self.relu(self.conv4(self.relu(self.conv4s(self.pool(conv3)))))
        conv5 = self.relu(self.conv5(self.relu(self.conv5s(self.pool(conv4)))))
        center = self.center(self.pool(conv5))
        dec5 = self.dec5(torch.cat([center, conv5], 1))
        dec4 = self.dec4(torch.cat([dec5, conv4], 1))
        dec3 = self.dec3(torch.cat([dec4, conv3], 1))
        dec2 = self.dec2(torch.cat([dec3, conv2], 1))
        dec1 = self.dec1(torch.cat([dec2, conv1], 1))
        return self.final(dec1)


def unet11(*, num_filters: int = 32, encoder_weights: str = "none") -> nn.Module:
    """TernausNet UNet11 (vladimir's recipe). ``encoder_weights``: "none", "imagenet" or a file."""
    return _build(num_filters, decoder_expansion=2, encoder_weights=encoder_weights)


def wide_unet11(*, num_filters: int = 64, encoder_weights: str = "none") -> nn.Module:
    """Artsiom's wide VGG11-UNet (``UnetVgg11``, 64 filters, decoder expansion 1).

    A factory of its own rather than ``unet11(num_filters=64)`` because the two published networks
    differ in their decoder's middle widths, not only in ``num_filters``.
    """
    return _build(num_filters, decoder_expansion=1, encoder_weights=encoder_weights)


def _build(num_filters: int, *, decoder_expansion: int, encoder_weights: str) -> nn.Module:
    model = UNet11(num_filters, decoder_expansion)
    load_encoder_weights(model.encoder, encoder_weights, imagenet=VGG11_IMAGENET, what="vgg11")
    return model
