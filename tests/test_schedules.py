"""Schedules: the three seed schedules, exactly, over 60 epochs; step, constant, cosine; validation."""

import math

import pytest

from plugins.components.schedules import constant, cosine, piecewise_cyclic, step

BASE_LR = 1e-4
EPOCHS = range(60)


def _vladimir(epoch: int) -> float:
    return 1e-4 * 0.5 ** ((epoch % 5) // 2)


def _alexander(epoch: int) -> float:
    if epoch <= 11:
        return 1e-4
    if epoch <= 22:
        return 1e-5
    return [1e-4, 1e-4, 1e-5, 1e-5, 1e-6][(epoch - 23) % 5]


def _artsiom(epoch: int) -> float:
    return ([1e-4] * 10 + [1e-5] * 5 + [1e-6] * 5)[epoch % 20]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"cycle": [[1, 2], [0.5, 2], [0.25, 1]]}, _vladimir),
        ({"lead": [[1, 12], [0.1, 11]], "cycle": [[1, 2], [0.1, 2], [0.01, 1]]}, _alexander),
        ({"cycle": [[1, 10], [0.1, 5], [0.01, 5]]}, _artsiom),
    ],
    ids=["vladimir", "alexander", "artsiom"],
)
def test_seed_schedules_give_the_seed_lr_sequence(params, expected):
    multiplier = piecewise_cyclic(**params)
    got = [BASE_LR * multiplier(epoch) for epoch in EPOCHS]
    assert got == pytest.approx([expected(epoch) for epoch in EPOCHS], rel=1e-12)


def test_per_epoch_schedule_is_constant_within_an_epoch():
    multiplier = piecewise_cyclic(cycle=[[1, 2], [0.5, 2], [0.25, 1]])
    assert multiplier(1.99) == 1 and multiplier(2.0) == multiplier(3.75) == 0.5


def test_step_halves_every_100_epochs():
    multiplier = step(every=100, factor=0.5)
    assert [multiplier(e) for e in (0, 99.9, 100, 250, 300)] == [1, 1, 0.5, 0.25, 0.125]


def test_constant_is_one():
    assert constant()(0) == constant()(123.4) == 1.0


def test_cosine_with_warmup():
    multiplier = cosine(epochs=10, warmup_epochs=2, min_multiplier=0.1)
    assert multiplier(0) == 0 and multiplier(1) == pytest.approx(0.5)
    assert multiplier(2) == pytest.approx(1.0)
    assert multiplier(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert multiplier(10) == pytest.approx(0.1) and multiplier(50) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("factory", "params", "message"),
    [
        (piecewise_cyclic, {"cycle": []}, "cycle must hold"),
        (piecewise_cyclic, {"cycle": [[1, 0]]}, r"cycle\[0\]: epochs"),
        (piecewise_cyclic, {"lead": [[1, 3], [0.1, -1]], "cycle": [[1, 1]]}, r"lead\[1\]: epochs"),
        (piecewise_cyclic, {"cycle": [[-1, 2]]}, "multiplier"),
        (step, {"every": 0}, "every"),
        (cosine, {"epochs": 5, "warmup_epochs": 5}, "warmup_epochs"),
    ],
)
def test_bad_parameters_raise_value_error(factory, params, message):
    with pytest.raises(ValueError, match=message):
        factory(**params)
