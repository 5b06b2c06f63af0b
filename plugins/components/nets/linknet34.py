"""alexander's LinkNet34, layer for layer as the Carvana 1st-place code built it.

Why this module exists: alexander's recipe first used smp's ``Linknet`` (``linknet`` in
``smp_models``), which is another network under the same name: smp's decoder blocks upsample with
a 4x4 transposed conv and have no conv bias, its 1/2-scale block also adds a skip (the stem's
features), and a fifth decoder block (64 -> 32) reaches full size before a 1x1 conv head. A
benchmark of smp's net does not measure alexander's. This module rebuilds the original, so that
the ``linknet34`` model is the network that won:

    asanakoy/kaggle_carvana_segmentation, ``albu/src/pytorch_zoo/linknet.py`` (commit d3dc028,
    "all credits to @nizhib"): ``DecoderBlock`` lines 15-45, ``LinkNet34`` lines 47-102
    (layers 47-74, forward 76-102). ``albu/src/train.py`` builds it as
    ``LinkNet34(num_classes=1, num_channels=3)`` (``models = {'linknet34': ...}``;
    ``PytorchTrain.__init__``), with ``"network": "linknet34"`` in its configs
    (``albu/configs/fma_s44.json`` and the others).

The network:

* encoder: torchvision's ``resnet34`` without its avgpool/fc; stem (conv7x7 s2, BN, ReLU,
  maxpool s2) then ``layer1``...``layer4`` giving ``e1``...``e4`` at 1/4...1/32 of the input with
  64, 128, 256, 512 channels.
* ``DecoderBlock(c, n)``: conv1x1 ``c -> c/4`` + BN + ReLU, ConvTranspose2d(``c/4 -> c/4``,
  k=3, s=2, p=1, output_padding=1) + BN + ReLU (doubles H and W exactly), conv1x1 ``c/4 -> n``
  + BN + ReLU. Every conv keeps its bias, even before a BN, as the original does.
* decoder: ``d4 = dec4(e4) + e3``, ``d3 = dec3(d4) + e2``, ``d2 = dec2(d3) + e1``,
  ``d1 = dec1(d2)``: additive skips at 1/16, 1/8, 1/4 only; ``d1`` (1/2 scale) has no skip.
* head (no BN): ConvTranspose2d(64 -> 32, k=3, s=2, **no padding**) + ReLU, Conv2d(32 -> 32,
  k=3, **no padding**) + ReLU, Conv2d(32 -> 1, k=2, padding=1). Sizes from ``d1`` of side ``s``:
  ``2s + 1`` after the transposed conv, ``2s - 1`` after the valid 3x3, ``2s`` after the 2x2
  with padding 1. That is the whole of the original's size bookkeeping: the head's odd
  transposed conv is undone by the two convs that follow it; there is no explicit pad or crop in
  the model.

Sizes: for sides that are multiples of 32 (which the harness guarantees) every skip addition
lines up and the logits have the input's size, e.g. 1280x1920 in, 1280x1920 out (``e4`` is
40x60). The original never fed anything else: its dataset zero-pads Carvana's 1280x1918 images
on the right to 1280x1920 (``albu/src/dataset/abstract_dataset.py`` ``pad_image``, with
``img_cols: 1920`` in the configs). Other sides: every stride-2 stage of the encoder rounds up, so
a skip addition fails unless the side's 1/4, 1/8 and 1/16 sizes (rounded up) are all even (1000
fails at 1/16, where it is 63), and a side that passes comes out as ``4 * ceil(side / 4)``: 1918
runs and gives 1920 logits.

How this differs from the original, and only how:

* Output: one logit channel and **no sigmoid**, which is also what the original returned
  (``finalconv3``'s output; its ``BCEDiceLoss`` applies ``BCEWithLogitsLoss`` and a sigmoid
  inside the Dice term, and ``eval.py`` applies ``F.sigmoid`` to predictions). segbench's
  losses take logits, so nothing changes.
* Encoder weights: the original always called ``models.resnet34(pretrained=True)``. Here
  ``encoder_weights`` is ``"none"`` (torchvision's random init, the default, as in every
  segbench factory), ``"imagenet"`` (torchvision's ``IMAGENET1K_V1`` resnet34, the same weights
  ``pretrained=True`` loaded, re-serialised by torchvision in 2021 as ``resnet34-b627a593.pth``;
  fails fast offline) or a local state dict file. A faithful rerun of the recipe sets
  ``"imagenet"`` or a file holding those weights.
* ``num_channels``: the original asserted it was 3; this class takes 3-channel input only and
  has no such argument.
* Initialisation of the decoder and head is today's PyTorch default. The original ran on the
  PyTorch of 2017 (0.2/0.3: ``Variable(volatile=True)``, ``cuda(async=True)``), whose defaults
  drew conv weights from the same ``U(+-1/sqrt(fan_in))`` except for the head's transposed conv
  (PyTorch now takes its fan-in from its 32 output channels, 2017's from its 64 input channels)
  and drew BatchNorm scales from ``U(0, 1)`` where they now start at 1. Moot for the encoder
  when it starts from ImageNet weights.

Module names are the original's (``firstconv``, ``encoder1``, ``decoder4``, ``finaldeconv1``...),
so the original's checkpoints' ``state_dict`` (unwrapped from ``DataParallel``) loads unchanged.
The encoder weights load through :meth:`LinkNet34.torchvision_encoder`, a view of the same
modules under torchvision's names (``conv1``, ``bn1``, ``layer1``...), so a torchvision or smp-hub
resnet34 file loads into it as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.api import UrlFile, load_encoder_weights

# torchvision's published ImageNet ResNet34 (what the original's ``pretrained=True`` loaded):
# ``torchvision.models.ResNet34_Weights.IMAGENET1K_V1.url``, written out (tests/test_nets.py checks
# it) so that loading the plugins does not import torchvision's models, a second of every bench command.
RESNET34_IMAGENET = UrlFile("https://download.pytorch.org/models/resnet34-b627a593.pth")
RESNET34_CHANNELS = (64, 128, 256, 512)  # e1, e2, e3, e4 (the original's ``filters``)
HEAD_CHANNELS = 32


class DecoderBlock(nn.Module):
    """conv1x1 ``c -> c/4``, transposed conv k3 s2 (x2 size), conv1x1 ``c/4 -> n``; BN+ReLU after each."""

    def __init__(self, in_channels: int, n_filters: int) -> None:
        super().__init__()
        middle = in_channels // 4
        self.conv1 = nn.Conv2d(in_channels, middle, 1)
        self.norm1 = nn.BatchNorm2d(middle)
        self.relu1 = nn.ReLU(inplace=True)
        self.deconv2 = nn.ConvTranspose2d(middle, middle, 3, stride=2, padding=1, output_padding=1)
        self.norm2 = nn.BatchNorm2d(middle)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(middle, n_filters, 1)
        self.norm3 = nn.BatchNorm2d(n_filters)
        self.relu3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.norm1(self.conv1(x)))
        x = self.relu2(self.norm2(self.deconv2(x)))
        return self.relu3(self.norm3(self.conv3(x)))


class LinkNet34(nn.Module):
    """The original LinkNet34 (see the module docstring); ``H`` and ``W`` must be multiples of 32."""

    def __init__(self, num_classes: int = 1) -> None:
        import torchvision  # here, not at the top: see RESNET34_IMAGENET

        super().__init__()
        f1, f2, f3, f4 = RESNET34_CHANNELS
        resnet = torchvision.models.resnet34(weights=None)
        self.firstconv = resnet.conv1
        self.firstbn = resnet.bn1
        self.firstrelu = resnet.relu
        self.firstmaxpool = resnet.maxpool
        self.encoder1 = resnet.layer1
        self.encoder2 = resnet.layer2
        self.encoder3 = resnet.layer3
        self.encoder4 = resnet.layer4
        self.decoder4 = DecoderBlock(f4, f3)
        self.decoder3 = DecoderBlock(f3, f2)
        self.decoder2 = DecoderBlock(f2, f1)
        self.decoder1 = DecoderBlock(f1, f1)
        self.finaldeconv1 = nn.ConvTranspose2d(f1, HEAD_CHANNELS, 3, stride=2)
        self.finalrelu1 = nn.ReLU(inplace=True)
        self.finalconv2 = nn.Conv2d(HEAD_CHANNELS, HEAD_CHANNELS, 3)
        self.finalrelu2 = nn.ReLU(inplace=True)
        self.finalconv3 = nn.Conv2d(HEAD_CHANNELS, num_classes, 2, padding=1)

    def torchvision_encoder(self) -> nn.Module:
        """The encoder's modules (shared, not copied) under torchvision's ``resnet34`` names.

        Loading a state dict into the returned module fills this network's encoder in place.
        """
        view = nn.Module()
        view.conv1, view.bn1 = self.firstconv, self.firstbn
        view.layer1, view.layer2 = self.encoder1, self.encoder2
        view.layer3, view.layer4 = self.encoder3, self.encoder4
        return view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.firstmaxpool(self.firstrelu(self.firstbn(self.firstconv(x))))
        e1 = self.encoder1(x)
        e2 = self.encoder2(e1)
        e3 = self.encoder3(e2)
        e4 = self.encoder4(e3)
        d4 = self.decoder4(e4) + e3
        d3 = self.decoder3(d4) + e2
        d2 = self.decoder2(d3) + e1
        d1 = self.decoder1(d2)
        f = self.finalrelu1(self.finaldeconv1(d1))
        f = self.finalrelu2(self.finalconv2(f))
        return self.finalconv3(f)


def linknet34(*, encoder_weights: str = "none") -> nn.Module:
    """alexander's own LinkNet34 (one logit). ``encoder_weights``: "none", "imagenet" or a file."""
    model = LinkNet34()
    load_encoder_weights(
        model.torchvision_encoder(), encoder_weights, imagenet=RESNET34_IMAGENET, what="resnet34"
    )
    return model
