"""Probability maps of many images, quantised to uint8 and compressed one image per file.

At Carvana scale a run predicts 5,088 out-of-fold and 100,064 test maps of 1918x1280: 258 GB as raw
uint8, too much for the disk of the machines that train them. A car's map is 0 or 255 almost
everywhere, with a thin uncertain band along its outline, so it compresses well without loss. The
codec was chosen by measurement on a full-size car-like map whose uncertain band (11% of the pixels)
is several times wider than a trained model's, on a 2-core AVX512 CPU (``docs/scale.md``):

=========  =====  ======  ======
codec      ratio  encode  decode
=========  =====  ======  ======
zstd -3     23x   1.7 ms  0.35 ms
zstd -1     19x   1.3 ms  0.32 ms
zlib -1     17x   6.2 ms  2.2 ms
PNG (cv2)   26x    23 ms  6.1 ms
blosc-lz4   13x   0.5 ms  0.17 ms
=========  =====  ======  ======

zstd level 3 (the ``zstandard`` binding): within 10% of PNG's size at a seventeenth of its decode
time, which a merge of four members pays four times per image. A chunked array (zarr) would add a
dependency and fixed chunk shapes for nothing a folder of files lacks: images may differ in size.

Exactness: maps are stored as ``round(p * 255)``; ``p >= 0.5`` and ``u >= 128`` select exactly the same
pixels, so the seed's threshold survives the rounding (``binarise``).

Layout for a store at ``PATH`` (a folder): ``PATH/index.json`` (ids and shapes, written first) and one
``PATH/<id>.zst`` per image written so far. Each file is written to a temporary name and renamed, so
a killed writer leaves whole files only, and what exists is done: a resumed run or ``bench predict``
skips it (``written_ids``). Files are not fsynced one by one (100,064 syncs would cost minutes); a power
cut can leave an empty file, which reading reports by name.

Runs written before these stores hold one raw file (``PATH.u8`` with ``PATH.json``): ``open`` still reads
them (``RawMaps``); resuming such a run is refused in one line.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Mapping

import numpy as np
import zstandard

from harness.errors import BenchError
from harness.io import atomic_write_json, cannot_write, remove_stale_temporaries

TOP_LEVEL = 255  # probabilities are stored as round(p * TOP_LEVEL), uint8 levels 0..255
LEVEL_COUNT = TOP_LEVEL + 1  # how many levels there are: a histogram over levels has this many bins
ZSTD_LEVEL = 3
INDEX = "index.json"
SUFFIX = ".zst"
# What a run reserves per map, as a share of its raw size: the measured 23x of a band several times
# wider than a trained model's, with room to spare (a fold's early, unsure maps compress less).
ESTIMATED_RATIO = 16


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
    return quantised >= binarise_level(threshold)


def binarise_level(threshold: float) -> int:
    """The lowest level ``binarise`` counts as the object at ``threshold``."""
    return int(np.ceil(threshold * TOP_LEVEL + 0.5 - 1e-9))


def estimated_bytes(shapes: Mapping[str, tuple[int, int]]) -> int:
    """The disk a store of these maps is expected to take (``ESTIMATED_RATIO``)."""
    return sum(height * width for height, width in shapes.values()) // ESTIMATED_RATIO


_codecs = threading.local()  # zstd contexts are not safe to share between threads


def _compressor() -> zstandard.ZstdCompressor:
    if not hasattr(_codecs, "compressor"):
        _codecs.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return _codecs.compressor


def compress(levels: np.ndarray) -> bytes:
    """A map's uint8 levels as a store file holds them."""
    return _compressor().compress(np.ascontiguousarray(levels, dtype=np.uint8).data)


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_codecs, "decompressor"):
        _codecs.decompressor = zstandard.ZstdDecompressor()
    return _codecs.decompressor


