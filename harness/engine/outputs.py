"""Where ``predict_images`` puts each image's map, and how each place knows what it already holds.

Every output is resumable by construction, so a killed job run again redoes nothing it finished:

* ``MaskFiles`` (``--format png``): ``masks/<id>.png``, 0/255, each written atomically, so a file
  that exists is whole.
* ``RleJournal`` (``--format rle``): each mask's RLE appended to ``rle.part`` as one ``id,rle`` line,
  flushed as it is written; a restart drops a line cut short by the kill and skips the ids present.
  ``submission.csv.gz`` is written from the journal, in input order, atomically, at the end. The
  journal stays: it is the record that makes a rerun free.
* ``MapStore`` (``--format maps``, and ``bench run``'s test store): a probability store
  (``harness.runs.probabilities``), which knows which maps were written.

Masks are ``binarise(levels, threshold)`` of the quantised map: the very pixels a reader of the
probability store selects at the same threshold.

Each output is two steps: ``encode`` turns a map's levels into the bytes the output keeps (a PNG, an
RLE, a compressed map), a pure function that runs wherever the map is made (in the loader workers on
a CPU); ``write`` files those bytes, in the main process, which owns the output folder.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import cv2
import numpy as np

from harness.data.image_files import ImageFile
from harness.data.rle import encode
from harness.data.submission import write_submission
from harness.errors import BenchError
from harness.io import atomic_write_bytes, cannot_write, remove_stale_temporaries
from harness.runs.probabilities import ProbabilityMaps, binarise, compress

FORMATS = ("rle", "png", "maps")


@dataclass(frozen=True)
class PngMask:
    """A map's mask at ``threshold`` as a PNG of 0 and 255."""

    threshold: float

    def __call__(self, levels: np.ndarray) -> bytes:
        return cv2.imencode(".png", binarise(levels, self.threshold).view(np.uint8) * np.uint8(255))[1].tobytes()


@dataclass(frozen=True)
class RleMask:
    """A map's mask at ``threshold`` as Kaggle's run-length encoding, in ASCII."""

    threshold: float

    def __call__(self, levels: np.ndarray) -> bytes:
        return encode(binarise(levels, self.threshold)).encode("ascii")


class MaskFiles:
    def __init__(self, folder: Path, threshold: float):
        self.folder, self.encode = Path(folder) / "masks", PngMask(threshold)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.folder, ".*.tmp")  # writes cut short by a kill (harness.io.atomic_write)
        except OSError as error:
            raise cannot_write(self.folder, error) from None

    def done(self, image_id: str) -> bool:
        return (self.folder / f"{image_id}.png").exists()

    def write(self, image_id: str, png: bytes) -> None:
        atomic_write_bytes(self.folder / f"{image_id}.png", png)

    def finish(self, images: list[ImageFile]) -> None:
        pass


class RleJournal:
    def __init__(self, folder: Path, threshold: float):
        self.journal, self.submission = Path(folder) / "rle.part", Path(folder) / "submission.csv.gz"
        self.encode = RleMask(threshold)
        self.rows: dict[str, tuple[int, int]] = {}  # id -> (offset, length) of its RLE in the journal
        self._lock = threading.Lock()
        try:
            self.journal.parent.mkdir(parents=True, exist_ok=True)
            self._recover()
            self._handle = open(self.journal, "ab")
        except OSError as error:
            raise cannot_write(self.journal, error) from None

    def _recover(self) -> None:
        """Index the journal's whole lines, and cut away a last line the kill left unfinished."""
        if not self.journal.exists():
            return
        offset = 0
        with open(self.journal, "rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    break
                image_id, comma, rle = line.rpartition(b",")  # an RLE has no comma; an id might
                if not comma:
                    raise BenchError(f"{self.journal}: line at byte {offset} is not 'id,rle'; "
                                     "delete the file to predict every image again")
                self.rows[image_id.decode()] = (offset + len(image_id) + 1, len(rle) - 1)
                offset += len(line)
        if offset < self.journal.stat().st_size:
            with open(self.journal, "r+b") as handle:
                handle.truncate(offset)

    def done(self, image_id: str) -> bool:
        return image_id in self.rows

    def write(self, image_id: str, rle: bytes) -> None:
        with self._lock:
            try:
                offset = self._handle.tell()
                self._handle.write(image_id.encode() + b"," + rle + b"\n")
                self._handle.flush()
            except OSError as error:
                raise cannot_write(self.journal, error) from None
            self.rows[image_id] = (offset + len(image_id.encode()) + 1, len(rle))

    def finish(self, images: list[ImageFile]) -> None:
        """``submission.csv.gz`` from the journal: the ``images`` it holds, in that order, by file name."""
        self._handle.close()
        with open(self.journal, "rb") as journal:
            def rows():
                for image in images:
                    if image.image_id in self.rows:
                        offset, length = self.rows[image.image_id]
                        journal.seek(offset)
                        yield image.image_id, journal.read(length).decode("ascii")

            write_submission(self.submission, rows(), {image.image_id: image.path.name for image in images})


class MapStore:
    encode = staticmethod(compress)

    def __init__(self, store: ProbabilityMaps):
        self.store = store
        self._written = store.written_ids()  # one listing of its folder, not a file test per image

    @classmethod
    def create(cls, path: Path, shapes: Mapping[str, tuple[int, int]]) -> MapStore:
        return cls(ProbabilityMaps.create(path, shapes))

    def done(self, image_id: str) -> bool:
        return image_id in self._written

    def write(self, image_id: str, compressed: bytes) -> None:
        self.store.put_compressed(image_id, compressed)

    def finish(self, images: list[ImageFile]) -> None:
        pass
