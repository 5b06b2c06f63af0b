"""Losses: hand-computed values, the Dice terms at a perfect prediction, the border map, gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from plugins.components.losses import (
    bce_dice,
    bce_log_dice,
    border_weights,
    scaled_kernel,
    top_k_bce,
    weighted_bce_dice,
)

LOGITS = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
TARGET = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _hand_bce_and_dice() -> tuple[float, float]:
    logits, target = [0.0, 2.0, -1.0, 3.0], [0, 1, 0, 1]
    probs = [_sigmoid(x) for x in logits]
    bce = -sum(t * math.log(p) + (1 - t) * math.log(1 - p) for p, t in zip(probs, target)) / 4
    intersection = sum(p * t for p, t in zip(probs, target))
    dice = (2 * intersection + 1) / (sum(probs) + sum(target) + 1)
    return bce, dice


def _perfect(target: torch.Tensor) -> torch.Tensor:
    return (target * 2 - 1) * 30


def _car_masks(size: int = 64) -> torch.Tensor:
    target = torch.zeros(2, 1, size, size)
    target[0, :, 16:48, 10:54] = 1
    target[1, :, 20:40, 20:40] = 1
    return target


def test_bce_dice_matches_hand_computation():
    bce, dice = _hand_bce_and_dice()
    loss = bce_dice(dice_weight=0.5)(LOGITS, TARGET)
    assert loss.item() == pytest.approx(bce + 0.5 * (1 - dice), rel=1e-6)


def test_bce_log_dice_matches_hand_computation():
    bce, dice = _hand_bce_and_dice()
    loss = bce_log_dice(dice_weight=2.0)(LOGITS, TARGET)
    assert loss.item() == pytest.approx(bce - 2.0 * math.log(dice), rel=1e-6)


def test_dice_per_image_differs_from_batch_dice():
    target = _car_masks()
    logits = torch.zeros_like(target)  # p = 0.5 everywhere: the small car's Dice is much worse
    per_image = bce_dice(per_image=True)(logits, target)
    pooled = bce_dice(per_image=False)(logits, target)
    assert per_image.item() > pooled.item()


@pytest.mark.parametrize("factory", [bce_dice, bce_log_dice, weighted_bce_dice])
def test_perfect_logits_give_near_zero_loss(factory):
    target = _car_masks()
    assert factory()(_perfect(target), target).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("factory", [bce_dice, bce_log_dice, weighted_bce_dice, top_k_bce])
def test_gradients_flow_and_loss_is_fp32(factory):
    target = _car_masks()
    logits = torch.randn_like(target, dtype=torch.bfloat16).requires_grad_()
    loss = factory()(logits, target)
    loss.backward()
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_border_weights_band_around_the_edge():
    target = torch.zeros(1, 1, 64, 64)
    target[..., 16:48, 16:48] = 1
    weights = border_weights(target, kernel=9, border_weight=3.0)
    assert set(weights.unique().tolist()) == {1.0, 3.0}
    # The band spans the 4 pixels (kernel // 2) either side of the edge at rows/cols 16 and 47.
    assert (weights[0, 0, 12:20, 32] == 3).all() and (weights[0, 0, 44:52, 32] == 3).all()
    assert weights[0, 0, 11, 32] == 1 and weights[0, 0, 52, 32] == 1
    assert weights[0, 0, 32, 32] == 1  # far inside the car
    assert weights[0, 0, 2, 2] == 1  # far outside


def test_border_weights_ignore_the_frame_of_the_image():
    target = torch.zeros(1, 1, 32, 32)
    target[..., 16:, :] = 1  # a car touching the bottom and both sides
    weights = border_weights(target, kernel=5, border_weight=3.0)
    assert (weights[0, 0, 31, :] == 1).all() and (weights[0, 0, 20:31, 0] == 1).all()
    assert (weights[0, 0, 16, :] == 3).all()


@pytest.mark.parametrize(
    ("height", "expected"), [(1024, 41), (1280, 51), (512, 21), (256, 11), (64, 3)]
)
def test_kernel_scales_with_height_and_stays_odd(height, expected):
    assert scaled_kernel(41, height, 1024) == expected


def test_weighted_loss_matches_hand_weighting():
    target = _car_masks(32)
    logits = torch.randn_like(target)
    weights = border_weights(target, kernel=scaled_kernel(41, 32, 1024), border_weight=3.0)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (per_pixel * weights).sum() / weights.sum()
    probs, w2 = torch.sigmoid(logits), weights**2
    dice = ((2 * (w2 * probs * target).sum((1, 2, 3)) + 1)
            / ((w2 * probs).sum((1, 2, 3)) + (w2 * target).sum((1, 2, 3)) + 1)).mean()
    expected = bce + 1 - dice
    assert weighted_bce_dice()(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_top_k_bce_is_the_mean_of_the_hardest_pixels():
    target = _car_masks(16)
    logits = torch.randn_like(target)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten()
    count = math.ceil(0.1 * per_pixel.numel())
    expected = per_pixel.sort(descending=True).values[:count].mean()
    assert top_k_bce(top_k=0.1)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    assert top_k_bce(top_k=1.0)(logits, target).item() == pytest.approx(
        per_pixel.mean().item(), rel=1e-6
    )


@pytest.mark.parametrize(
    ("factory", "params"),
    [
        (top_k_bce, {"top_k": 0.0}),
        (top_k_bce, {"top_k": 1.5}),
        (weighted_bce_dice, {"kernel": 0}),
        (weighted_bce_dice, {"border_weight": -1.0}),
    ],
)
def test_bad_parameters_raise_value_error(factory, params):
    with pytest.raises(ValueError):
        factory(**params)