class ProbabilityMaps:
    """A fixed set of image ids, each with its own (height, width) map; see the module docstring.

    Safe to write from several threads or processes at once, one image each.
    """

    def __init__(self, path: Path, ids: list[str], shapes: list[tuple[int, int]]):
        self.path = Path(path)
        self.shapes = {image_id: tuple(shape) for image_id, shape in zip(ids, shapes)}

    @classmethod
    def create(cls, path: Path, shapes: Mapping[str, tuple[int, int]]) -> ProbabilityMaps:
        """Open the store at ``path`` for writing, creating it if it does not exist yet; a store found
        there must hold the same images (a resumed run keeps the maps it wrote)."""
        path = Path(path)
        ids, dims = list(shapes), [tuple(shape) for shape in shapes.values()]
        if _raw_index(path).is_file():
            raise BenchError(f"{_raw_index(path)}: an uncompressed store, written by an older segbench; finish "
                             "this run with that version, or start it again in a new folder")
        if (path / INDEX).exists():
            existing = cls.open(path)
            if list(existing.shapes) != ids or list(existing.shapes.values()) != dims:
                raise BenchError(f"{path / INDEX}: holds other images than this run predicts; remove {path} "
                                 "to start over")
            existing._remove_temporary_files()
            return existing
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise cannot_write(path, error) from None
        atomic_write_json(path / INDEX, {"codec": f"zstd-{ZSTD_LEVEL} uint8", "ids": ids,
                                         "shapes": [list(s) for s in dims]})
        return cls(path, ids, dims)

    @classmethod
    def open(cls, path: Path) -> ProbabilityMaps | RawMaps:
        """The store at ``path``: compressed, or raw from an older segbench; one line when it is neither."""
        path = Path(path)
        index = path / INDEX if (path / INDEX).is_file() else _raw_index(path)
        try:
            meta = json.loads(index.read_text())
            ids, shapes = meta["ids"], [tuple(s) for s in meta["shapes"]]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise BenchError(f"{index}: cannot read probability maps ({error})") from None
        if index.parent == path:
            return cls(path, ids, shapes)
        return RawMaps(path, ids, shapes)

    @property
    def ids(self) -> list[str]:
        return list(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.shapes

    def file(self, image_id: str) -> Path:
        return self.path / f"{image_id}{SUFFIX}"

    def written_ids(self) -> set[str]:
        """Every image whose map is on disk, from one listing of the folder (cheap for 100,064 images):
        what a resumed job skips."""
        with os.scandir(self.path) as entries:
            names = {entry.name[: -len(SUFFIX)] for entry in entries if entry.name.endswith(SUFFIX)}
        return names & self.shapes.keys()

    def quantised(self, image_id: str) -> np.ndarray:
        """The stored uint8 map (read-only: copy it to change it)."""
        height, width = self.shapes[image_id]
        path = self.file(image_id)
        try:
            levels = _decompressor().decompress(path.read_bytes(), max_output_size=height * width)
        except FileNotFoundError:
            raise BenchError(f"{path}: no map of {image_id} in this store (its prediction did not finish)") from None
        except (OSError, zstandard.ZstdError) as error:
            raise BenchError(f"{path}: cannot be read back ({error}); delete it and predict again "
                             "(bench run --resume, or bench predict)") from None
        if len(levels) != height * width:
            raise BenchError(f"{path}: holds {len(levels)} values for a {width}x{height} map; delete it and "
                             "predict again (bench run --resume, or bench predict)")
        return np.frombuffer(levels, dtype=np.uint8).reshape(height, width)

    def read_float(self, image_id: str) -> np.ndarray:
        """The probability map as float32 in [0, 1]."""
        return levels_to_float(self.quantised(image_id))

    __getitem__ = read_float

    def put(self, image_id: str, levels: np.ndarray) -> None:
        """Write an image's quantised map (uint8 levels), atomically."""
        if levels.shape != self.shapes[image_id] or levels.dtype != np.uint8:
            raise ValueError(f"{image_id}: map {levels.dtype} {levels.shape} != uint8 {self.shapes[image_id]}")
        self.put_compressed(image_id, compress(levels))

    def put_compressed(self, image_id: str, data: bytes) -> None:
        """Write an image's map as ``compress`` encoded it (in another process, perhaps), atomically."""
        path = self.file(image_id)
        temporary = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        try:
            temporary.write_bytes(data)
            os.replace(temporary, path)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise cannot_write(path, error) from None

    def __setitem__(self, image_id: str, probability: np.ndarray) -> None:
        """Quantise a probability map (float, [0, 1]) and write it."""
        if probability.shape != self.shapes[image_id]:
            raise ValueError(f"{image_id}: map {probability.shape} != image {self.shapes[image_id]}")
        self.put(image_id, quantise(probability))

    def _remove_temporary_files(self) -> None:
        """What a killed writer left half-written (never read: only renamed files count)."""
        remove_stale_temporaries(self.path, f".*{SUFFIX}.*.tmp")


class RawMaps:
    """A store written before compression (``PATH.u8``: every map's uint8 levels end to end, with
    ``PATH.json``), read-only; reads are plain file reads, so a scan keeps memory flat."""

    def __init__(self, path: Path, ids: list[str], shapes: list[tuple[int, int]]):
        self.path = Path(path)
        self.shapes = {image_id: tuple(shape) for image_id, shape in zip(ids, shapes)}
        sizes = [h * w for h, w in shapes]
        self.offsets = dict(zip(ids, np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(int).tolist()))

    ids = ProbabilityMaps.ids
    __len__ = ProbabilityMaps.__len__
    __contains__ = ProbabilityMaps.__contains__

    def quantised(self, image_id: str) -> np.ndarray:
        height, width = self.shapes[image_id]
        raw = self.path.with_suffix(".u8")
        try:
            flat = np.fromfile(raw, dtype=np.uint8, count=height * width, offset=self.offsets[image_id])
        except OSError as error:
            raise BenchError(f"{raw}: cannot be read ({error.strerror or error})") from None
        if flat.size != height * width:
            raise BenchError(f"{raw}: ends before the map of {image_id}; the file is damaged")
        return flat.reshape(height, width)

    read_float = ProbabilityMaps.read_float
    __getitem__ = read_float


def _raw_index(path: Path) -> Path:
    return Path(path).with_suffix(".json")
