"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every stage of segbench reads what an earlier stage wrote, and a run may be killed at any moment,
so nothing is written in place: write a temporary file beside the target, flush it to disk, rename.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

from harness.errors import BenchError, DiskFull

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def atomic_write(path: Path, write: Callable[[BinaryIO], Any], *, keep_existing: bool = False) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it into place.

    A file that cannot be written (a full disk, no permission) is a ``BenchError`` naming it; the
    old file, if any, is left as it was. ``keep_existing``: a ``path`` that exists is kept, and the
    new content dropped (``write_once``).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise cannot_write(path, error) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are files like any other
        if keep_existing:
            _link_unless_exists(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error(error) if isinstance(error, Exception) else None  # not for Ctrl-C
        if cause is not None:
            raise cannot_write(path, cause) from None
        raise


def _link_unless_exists(tmp: str, path: Path) -> None:
    """Give the finished ``tmp`` the name ``path`` unless that exists: a hard link is created whole or
    fails when the name is taken, on NFS too, where O_EXCL has not always been atomic."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    os.unlink(tmp)


def write_once_json(path: Path, value: Any) -> Any:
    """Write ``value`` to ``path`` unless the file exists; return what ``path`` holds.

    Why: the processes that train a run's folds may reach the same step at once (two folds finishing
    together both assemble the run). With this, the first file written stays and both go on from
    the same content, so their outputs agree byte for byte with no lock, which shared file systems
    do not reliably provide.
    """
    path = Path(path)
    if not path.exists():
        atomic_write(path, lambda handle: handle.write(_json_bytes(value)), keep_existing=True)
    return json.loads(path.read_text())


def remove_stale_temporaries(folder: Path, pattern: str, older_than_s: float = 3600) -> None:
    """Delete the temporary files matching ``pattern`` in ``folder`` that a killed writer left.

    Only those older than ``older_than_s``: another process may be writing into the same folder right
    now (the folds of one run, the shards of one prediction), and its temporary files live for
    milliseconds, not an hour.
    """
    cutoff = time.time() - older_than_s
    for leftover in Path(folder).glob(pattern):
        try:
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()
        except FileNotFoundError:  # renamed or removed by its writer meanwhile
            pass


def _os_error(error: BaseException) -> OSError | None:
    """The OSError behind ``error``, if any: torch.save's zip writer, for one, reports a full disk as
    a RuntimeError ("unexpected pos") raised while handling the OSError."""
    while error is not None and not isinstance(error, OSError):
        error = error.__context__
    return error


def cannot_write(path: Path, error: OSError, needed: int | None = None) -> BenchError:
    """The one-line error for ``path``; a full disk says how full, and that the work so far resumes."""
    if error.errno not in NO_SPACE:
        return BenchError(f"{path}: cannot write ({error.strerror or error})")
    free = shutil.disk_usage(_existing_parent(path)).free
    wanted = f"needs {readable_size(needed)}, " if needed is not None else ""
    return DiskFull(f"{path}: no space left on its disk ({wanted}{readable_size(free)} free); "
                    "free some space, then run the same command again (with --resume for bench run)")


def ensure_room(path: Path, needed: int, what: str) -> None:
    """One line now, rather than a full disk hours in: the disk of ``path`` has less than ``needed``
    bytes free for ``what`` (an estimate: the disk may still fill, and a write says so then)."""
    free = shutil.disk_usage(_existing_parent(path)).free
    if free < needed:
        raise DiskFull(f"{path}: {what} need about {readable_size(needed)} and its disk has {readable_size(free)} "
                       "free; free some space, or choose another folder")


def readable_size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def _existing_parent(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, _json_bytes(value))


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")
