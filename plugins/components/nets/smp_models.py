"""Networks from segmentation_models_pytorch: alexander's LinkNet and any smp architecture by name.

smp is asked for a randomly initialised model (``encoder_weights=None``) and the weights come from
``harness.api`` (``smp_imagenet``, ``load_encoder_weights``), so "imagenet" fails fast offline and a
local file works in every model, where smp itself would retry a download for half a minute. smp is
imported inside the factories because importing it pulls in timm and huggingface_hub, and plugins are
imported by every ``bench`` command.
"""

from __future__ import annotations

import difflib

from torch import nn  # at run time, not under TYPE_CHECKING: segbench evaluates the hints

from harness.api import BenchError, load_encoder_weights, smp_imagenet

TIMM_PREFIX = "tu-"  # smp's prefix for "any timm model as an encoder"


def linknet(*, encoder: str = "resnet34", encoder_weights: str = "none") -> nn.Module:
    """LinkNet (additive skips), alexander's network with its ResNet34 encoder by default."""
    return smp_model(arch="linknet", encoder=encoder, encoder_weights=encoder_weights)


def smp_model(
    *, arch: str = "unet", encoder: str = "resnet34", encoder_weights: str = "none", encoder_depth: int = 5,
    decoder_channels: list[int] | None = None,
) -> nn.Module:
    """Any smp architecture (``unet``, ``fpn``, ``deeplabv3plus``, ...) with any smp encoder.

    One logit channel. ``encoder`` is an smp encoder name or ``tu-<timm model>``; for the latter,
    ``encoder_weights`` may be "none" or a file holding the smp encoder's state dict, since
    ImageNet weights of timm models come through timm's own download path, which is not guarded.
    ``encoder_depth`` (3-5) drops the deepest stages and ``decoder_channels`` (one per stage, for the
    UNet family) narrows the decoder: a shallow, narrow net for small inputs and quick checks.
    """
    import segmentation_models_pytorch as smp

    archs = list(smp.MODEL_ARCHITECTURES_MAPPING)
    if arch.lower() not in archs:
        raise _unknown("model.arch", arch, archs, fallback=", ".join(archs))
    _check_encoder(encoder)
    try:
        shape = {} if decoder_channels is None else {"decoder_channels": decoder_channels}
        model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=1,
                                 encoder_depth=encoder_depth, **shape)
    except (ValueError, KeyError, TypeError) as error:  # smp refusing a pairing, a depth or a decoder shape
        message = f'smp cannot build arch "{arch}" with encoder "{encoder}" (depth {encoder_depth}): {error}'
        raise BenchError(message) from None
    load_encoder_weights(
        model.encoder, encoder_weights, imagenet=smp_imagenet(encoder), what=encoder
    )
    return model


def _check_encoder(encoder: str) -> None:
    """BenchError with close matches unless ``encoder`` is an smp encoder or ``tu-<timm model>``."""
    if encoder.startswith(TIMM_PREFIX):
        import timm

        if not timm.is_model(encoder[len(TIMM_PREFIX):]):
            known = [TIMM_PREFIX + name for name in timm.list_models()]
            raise _unknown("model.encoder", encoder, known, fallback="timm.list_models()")
        return
    from segmentation_models_pytorch.encoders import get_encoder_names

    if encoder not in get_encoder_names():
        fallback = "smp.encoders.get_encoder_names(), or tu-<timm model>"
        raise _unknown("model.encoder", encoder, get_encoder_names(), fallback=fallback)


def _unknown(key: str, value: str, known: list[str], *, fallback: str) -> BenchError:
    """``value`` is not in ``known``: name it with its close matches (or where to look)."""
    close = difflib.get_close_matches(value, known, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"choose from {fallback}"
    return BenchError(f'{key} = "{value}" is not an smp name; {hint}')
