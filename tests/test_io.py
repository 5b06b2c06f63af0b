"""Atomic writes: a file that cannot be written is one line naming it, and the old file survives."""

from __future__ import annotations

import errno

import pytest

from harness.errors import BenchError, DiskFull
from harness.io import atomic_write, atomic_write_text


def _fails_with(code: int):
    def write(handle):
        handle.write(b"half")
        raise OSError(code, "the disk said no")
    return write


def test_a_full_disk_is_a_disk_full_error_naming_the_file_and_the_old_file_is_kept(tmp_path):
    target = tmp_path / "summary.json"
    atomic_write_text(target, "old")
    with pytest.raises(DiskFull, match=r"summary\.json: no space left on its disk \([\d.]+ [kMG]?B(ytes)? free\)"):
        atomic_write(target, _fails_with(errno.ENOSPC))
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_any_other_write_error_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(BenchError, match=r"history\.csv: cannot write \(the disk said no\)") as raised:
        atomic_write(tmp_path / "history.csv", _fails_with(errno.EIO))
    assert not isinstance(raised.value, DiskFull) and not list(tmp_path.iterdir())


def test_a_full_disk_under_torch_save_is_found_behind_its_runtime_error(tmp_path):
    import torch

    class FullAfter:  # a disk that fills up after 1 kB, as torch.save meets it
        def __init__(self, handle):
            self.handle, self.written = handle, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(data)

        def flush(self):
            self.handle.flush()

    with pytest.raises(DiskFull, match=r"best\.pt: no space left"):
        atomic_write(tmp_path / "best.pt", lambda handle: torch.save({"w": torch.zeros(10_000)}, FullAfter(handle)))
