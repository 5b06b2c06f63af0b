"""Probability maps of many images in one memory-mapped file, quantised to uint8.

At Carvana scale the out-of-fold maps alone are 5088 x 1918 x 1280 bytes (12 GB), and the test maps
twenty times that, so nothing may hold them in memory: every map is written and read through a
``numpy.memmap``, one image at a time. uint8 (``round(p * 255)``) keeps a quarter of the fp32 size;
``p >= 0.5`` and ``u >= 128`` select exactly the same pixels, so the seed's threshold survives the
rounding. Images may differ in size: the index stores each one's offset and shape.

Layout for a store at ``PATH``: ``PATH.u8`` (the bytes) and ``PATH.json`` (ids, shapes, offsets).
Writing a map twice overwrites it, so a resumed run can redo any part of its predictions.

The file's blocks are allocated when the store is created. A memory-mapped file is otherwise sparse,
and a page written into it after the disk has filled kills the process with SIGBUS: no exception,
no message, hours into a run. Allocating up front turns that into one line before any work is done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from harness.errors import BenchError
from harness.io import atomic_write_json, cannot_write

TOP_LEVEL = 255  # probabilities are stored as round(p * TOP_LEVEL), uint8 levels 0..255


def quantise(probability: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(probability, 0.0, 1.0) * TOP_LEVEL).astype(np.uint8)


def levels_to_float(levels: np.ndarray) -> np.ndarray:
    """Stored uint8 levels as the float32 probabilities every reader merges (a fresh array).

    The one conversion: ``bench ensemble``'s exact test pass runs it on gathered pixels and must get
    the very values ``read_float`` gives.
    """
    return levels.astype(np.float32) / TOP_LEVEL


def binarise(quantised: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The mask ``p >= threshold`` of a quantised map: ``u >= c`` with the smallest ``c`` whose rounding
    interval ``[c - 0.5, c + 0.5)`` lies at or above ``threshold * 255`` (``c = 128`` for 0.5).

    The ``1e-9`` absorbs float error, so a threshold written as ``(c - 0.5) / 255`` selects ``c`` again.
    """
    return quantised >= int(np.ceil(threshold * TOP_LEVEL + 0.5 - 1e-9))


class ProbabilityMaps:
    """A fixed set of image ids, each with its own (height, width) map; see the module docstring."""

    def __init__(self, path: Path, ids: list[str], shapes: list[tuple[int, int]], mode: str):
        self.path = Path(path)
        self.shapes = {image_id: tuple(shape) for image_id, shape in zip(ids, shapes)}
        sizes = [h * w for h, w in shapes]
        self.offsets = dict(zip(ids, np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(int).tolist()))
        total = max(1, sum(sizes))
        self._bytes = np.memmap(self.path.with_suffix(".u8"), dtype=np.uint8, mode=mode, shape=(total,))

    @classmethod
    def create(cls, path: Path, shapes: Mapping[str, tuple[int, int]]) -> ProbabilityMaps:
        """Open the store at ``path`` for writing, allocating it if it does not exist yet."""
        path = Path(path)
        ids, dims = list(shapes), [tuple(shape) for shape in shapes.values()]
        index = path.with_suffix(".json")
        if index.exists():
            existing = cls.open(path, mode="r+")
            if list(existing.shapes) != ids or list(existing.shapes.values()) != dims:
                raise BenchError(f"{index}: holds other images than this run predicts; remove it to start over")
            return existing
        path.parent.mkdir(parents=True, exist_ok=True)
        _allocate(path.with_suffix(".u8"), max(1, sum(h * w for h, w in dims)))
        store = cls(path, ids, dims, mode="r+")
        atomic_write_json(index, {"ids": ids, "shapes": [list(s) for s in dims]})
        return store

    @classmethod
    def open(cls, path: Path, mode: str = "r") -> ProbabilityMaps:
        index = Path(path).with_suffix(".json")
        try:
            meta = json.loads(index.read_text())
            return cls(Path(path), meta["ids"], [tuple(s) for s in meta["shapes"]], mode=mode)
        except (OSError, ValueError, KeyError) as error:
            raise BenchError(f"{index}: cannot read probability maps ({error})") from None

    @property
    def ids(self) -> list[str]:
        return list(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.shapes

    def _view(self, image_id: str) -> np.ndarray:
        height, width = self.shapes[image_id]
        start = self.offsets[image_id]
        return self._bytes[start : start + height * width].reshape(height, width)

    def quantised(self, image_id: str) -> np.ndarray:
        """The stored uint8 map (a view into the file: copy it to keep it)."""
        return self._view(image_id)

    def read_copy(self, image_id: str) -> np.ndarray:
        """The stored uint8 map, read with a plain file read instead of through the mapping.

        A scan over 100,064 maps through the memmap leaves every page it touched mapped into the
        process (resident until the kernel reclaims it); a plain read keeps memory flat.
        """
        height, width = self.shapes[image_id]
        flat = np.fromfile(self.path.with_suffix(".u8"), dtype=np.uint8, count=height * width,
                           offset=self.offsets[image_id])
        return flat.reshape(height, width)

    def read_float(self, image_id: str) -> np.ndarray:
        """``read_copy`` as float32 in [0, 1]: the same values as ``self[image_id]``, memory kept flat."""
        return levels_to_float(self.read_copy(image_id))

    def __getitem__(self, image_id: str) -> np.ndarray:
        """The probability map as float32 in [0, 1]."""
        return self._view(image_id).astype(np.float32) / TOP_LEVEL

    def __setitem__(self, image_id: str, probability: np.ndarray) -> None:
        if probability.shape != self.shapes[image_id]:
            raise ValueError(f"{image_id}: map {probability.shape} != image {self.shapes[image_id]}")
        self._view(image_id)[:] = quantise(probability)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for image_id in self.shapes:
            yield image_id, self[image_id]

    def flush(self) -> None:
        self._bytes.flush()


def _allocate(path: Path, size: int) -> None:
    """Create ``path`` with ``size`` zero bytes whose blocks are reserved on disk (see the module docstring)."""
    try:
        with open(path, "wb") as handle:
            handle.truncate(size)
            if hasattr(os, "posix_fallocate"):  # Linux; elsewhere the file stays sparse
                os.posix_fallocate(handle.fileno(), 0, size)
    except OSError as error:
        path.unlink(missing_ok=True)
        raise cannot_write(path, error, needed=size) from None
