"""Writing and checking a Kaggle Carvana submission: gzipped csv ``img,rle_mask``, one row per test image.

``img`` is the image's file name: ``<id>.jpg`` for Carvana, whatever the test file is called in a folders
set (``a.png``); reading a submission back drops the image suffix to find the id.

Rows are streamed: a 100,064-image submission is written one encoded mask at a time, never held.
The check reads the file back the same way and validates every RLE string against its image's size
without decoding it, so checking a full submission costs seconds, not a full-size mask per row.
It sits in ``data/``, below both of its writers: ``bench ensemble`` and ``bench predict`` (the engine).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from isal import igzip

from harness.data.image_files import SUFFIXES
from harness.errors import BenchError
from harness.io import atomic_write

HEADER = ("img", "rle_mask")
_SUFFIX = ".jpg"  # Kaggle names rows by file name: <carid>_<NN>.jpg
_NEEDS_QUOTES = re.compile(r'[,"\r\n]')
_DIGITS = 18  # the most an RLE value may have: any 18 digits fit in an int64
_PAIRS = re.compile(rf"(?:[0-9]{{1,{_DIGITS}}} [0-9]{{1,{_DIGITS}}}(?: [0-9]{{1,{_DIGITS}}} [0-9]{{1,{_DIGITS}}})*)?")


def write_submission(path: Path, rows: Iterable[tuple[str, str]], names: Mapping[str, str] | None = None) -> int:
    """Write ``(image_id, rle)`` rows as a gzipped csv, atomically; return the number of rows. ``names``:
    the file name of each image (``img``), where it is not ``<id>.jpg``.

    ``rows`` may be a generator that does the merging: it is consumed once, while writing. The
    temporary file is renamed into place only after the last row, so an interrupted ensemble never
    leaves a submission that looks complete.
    """
    written = 0

    def write(handle) -> None:
        nonlocal written
        # mtime=0: the same rows give the same bytes, so two submissions can be compared by hash.
        # ISA-L's gzip (isal) at level 2, not the standard library's zlib at 6: 3% larger for RLE rows, 25x
        # faster. Compressing 100,064 full-size cars' rows (1 GB of text) took zlib about 103 s, the longest
        # step of `bench predict --format rle` after predicting (docs/scale.md).
        with igzip.GzipFile(fileobj=handle, mode="wb", mtime=0, compresslevel=2) as packed:
            packed.write(_csv_row(HEADER))
            for image_id, rle_mask in rows:
                packed.write(_csv_row((file_name(image_id, names), rle_mask)))
                written += 1

    atomic_write(Path(path), write)
    return written


def file_name(image_id: str, names: Mapping[str, str] | None = None) -> str:
    """The ``img`` of an image's row: its file name, ``<id>.jpg`` unless ``names`` says otherwise."""
    return names.get(image_id, image_id + _SUFFIX) if names else image_id + _SUFFIX


def _image_id(name: str) -> str:
    suffix = Path(name).suffix
    return name.removesuffix(suffix) if suffix.lower() in SUFFIXES else name


def _csv_row(fields: tuple[str, str]) -> bytes:
    """One csv line, as ``csv.writer`` writes it with ``lineterminator="\\n"``, in UTF-8 (ASCII for Kaggle's
    ids). Not ``csv.writer`` itself: it copies a row character by character, which was 15 of the 20 s a
    100,064-row submission of full-size cars took with ISA-L's gzip."""
    return (",".join(map(_csv_field, fields)) + "\n").encode("utf-8")


def _csv_field(text: str) -> str:
    """``text``, quoted only when it holds a comma, a quote or a line break (``csv.QUOTE_MINIMAL``)."""
    return '"' + text.replace('"', '""') + '"' if _NEEDS_QUOTES.search(text) else text


def read_submission(path: Path) -> Iterable[tuple[int, str, str]]:
    """Yield ``(line number, image id, rle)`` from a (gzipped or plain) submission csv; the id is ``img``
    without its image suffix."""
    path = Path(path)
    opener = igzip.open if path.suffix == ".gz" else open
    limit = csv.field_size_limit(_LONGEST_FIELD)
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or tuple(header) != HEADER:
                raise BenchError(f"{path}: header is {header!r}; expected 'img,rle_mask'")
            for row in reader:
                if len(row) != 2:
                    raise BenchError(f"{path} line {reader.line_num}: expected 2 columns img,rle_mask, got {len(row)}")
                yield reader.line_num, _image_id(row[0]), row[1]
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as error:
        raise BenchError(f"{path}: cannot read as a (gzipped) csv: {error}") from None
    finally:
        csv.field_size_limit(limit)


# csv's default field limit is 128 KiB; a noisy full-size mask's RLE is longer (a 1918x1280 mask of
# alternating pixels takes about 12 MB), and it is still a valid row to check.
_LONGEST_FIELD = 2**31 - 1


def check_submission(path: Path, expected: Mapping[str, tuple[int, int]]) -> int:
    """Validate a submission against the test images' ``{id: (height, width)}``; return the row count.

    Every expected image exactly once, nothing else, and every RLE well formed: an even count of
    positive integers, runs inside the image, sorted and non-overlapping. The first problem is one
    ``BenchError`` naming the line.
    """
    seen: set[str] = set()
    for line, image_id, text in read_submission(path):
        where = f"{path} line {line} (image {image_id})"
        if image_id not in expected:
            raise BenchError(f"{where}: not a test image")
        if image_id in seen:
            raise BenchError(f"{where}: image appears twice")
        seen.add(image_id)
        problem = rle_problem(text, expected[image_id])
        if problem:
            raise BenchError(f"{where}: {problem}")
    missing = [image_id for image_id in expected if image_id not in seen]
    if missing:
        raise BenchError(f"{path}: {len(missing)} test image(s) missing, e.g. {missing[0]}")
    return len(seen)


def rle_problem(text: str, shape: tuple[int, int]) -> str | None:
    """What is wrong with one RLE string for an image of ``shape``, or ``None`` when it is valid."""
    height, width = shape
    if _PAIRS.fullmatch(text):
        # the canonical form, every row our writers make, parsed in C: checking a submission of 100,064 full-size
        # cars took 21 s instead of 48 (docs/scale.md)
        numbers = np.fromstring(text, dtype=np.int64, sep=" ")
    else:
        fields = text.split()
        if not all(field.isdigit() for field in fields):
            return "rle_mask holds something other than non-negative integers"
        if len(fields) % 2:
            return "odd number of values (expected start/length pairs)"
        if any(len(field) > _DIGITS for field in fields):
            return f"a value has more than {_DIGITS} digits"
        numbers = np.array(fields, dtype=np.int64) if fields else np.empty(0, dtype=np.int64)
    starts, lengths = numbers[0::2], numbers[1::2]
    ends = starts + lengths - 1  # 1-indexed, inclusive
    if numbers.size and (starts.min() < 1 or lengths.min() < 1 or ends.max() > height * width):
        return f"a run lies outside the {width}x{height} image (starts are 1-indexed, lengths >= 1)"
    if np.any(starts[1:] <= ends[:-1]):
        return "runs are not sorted and non-overlapping"
    return None
