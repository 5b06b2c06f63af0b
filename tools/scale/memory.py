"""Peak memory of a command and every process it starts (loader workers included), sampled twice a second.

``python tools/scale/memory.py OUT.json -- COMMAND...`` runs COMMAND, sums the proportional set size
(PSS: shared pages split between the processes that share them, so torch's libraries in four
workers count once) of its process tree, and writes the peak and the exit code to OUT.json. Used by
``tools/scale/simulate.sh``; ``/usr/bin/time`` would give the largest single process, not the tree.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _tree(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(_children(current))
    return found


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:  # the process ended between listing and reading
        pass
    return 0


def main() -> int:
    out, separator, *command = sys.argv[1:]
    if separator != "--" or not command:
        sys.exit("usage: memory.py OUT.json -- COMMAND...")
    started = time.perf_counter()
    process = subprocess.Popen(command)
    peak = 0
    while process.poll() is None:
        peak = max(peak, sum(_pss_kib(pid) for pid in _tree(process.pid)))
        time.sleep(0.5)
    Path(out).write_text(json.dumps({"command": command, "exit": process.returncode, "peak_pss_mib": round(peak / 1024),
                                     "seconds": round(time.perf_counter() - started, 1)}, indent=2) + "\n")
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
