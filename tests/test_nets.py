"""The networks: output contract, TernausNet's and LinkNet34's structure, name checks, offline failure,
training."""

from __future__ import annotations

import inspect
import math
import time

import pydantic
import pytest
import torch
import torchvision
from huggingface_hub import constants as hf_constants

from harness.errors import BenchError
from harness.recipe import weights
from plugins.components.nets.linknet34 import LinkNet34, linknet34
from plugins.components.nets.pointwise import pointwise
from plugins.components.nets.smp_models import linknet, smp_model
from plugins.components.nets.ternausnet import unet11, wide_unet11
from plugins.components.nets.unet import unet

FACTORIES = {
    "unet11": unet11,
    "wide_unet11": wide_unet11,
    "unet": unet,
    "linknet": linknet,
    "linknet34": linknet34,
    "smp_fpn": lambda: smp_model(arch="fpn", encoder="resnet18"),
    "pointwise": pointwise,
}


@pytest.mark.parametrize("factory", [unet11, wide_unet11, unet, linknet, linknet34, smp_model, pointwise])
def test_factories_are_keyword_only_typed_and_defaulted(factory):
    """What segbench needs to validate a recipe's [model] table against the signature."""
    hints = inspect.get_annotations(factory, eval_str=True)
    for param in inspect.signature(factory).parameters.values():
        assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is not param.empty
        assert pydantic.TypeAdapter(hints[param.name]).validate_python(param.default, strict=True) == param.default


def conv_params(cin: int, cout: int, k: int = 3) -> int:
    return k * k * cin * cout + cout  # a Conv2d or ConvTranspose2d with bias


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


VGG11_PARAMS = sum(
    conv_params(cin, cout)
    for cin, cout in [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512)] + [(512, 512)] * 3
)


@pytest.mark.parametrize("name", FACTORIES)
def test_logits_have_the_input_size(name):
    model = FACTORIES[name]().eval()
    for size in [(64, 96), (96, 64)]:
        with torch.no_grad():
            logits = model(torch.randn(2, 3, *size))
        assert logits.shape == (2, 1, *size) and logits.dtype == torch.float32


def test_unet11_matches_ternausnet():
    """Parameter count from the paper's layer list, TernausNet's key names, VGG11's encoder."""
    decoder = (
        conv_params(512, 512) + conv_params(512, 256)  # center: DecoderBlock(512, 512, 256)
        + conv_params(768, 512) + conv_params(512, 256)  # dec5: DecoderBlock(256 + 512, 512, 256)
        + conv_params(768, 512) + conv_params(512, 128)  # dec4: DecoderBlock(256 + 512, 512, 128)
        + conv_params(384, 256) + conv_params(256, 64)  # dec3: DecoderBlock(128 + 256, 256, 64)
        + conv_params(192, 128) + conv_params(128, 32)  # dec2: DecoderBlock(64 + 128, 128, 32)
        + conv_params(96, 32)  # dec1: ConvRelu(32 + 64, 32)
        + conv_params(32, 1, k=1)  # final
    )  # fmt: skip
    model = unet11()
    assert n_params(model) == VGG11_PARAMS + decoder == 22_927_393
    keys = set(model.state_dict())
    assert {"conv1.weight", "center.block.0.conv.weight", "dec5.block.1.weight",
            "dec1.conv.weight", "final.weight"} <= keys  # fmt: skip
    vgg = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"])
    assert {k: v.shape for k, v in model.encoder.state_dict().items()} == {
        k: v.shape for k, v in vgg.state_dict().items()
    }


def test_wide_unet11_matches_artsiom():
    """asanakoy/vgg_unet.py UnetVgg11(num_filters=64, v=1), layer by layer."""
    decoder = (
        conv_params(512, 1024) + conv_params(1024, 512)  # center: DecoderBlock(512, 1024, 512)
        + conv_params(1024, 512) + conv_params(512, 512)  # dec5: DecoderBlock(1024, 512, 512)
        + conv_params(1024, 512) + conv_params(512, 256)  # dec4: DecoderBlock(1024, 512, 256)
        + conv_params(512, 256) + conv_params(256, 128)  # dec3: DecoderBlock(512, 256, 128)
        + conv_params(256, 128) + conv_params(128, 64)  # dec2: DecoderBlock(256, 128, 64)
        + conv_params(128, 64)  # dec1: ConvRelu(128, 64)
        + conv_params(64, 1, k=1)
    )  # fmt: skip
    assert n_params(wide_unet11()) == VGG11_PARAMS + decoder


