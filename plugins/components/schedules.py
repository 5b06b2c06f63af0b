"""Learning-rate schedules of the three Carvana recipes, as factories for ``bench_schedules``.

Each factory returns ``multiplier(epoch) -> float``, the factor applied to the optimizer's base lr;
``epoch`` is fractional. Per-epoch schedules read ``int(epoch)`` so the lr is constant within an
epoch, as in the seed code; ``cosine`` uses the fraction. The returned callables are
``functools.partial`` objects of module-level functions: picklable, with a readable repr.
Bad parameters raise ``ValueError`` with a message naming the parameter.
"""

from __future__ import annotations

import math
from functools import partial
from itertools import accumulate
from typing import Callable

Multiplier = Callable[[float], float]
Segments = tuple[tuple[float, int], ...]


def _check_segments(name: str, segments: Segments) -> None:
    for position, (multiplier, epochs) in enumerate(segments):
        if epochs < 1:
            raise ValueError(f"{name}[{position}]: epochs must be a positive integer, got {epochs}")
        if not multiplier >= 0 or math.isinf(multiplier):
            raise ValueError(
                f"{name}[{position}]: multiplier must be finite and >= 0, got {multiplier}"
            )


def _segment_multiplier(segments: Segments, ends: tuple[int, ...], epoch: int) -> float:
    """The multiplier of the segment that contains ``epoch`` (0 <= epoch < ends[-1])."""
    return next(mult for (mult, _), end in zip(segments, ends) if epoch < end)


def _piecewise_cyclic(epoch: float, *, lead: Segments, cycle: Segments) -> float:
    lead_ends = tuple(accumulate(epochs for _, epochs in lead))
    cycle_ends = tuple(accumulate(epochs for _, epochs in cycle))
    whole = int(epoch)
    lead_length = lead_ends[-1] if lead_ends else 0
    if whole < lead_length:
        return _segment_multiplier(lead, lead_ends, whole)
    return _segment_multiplier(cycle, cycle_ends, (whole - lead_length) % cycle_ends[-1])


def _step(epoch: float, *, every: int, factor: float) -> float:
    return factor ** (int(epoch) // every)


def _constant(epoch: float) -> float:
    return 1.0


def _cosine(epoch: float, *, epochs: float, warmup_epochs: float, min_multiplier: float) -> float:
    if epoch < warmup_epochs:
        return epoch / warmup_epochs
    progress = min(1.0, (epoch - warmup_epochs) / (epochs - warmup_epochs))
    return min_multiplier + (1 - min_multiplier) * 0.5 * (1 + math.cos(math.pi * progress))


def piecewise_cyclic(
    *,
    lead: tuple[tuple[float, int], ...] = (),
    cycle: tuple[tuple[float, int], ...] = ((1.0, 1),),
) -> Multiplier:
    """``(multiplier, epochs)`` segments: ``lead`` runs once, then ``cycle`` repeats forever.

    One shape covers all three seed recipes (TOML arrays of ``[multiplier, epochs]`` pairs):

    * vladimir, ``1e-4 * 0.5 ** ((epoch % 5) // 2)``: ``cycle = [[1, 2], [0.5, 2], [0.25, 1]]``.
    * alexander, 1e-4 for epochs 0-11, 1e-5 for 12-22, then 1e-4, 1e-4, 1e-5, 1e-5, 1e-6 cyclic:
      ``lead = [[1, 12], [0.1, 11]]``, ``cycle = [[1, 2], [0.1, 2], [0.01, 1]]``.
    * artsiom's VGG11-UNet, a 20-epoch cycle 1e-4 x10, 1e-5 x5, 1e-6 x5:
      ``cycle = [[1, 10], [0.1, 5], [0.01, 5]]``.

    The restarts to a high lr are what let the recipes snapshot several minima per run.
    """
    lead, cycle = tuple(map(tuple, lead)), tuple(map(tuple, cycle))
    if not cycle:
        raise ValueError("cycle must hold at least one [multiplier, epochs] segment")
    _check_segments("lead", lead)
    _check_segments("cycle", cycle)
    return partial(_piecewise_cyclic, lead=lead, cycle=cycle)


def step(*, every: int = 100, factor: float = 0.5) -> Multiplier:
    """``factor ** (epoch // every)``: artsiom's from-scratch UNet halves the lr every 100 epochs."""
    if every < 1:
        raise ValueError(f"every must be a positive number of epochs, got {every}")
    if not factor > 0 or math.isinf(factor):
        raise ValueError(f"factor must be finite and positive, got {factor}")
    return partial(_step, every=every, factor=factor)


def constant() -> Multiplier:
    """The base lr throughout (multiplier 1), for recipes and tuning runs without a schedule."""
    return _constant


def cosine(
    *, epochs: float = 50.0, warmup_epochs: float = 0.0, min_multiplier: float = 0.0
) -> Multiplier:
    """Per-step cosine decay from 1 to ``min_multiplier`` over ``epochs``, after a linear warm-up.

    Not in the seed; a modern baseline to compare the seed's cyclic schedules against. Set ``epochs``
    to the recipe's epoch count: after it the multiplier stays at ``min_multiplier``. The warm-up
    rises linearly from 0 over ``warmup_epochs`` (fractional epochs, so it is smooth within an
    epoch), which keeps Adam's first, poorly estimated steps small.
    """
    if not 0 <= warmup_epochs < epochs:
        raise ValueError(
            f"need 0 <= warmup_epochs < epochs, got warmup_epochs={warmup_epochs}, epochs={epochs}"
        )
    if not 0 <= min_multiplier <= 1:
        raise ValueError(f"min_multiplier must be in [0, 1], got {min_multiplier}")
    return partial(
        _cosine, epochs=epochs, warmup_epochs=warmup_epochs, min_multiplier=min_multiplier
    )
