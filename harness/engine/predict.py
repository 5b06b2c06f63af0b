"""Prediction: one or several models, test-time augmentation, maps at the image's own size.

TTA transforms are their own inverses' partners: each variant is ``(forward, inverse)`` on NCHW
tensors, so a prediction is ``inverse(model(forward(x)))``. The recipe averages the variants'
logits (alexander: "average logits, then sigmoid") or their probabilities; several models (the
folds of a run) are averaged as probabilities, as the seed's merge did. With a ``Tiling``, every
forward pass (each TTA variant of each model) is predicted tile by tile (``harness.data.tiling``).
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

from harness.data.geometry import Fit
from harness.data.tiling import Tiling, predict_tiled
from harness.engine.device import Compute

Transform = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def _vflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-2)


def _hvflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1, -2)


def _d4() -> list[tuple[Transform, Transform]]:
    variants = []
    for turns in range(4):
        for flip in (False, True):
            def forward(x, turns=turns, flip=flip):
                return torch.rot90(x.flip(-1) if flip else x, turns, dims=(-2, -1))

            def inverse(y, turns=turns, flip=flip):
                y = torch.rot90(y, -turns, dims=(-2, -1))
                return y.flip(-1) if flip else y

            variants.append((forward, inverse))
    return variants


TTA: dict[str, list[tuple[Transform, Transform]]] = {
    "none": [(_identity, _identity)],
    "hflip": [(_identity, _identity), (_hflip, _hflip)],
    "vflip": [(_identity, _identity), (_vflip, _vflip)],
    "hvflip": [(_identity, _identity), (_hflip, _hflip), (_vflip, _vflip), (_hvflip, _hvflip)],
    "d4": _d4(),
}


@torch.inference_mode()
def variant_logits(
    models: Sequence[torch.nn.Module], images: torch.Tensor, tta: str, compute: Compute,
    tiling: Tiling | None = None,
) -> list[torch.Tensor]:
    """Per model, the logits of every TTA variant, mapped back: ``(V, N, 1, H, W)`` float32."""
    per_model = []
    for model in models:
        def forward_pass(x: torch.Tensor, model=model) -> torch.Tensor:
            return model(x.contiguous(memory_format=compute.memory_format))

        outputs = []
        for forward, inverse in TTA[tta]:
            with compute.autocast():
                variant = forward(images)
                logits = forward_pass(variant) if tiling is None else predict_tiled(forward_pass, variant, tiling)
            outputs.append(inverse(logits.float()))
        per_model.append(torch.stack(outputs))
    return per_model


def combine(
    per_model: list[torch.Tensor], index: int, height: int, width: int, fit: Fit, average: str
) -> torch.Tensor:
    """The probability map ``(height, width)`` of image ``index`` of the batch.

    Logits are restored to the original size before the sigmoid (artsiom upsampled logits, not
    probabilities); variants are averaged as the recipe says, models as probabilities.
    """
    maps = []
    for logits in per_model:
        restored = fit.restore(logits[:, index], height, width)[:, 0]  # (V, height, width)
        if average == "logits":
            maps.append(torch.sigmoid(restored.mean(0)))
        else:
            maps.append(torch.sigmoid(restored).mean(0))
    return torch.stack(maps).mean(0)


def predict_loader(
    models: Sequence[torch.nn.Module],
    loader: torch.utils.data.DataLoader,
    shapes: Sequence[tuple[int, int]],
    fit: Fit,
    normalise: torch.nn.Module,
    tta: str,
    average: str,
    compute: Compute,
    tiling: Tiling | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(index, probability map)`` for every sample of a prediction loader.

    ``shapes[index]`` is the original (height, width) the map is restored to. The map stays on the
    compute device (float32), where validation scores its loss; storing it is the caller's copy.
    """
    for images, indices in loader:
        images = normalise(images.to(compute.device, non_blocking=True))
        per_model = variant_logits(models, images.contiguous(memory_format=compute.memory_format), tta, compute,
                                   tiling)
        for position, index in enumerate(indices.tolist()):
            height, width = shapes[index]
            yield index, combine(per_model, position, height, width, fit, average)
