"""vladimir's pseudo labelling: which test images are confident enough to train on, and their labels.

A finished run's fold-averaged test maps (``test_maps``) are the teacher. An image qualifies when
the share of its pixels with ``uncertain[0] < p < uncertain[1]`` is at most ``max_uncertain_share``;
the most confident qualify first (lowest share, then id, so the choice is deterministic), at most
``max_images``. Its label is its map thresholded at ``predict.threshold``, the same mask a submission
would carry. The share is computed on the stored uint8 maps (``p = u / 255``), the same numbers any
later reader of the run folder sees, so the rule recorded in ``pseudo/selection.json`` can be checked
against the maps exactly.

Pseudo-labelled images only ever join the *training* side of a fold: they are test images, never
scored, so every fold's validation (and the out-of-fold Dice) stays comparable with the first stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import albumentations as A
import numpy as np

from harness.data.dataset import DataFolder, read_image
from harness.recipe.schema import PseudoLabelSpec
from harness.runs.probabilities import TOP_LEVEL, ProbabilityMaps, binarise


@dataclass(frozen=True)
class Selection:
    """The chosen test images (most confident first), their uncertain shares, and the rule used."""

    images: tuple[str, ...]
    shares: dict[str, float]
    candidates: int  # test images the rule was applied to
    rule: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "candidates": self.candidates, "selected": len(self.images),
                "images": [{"image": i, "uncertain_share": self.shares[i]} for i in self.images]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Selection:
        rows = data["images"]
        return cls(tuple(r["image"] for r in rows), {r["image"]: r["uncertain_share"] for r in rows},
                   data["candidates"], data["rule"])


def uncertain_share(quantised: np.ndarray, low: float, high: float) -> float:
    """Share of pixels whose stored probability ``u / 255`` lies strictly between ``low`` and ``high``."""
    p = quantised.astype(np.float64) / TOP_LEVEL
    return float(np.count_nonzero((p > low) & (p < high)) / p.size)


def select_confident(maps: ProbabilityMaps, spec: PseudoLabelSpec, threshold: float) -> Selection:
    """Apply the rule of the module docstring to every map of ``maps``."""
    low, high = spec.uncertain
    shares = {image_id: uncertain_share(maps.quantised(image_id), low, high) for image_id in maps.ids}
    qualified = sorted((s, i) for i, s in shares.items() if s <= spec.max_uncertain_share)
    chosen = [i for _, i in qualified[: spec.max_images]]
    rule = {"uncertain": [low, high], "max_uncertain_share": spec.max_uncertain_share,
            "max_images": spec.max_images, "threshold": threshold, "maps": maps.path.name,
            "order": "lowest uncertain share first, then image id"}
    return Selection(tuple(chosen), {i: shares[i] for i in chosen}, len(shares), rule)


class PseudoLabelled:
    """Test images with their thresholded maps as masks, indexed like ``harness.data.loading.Images``.

    Decoded on demand; each map is read from the store when its image is.
    """

    def __init__(self, dataset: DataFolder, ids: Sequence[str], maps_path: Path, threshold: float,
                 preprocess: A.Compose | None):
        self.dataset, self.ids = dataset, list(ids)
        self.threshold, self.preprocess = threshold, preprocess
        self.maps = ProbabilityMaps.open(maps_path)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_id = self.ids[index]
        image = read_image(self.dataset, image_id, split="test")
        if self.preprocess is not None:
            image = self.preprocess(image=image)["image"]
        return image, binarise(self.maps.quantised(image_id), self.threshold).astype(np.uint8)


class Joined:
    """Two image sources as one index space: ``first`` keeps its indices, ``second`` follows it."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index < len(self.first):
            return self.first[index]
        return self.second[index - len(self.first)]
