"""The steady rate of a running ``bench predict --format rle``, from the lines its journal gains.

    bench predict RUN IMAGES --out OUT &          # then, beside it:
    python tools/scale/journal_rate.py OUT --every 10 --after 30

Every ``--every`` seconds, from ``--after`` seconds on, it counts the lines of ``OUT/rle.part`` (one a
finished image, ``harness.engine.outputs.RleJournal``) and prints the images per second since the last
count, until the journal stops growing or ``OUT/submission.csv.gz`` is written. A rate taken this
way leaves out the start (compiling, the workers' start) and the end (the submission written), which
``predict.json``'s images/s includes: docs/scale.md calls it the steady rate.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def lines(journal: Path) -> int:
    with open(journal, "rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the --out folder of the running bench predict")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between two counts")
    parser.add_argument("--after", type=float, default=30.0, help="seconds to wait before the first count")
    args = parser.parse_args()
    journal, submission = args.out / "rle.part", args.out / "submission.csv.gz"
    time.sleep(args.after)
    before, then = lines(journal), time.monotonic()
    rates = []
    while not submission.exists():
        time.sleep(args.every)
        now_lines, now = lines(journal), time.monotonic()
        if now_lines == before:
            break
        rates.append((now_lines - before) / (now - then))
        print(f"{now_lines} images written, {rates[-1]:.1f} images/s over the last {now - then:.1f} s", flush=True)
        before, then = now_lines, now
    if rates:
        print(f"steady: {min(rates):.1f}-{max(rates):.1f} images/s over {len(rates)} samples")


if __name__ == "__main__":
    main()
