"""One backup at a time: an exclusive, non-blocking flock on a file in the backup directory.

The kernel drops the lock when the process dies, so a crash never leaves a stale lock behind.
"""

from collections.abc import Iterator
from contextlib import contextmanager
import fcntl
import os
from pathlib import Path

from jobs.artifacts import FILE_MODE, ensure_dir
from jobs.errors import BusyError


@contextmanager
def exclusive(directory: Path, name: str = "backup") -> Iterator[None]:
    """Hold the `name` lock in `directory` for the block. Raise BusyError naming the holder if it is taken."""
    ensure_dir(directory)
    path = directory / f".{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise BusyError(f"another {name} is running (pid {holder}); wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