def test_unet11_encoder_loads_a_torchvision_vgg11_file(tmp_path):
    vgg = torchvision.models.vgg11()  # random init, with the classifier a real file carries
    torch.save(vgg.state_dict(), tmp_path / "vgg11.pth")
    model = unet11(encoder_weights=str(tmp_path / "vgg11.pth"))
    assert torch.equal(model.conv5.weight, vgg.features[18].weight)
    assert torch.equal(model.encoder[0].bias, vgg.features[0].bias)


def test_linknet_encoder_loads_a_file(tmp_path):
    source = linknet(encoder="resnet18")
    torch.save(source.state_dict(), tmp_path / "linknet.pth")  # a whole smp model
    model = linknet(encoder="resnet18", encoder_weights=str(tmp_path / "linknet.pth"))
    assert torch.equal(model.encoder.layer4[1].conv2.weight, source.encoder.layer4[1].conv2.weight)


# --- alexander's LinkNet34 against the original -------------------------------------------------
# The reference is the original's layer list, transcribed as state_dict shapes from
# asanakoy/kaggle_carvana_segmentation albu/src/pytorch_zoo/linknet.py (commit d3dc028):
# DecoderBlock(in, n) at lines 15-33, LinkNet34.__init__ at lines 47-74, built by albu/src/train.py
# as LinkNet34(num_classes=1, num_channels=3). Its encoder is torchvision's resnet34 under new names.
ORIGINAL_ENCODER_NAMES = {"conv1": "firstconv", "bn1": "firstbn", "layer1": "encoder1",
                          "layer2": "encoder2", "layer3": "encoder3", "layer4": "encoder4"}  # lines 54-61
ORIGINAL_DECODERS = {"decoder4": (512, 256), "decoder3": (256, 128),
                     "decoder2": (128, 64), "decoder1": (64, 64)}  # lines 64-67: (in_channels, n_filters)
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _batchnorm(name: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (channels,), f"{name}.bias": (channels,), f"{name}.running_mean": (channels,),
            f"{name}.running_var": (channels,), f"{name}.num_batches_tracked": ()}


def original_linknet34_shapes() -> dict[str, tuple[int, ...]]:
    """The original ``LinkNet34(num_classes=1)``'s state_dict, key by key in its order, as shapes."""
    with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
        resnet = torchvision.models.resnet34(weights=None)  # the original's models.resnet34(pretrained=True)
    shapes = {}
    for key, value in resnet.state_dict().items():
        top, rest = key.split(".", 1)
        if top != "fc":  # avgpool and fc are not taken (lines 54-61)
            shapes[f"{ORIGINAL_ENCODER_NAMES[top]}.{rest}"] = tuple(value.shape)
    for name, (cin, n) in ORIGINAL_DECODERS.items():
        m = cin // 4
        shapes |= {f"{name}.conv1.weight": (m, cin, 1, 1), f"{name}.conv1.bias": (m,)}  # Conv2d(in, in//4, 1)
        shapes |= _batchnorm(f"{name}.norm1", m)
        # ConvTranspose2d(in//4, in//4, 3, stride=2, padding=1, output_padding=1): weight is (in, out, k, k)
        shapes |= {f"{name}.deconv2.weight": (m, m, 3, 3), f"{name}.deconv2.bias": (m,)}
        shapes |= _batchnorm(f"{name}.norm2", m)
        shapes |= {f"{name}.conv3.weight": (n, m, 1, 1), f"{name}.conv3.bias": (n,)}  # Conv2d(in//4, n, 1)
        shapes |= _batchnorm(f"{name}.norm3", n)
    shapes |= {"finaldeconv1.weight": (64, 32, 3, 3), "finaldeconv1.bias": (32,)}  # ConvTranspose2d(64, 32, 3, s=2)
    shapes |= {"finalconv2.weight": (32, 32, 3, 3), "finalconv2.bias": (32,)}  # Conv2d(32, 32, 3)
    shapes |= {"finalconv3.weight": (1, 32, 2, 2), "finalconv3.bias": (1,)}  # Conv2d(32, 1, 2, padding=1)
    return shapes


