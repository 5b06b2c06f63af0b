"""What writing and checking a Carvana-sized submission costs (docs/scale.md, "Writing the submission").

``python tools/scale/submission.py DATA WORK [ROWS]`` builds, in WORK, the journal ``bench predict --format rle``
would leave after ROWS images (default 100,064): one ``id,rle`` line per image, cycling through the RLE masks
of DATA's ``train_masks.csv`` (``bench data synth --size 1918x1280`` makes full-size ones; 64 masks of about
10 kB keep repeats beyond gzip's 32 kB window). It then times ``RleJournal.finish``, which writes
``submission.csv.gz`` from it as ``bench predict`` does, and ``check_submission``, which ``bench ensemble``
runs on every submission it writes. Last, the compressors it chose between, on the journal's first 200 MB
in one thread: the standard library's zlib at levels 6 and 1, and ISA-L's at level 2 (what it writes with).
"""

from __future__ import annotations

import csv
import sys
import time
import zlib
from pathlib import Path

import torch
from isal import isal_zlib

from harness.data.submission import check_submission
from harness.engine.outputs import RleJournal

COMPARED_BYTES = 200_000_000


def main() -> None:
    data, work = Path(sys.argv[1]), Path(sys.argv[2])
    rows = int(sys.argv[3]) if len(sys.argv) > 3 else 100_064
    with open(data / "train_masks.csv", newline="") as handle:
        masks = [rle for _, rle in list(csv.reader(handle))[1:]]
    ids = [f"{index // 16:012x}_{1 + index % 16:02d}" for index in range(rows)]
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "rle.part", "w") as journal:
        for index, image_id in enumerate(ids):
            journal.write(f"{image_id},{masks[index % len(masks)]}\n")
    (work / "submission.csv.gz").unlink(missing_ok=True)
    started = time.perf_counter()
    RleJournal(work, 0.5).finish(ids)
    written = time.perf_counter()
    check_submission(work / "submission.csv.gz", dict.fromkeys(ids, (1280, 1918)))
    checked = time.perf_counter()
    journal_mb, submission_mb = ((work / name).stat().st_size / 1e6 for name in ("rle.part", "submission.csv.gz"))
    print(f"{rows} rows, journal {journal_mb:.0f} MB: submission.csv.gz ({submission_mb:.0f} MB) "
          f"written in {written - started:.1f} s, checked in {checked - written:.1f} s; "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    with open(work / "rle.part", "rb") as journal:
        text = journal.read(COMPARED_BYTES)
    compressors = {"zlib level 6": lambda: zlib.compress(text, 6), "zlib level 1": lambda: zlib.compress(text, 1),
                   "ISA-L level 2": lambda: isal_zlib.compress(text, 2)}
    for name, compress in compressors.items():
        started = time.perf_counter()
        ratio = len(text) / len(compress())
        print(f"  {name}: {time.perf_counter() - started:.2f} s for {len(text) / 1e6:.0f} MB, ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
