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