def test_linknet34_matches_the_original_layer_for_layer():
    reference = original_linknet34_shapes()
    with torch.device("meta"):
        model = LinkNet34()
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert list(shapes.items()) == list(reference.items())  # same keys, same shapes, same order
    reference_params = sum(math.prod(shape) for key, shape in reference.items() if not key.endswith(BN_BUFFERS))
    assert n_params(model) == reference_params == 21_642_401  # torchvision resnet34 without fc: 21_284_672
    decoder_and_head = sum(
        conv_params(cin, cin // 4, k=1) + conv_params(cin // 4, cin // 4) + conv_params(cin // 4, n, k=1)
        + 2 * (cin // 4 + cin // 4 + n)  # three BatchNorms' weight and bias
        for cin, n in ORIGINAL_DECODERS.values()
    ) + conv_params(64, 32) + conv_params(32, 32) + conv_params(32, 1, k=2)  # fmt: skip
    assert decoder_and_head == 357_729 == reference_params - 21_284_672


def test_linknet34_is_not_smps_linknet():
    """smp's Linknet (``linknet``) has other layers: the reason ``linknet34`` exists."""
    with torch.device("meta"):
        smp_linknet = linknet()
    assert n_params(smp_linknet) == 21_771_937 != 21_642_401


@pytest.mark.parametrize("size, out", [((1280, 1920), (1280, 1920)), ((1280, 1918), (1280, 1920))])
def test_linknet34_logit_size_on_carvana_images(size, out):
    """Full-size Carvana shapes on the meta device (no compute); 1918 is rounded up, as documented."""
    with torch.device("meta"):
        model = LinkNet34().eval()
        logits = model(torch.empty(1, 3, *size))
    assert logits.shape == (1, 1, *out)


def test_linknet34_forward_backward_on_a_small_input():
    torch.manual_seed(0)
    model = linknet34().train()
    images = torch.randn(2, 3, 64, 64)
    logits = model(images)
    assert logits.shape == (2, 1, 64, 64)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, (images[:, :1] > 0).float()).backward()
    for name, param in model.named_parameters():  # every layer is on the path from input to logits
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert param.grad.abs().sum() > 0  # the last one: finalconv3.bias


def test_linknet34_encoder_loads_a_torchvision_resnet34_file(tmp_path):
    resnet = torchvision.models.resnet34()  # random init, with the fc a real ImageNet file carries
    torch.save(resnet.state_dict(), tmp_path / "resnet34.pth")
    model = linknet34(encoder_weights=str(tmp_path / "resnet34.pth"))
    assert torch.equal(model.firstconv.weight, resnet.conv1.weight)
    assert torch.equal(model.encoder4[2].bn2.running_var, resnet.layer4[2].bn2.running_var)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"encoder": "resnet43"}, r'"resnet43" is not an smp name; did you mean .*resnet34'),
        ({"arch": "unett"}, r'arch = "unett" is not an smp name; did you mean unet'),
        ({"encoder": "tu-resnet343"}, r'"tu-resnet343" is not an smp name; did you mean tu-resnet'),
    ],
)  # fmt: skip
def test_bad_smp_names_are_refused_with_close_matches(kwargs, match):
    with pytest.raises(BenchError, match=match):
        smp_model(**kwargs)


def test_bad_unet_options_are_refused():
    with pytest.raises(BenchError, match='upsample = "nearest"'):
        unet(upsample="nearest")
    with pytest.raises(BenchError, match="depth >= 1"):
        unet(depth=0)


@pytest.mark.parametrize("factory", [unet11, linknet, linknet34])
def test_imagenet_offline_fails_fast(factory, tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))
    monkeypatch.setattr(weights, "_reachable", lambda *args, **kwargs: False)
    started = time.perf_counter()
    with pytest.raises(BenchError, match=r"cannot download the ImageNet weights .*/path/to/") as error:
        factory(encoder_weights="imagenet")
    assert time.perf_counter() - started < 5
    assert "\n" not in str(error.value)


def test_smp_imagenet_reads_smp_settings_without_downloading():
    source = weights.smp_imagenet("resnet34")
    assert source is not None and source.repo_id == "smp-hub/resnet34.imagenet"
    assert len(source.revision) == 40
    assert weights.smp_imagenet("tu-resnet34") is None


@pytest.mark.parametrize(
    "build, size",
    [
        (lambda: unet(base_filters=8, depth=3), 32),
        (lambda: unet(base_filters=8, depth=3, upsample="transposed", up_convs=2), 32),
        (unet11, 32),
        (lambda: linknet(encoder="resnet18"), 64),
        (linknet34, 64),
    ],
)
def test_a_few_adam_steps_reduce_the_loss(build, size):
    torch.manual_seed(0)
    model = build().train()
    images = torch.randn(2, 3, size, size)
    target = (images[:, :1] > 0).float()  # learnable from the input pixel by pixel
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_pointwise_is_a_1x1_convolution():
    model = pointwise()
    images = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.allclose(model(images), model.conv(images), atol=1e-6)


def test_the_imagenet_urls_written_out_are_torchvisions():
    """The plugins name torchvision's weight files without importing torchvision's models (a second of
    every bench command): the URLs must stay the ones torchvision publishes."""
    from plugins.components.nets.linknet34 import RESNET34_IMAGENET
    from plugins.components.nets.ternausnet import VGG11_IMAGENET

    assert RESNET34_IMAGENET.url == torchvision.models.ResNet34_Weights.IMAGENET1K_V1.url
    assert VGG11_IMAGENET.url == torchvision.models.VGG11_Weights.IMAGENET1K_V1.url
