"""Prediction: one or several models, test-time augmentation, maps at the image's own size.

TTA transforms are their own inverses' partners: each variant is ``(forward, inverse)`` on NCHW
tensors, so a prediction is ``inverse(model(forward(x)))``. The recipe averages the variants'
logits (alexander: "average logits, then sigmoid") or their probabilities; several models (the
folds of a run) are averaged as probabilities, or, with ``predict.fold_average``, as the original
teams merged their folds: each fold's map quantised to uint8 levels, then the levels averaged and
quantised again (``merge_folds``). With a ``Tiling``, every forward pass (each TTA variant of each
model) is predicted tile by tile (``harness.data.tiling``).
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

from harness.data.geometry import Fit
from harness.data.tiling import Tiling, predict_tiled
from harness.engine.device import Compute
from harness.runs.probabilities import TOP_LEVEL

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


@torch.no_grad()
def variant_logits(
    models: Sequence[torch.nn.Module], images: torch.Tensor, tta: str, compute: Compute,
    tiling: Tiling | None = None,
) -> list[list[torch.Tensor]]:
    """Per model, the logits ``(N, 1, H, W)`` (float32) of every TTA variant, mapped back.

    Each variant of the input is made once and given to every model in turn: a flip of a full-size
    float input costs as much as a forward pass of a small network, and only one variant is held at
    a time.
    """
    def forward_pass(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x.contiguous(memory_format=compute.memory_format))

    per_model: list[list[torch.Tensor]] = [[] for _ in models]
    for forward, inverse in TTA[tta]:
        with compute.autocast():
            variant = forward(images)
            for model, outputs in zip(models, per_model):
                logits = (forward_pass(model, variant) if tiling is None
                          else predict_tiled(lambda x, model=model: forward_pass(model, x), variant, tiling))
                outputs.append(inverse(logits.float()))
    return per_model


FOLD_AVERAGES = ("uint8_floor", "uint8_round")


def merge_folds(maps: torch.Tensor, fold_average: str | None = None) -> torch.Tensor:
    """Merge the models' probability maps ``(M, H, W)`` (float32) into one ``(H, W)``.

    ``None``: the mean of the probabilities. ``"uint8_floor"``: vladimir's and alexander's merge: each
    map written as ``(p * 255).astype(np.uint8)`` (``ternaus/src/generate_png_preds.py:40``,
    ``albu/src/carvana_eval.py:37``), then ``np.mean`` of the uint8 maps (float64) cast back with
    ``.astype(np.uint8)`` (``ternaus/src/merge_test.py:16``, ``albu/src/carvana_tools.py:16``): a floor
    of a float64 quotient of integers, which is exactly the integer ``sum // M``. ``"uint8_round"``:
    artsiom's: ``np.round(p * 255)`` per map (``asanakoy/generate_sub.py:56``), the float32 sum of the
    levels divided by ``M`` in float32 and ``np.round`` again (``asanakoy/generate_sub_average.py:52-64``;
    NumPy and torch both round halves to even). ``p * 255`` is float32 in both, as here, so equal maps
    give equal levels. The result is ``levels / 255``, which the uint8 store (``round(p * 255)``)
    writes back as exactly those levels.
    """
    if fold_average is None:
        return maps.mean(0)
    scaled = maps.float() * TOP_LEVEL
    if fold_average == "uint8_floor":
        total = torch.floor(scaled).sum(0)  # integers <= 255 * M: exact in float32
        merged = torch.div(total, maps.shape[0], rounding_mode="floor")
    elif fold_average == "uint8_round":
        merged = torch.round(torch.round(scaled).sum(0) / maps.shape[0])
    else:
        raise ValueError(f"fold_average {fold_average!r}: expected one of {FOLD_AVERAGES} or None")
    return merged / TOP_LEVEL


def quantised(probability: torch.Tensor) -> torch.Tensor:
    """``harness.runs.probabilities.quantise`` on the device: uint8 ``round(p * 255)``, the same levels bit
    for bit (float32 clamp and product, halves rounded to even in both), and a quarter of the bytes to
    copy back to the host."""
    return probability.clamp(0.0, 1.0).mul_(TOP_LEVEL).round_().to(torch.uint8)


def combine(
    per_model: list[list[torch.Tensor]], index: int, height: int, width: int, fit: Fit, average: str,
    fold_average: str | None = None,
) -> torch.Tensor:
    """The probability map ``(height, width)`` of image ``index`` of the batch.

    Logits are restored to the original size before the sigmoid (artsiom upsampled logits, not
    probabilities); variants are averaged as the recipe says, models by ``merge_folds``.
    """
    maps = []
    for variants in per_model:
        restored = [fit.restore(logits[index : index + 1], height, width)[0, 0] for logits in variants]
        if average == "logits":
            maps.append(torch.sigmoid(_mean(restored)))
        else:
            maps.append(_mean([torch.sigmoid(logits) for logits in restored]))
    if fold_average is None:
        return _mean(maps)
    return merge_folds(torch.stack(maps), fold_average)


def _mean(maps: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(maps).mean(0)``, summed in the same order, without a copy of every map."""
    if len(maps) == 1:
        return maps[0]
    total = maps[0].clone(memory_format=torch.contiguous_format)
    for other in maps[1:]:
        total += other
    return total.div_(len(maps))


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
    fold_average: str | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(index, probability map)`` for every sample of a prediction loader.

    ``shapes[index]`` is the original (height, width) the map is restored to. The map stays on the
    compute device (float32), where validation scores its loss; storing it is the caller's copy.
    ``fold_average`` merges several models (``merge_folds``); validation predicts with one model and
    leaves it unset.
    """
    for images, indices in loader:
        images = normalise(images.to(compute.device, non_blocking=True), compute.memory_format)
        per_model = variant_logits(models, images, tta, compute, tiling)
        for position, index in enumerate(indices.tolist()):
            height, width = shapes[index]
            yield index, combine(per_model, position, height, width, fit, average, fold_average)
