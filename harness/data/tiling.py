"""Tiled inference: a large input predicted as overlapping tiles, blended back into one map.

A full-resolution UNet forward pass at 1920x1280 holds activations of several GB; predicting tiles
bounds that by the tile size instead of the image size. Three choices make tiling safe:

* **Tiles start on multiples of 32.** Tile sides and the overlap are multiples of 32, and the last
  tile of a row is shifted back to end at the border (its start ``side - tile`` is a multiple of 32
  too, since fitted inputs are). So every tile sees the same pooling grid as the untiled input, and
  away from tile edges a network computes exactly what it would untiled.
* **Seams are blended with a window that is zero at inner tile edges.** Along a side that has a
  neighbouring tile, the weight is 0 for the first ``overlap / 4`` pixels (where zero-padding at
  the tile edge corrupts the prediction most), then ramps linearly to 1 over ``overlap / 2`` pixels.
  Sides on the image border keep weight 1: there the untiled model sees the same border. The
  neighbour always covers a tile's zero band with positive weight (tiles overlap by at least
  ``overlap``, which is at most half a tile, so a tile's ramps never reach into the neighbour's zero
  band), so the normalised sum is defined everywhere.
* **Blending is a normalised weighted sum of logits**, so a pointwise model (1x1 convolutions)
  gives exactly the untiled output, and a model whose receptive field reaches less than
  ``overlap / 4`` pixels does too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from harness.data.geometry import MULTIPLE
from harness.errors import BenchError


@dataclass(frozen=True)
class Tiling:
    """Tile size ``(width, height)`` and overlap in pixels, all multiples of 32."""

    tile: tuple[int, int]
    overlap: int = 64

    def __post_init__(self) -> None:
        problem = tiling_problem(self.tile, self.overlap)
        if problem:
            raise BenchError(problem)


def tiling_problem(tile: tuple[int, int], overlap: int) -> str | None:
    """Why this tile size and overlap cannot be used, or None (shared with recipe validation)."""
    width, height = tile
    if width % MULTIPLE or height % MULTIPLE or width <= 0 or height <= 0:
        return f"predict.tile {width}x{height}: both sides must be positive multiples of {MULTIPLE}"
    if overlap < 0 or overlap % MULTIPLE:
        return f"predict.tile_overlap {overlap}: must be a multiple of {MULTIPLE} (0 allowed)"
    if 2 * overlap > min(width, height):
        return f"predict.tile_overlap {overlap}: must be at most half the tile's shorter side ({width}x{height})"
    return None


def tile_starts(side: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``[0, side)``, neighbours overlapping by at
    least ``overlap``; the last one ends exactly at ``side``. A side no longer than a tile is one tile."""
    if side <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, side - tile, stride))
    return starts + [side - tile]


def ramp(length: int, overlap: int, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    """1-D weights of one tile side: zero band, linear ramp, then 1 (see the module docstring)."""
    weights = torch.ones(length)
    zero, rise = overlap // 4, overlap // 2
    if overlap == 0:
        return weights
    up = torch.cat([torch.zeros(zero), torch.arange(1, rise + 1) / (rise + 1)])
    if ramp_start:
        weights[: len(up)] = torch.minimum(weights[: len(up)], up)
    if ramp_end:
        weights[length - len(up):] = torch.minimum(weights[length - len(up):], up.flip(0))
    return weights


def predict_tiled(
    model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, tiling: Tiling
) -> torch.Tensor:
    """Logits ``(N, C, H, W)`` of ``images`` ``(N, 3, H, W)``, predicted tile by tile and blended.

    ``H`` and ``W`` are multiples of 32 (fitted inputs are); a side shorter than the tile is one tile.
    """
    height, width = images.shape[-2:]
    tile_w, tile_h = min(tiling.tile[0], width), min(tiling.tile[1], height)
    rows, cols = tile_starts(height, tile_h, tiling.overlap), tile_starts(width, tile_w, tiling.overlap)
    total, weight = None, torch.zeros(height, width, device=images.device)
    for top in rows:
        for left in cols:
            logits = model(images[..., top : top + tile_h, left : left + tile_w]).float()
            window = (ramp(tile_h, tiling.overlap, top > 0, top + tile_h < height)[:, None]
                      * ramp(tile_w, tiling.overlap, left > 0, left + tile_w < width)[None, :]).to(images.device)
            if total is None:
                total = torch.zeros(*logits.shape[:2], height, width, device=images.device)
            total[..., top : top + tile_h, left : left + tile_w] += logits * window
            weight[top : top + tile_h, left : left + tile_w] += window
    return total / weight
