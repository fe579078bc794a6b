"""One backup at a time: an exclusive, non-blocking flock on a file in the backup directory.

The kernel drops the lock when the process dies, so a crash never leaves a stale lock behind.
"""

from collections.abc import Iterator
from contextlib import contextmanager
import fcntl
import os
import time
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


# Retention and readers: verify and restore hold the `retention` lock shared while they read a backup; retention
# takes it exclusively before it deletes. flock never lets the two overlap, and the kernel drops both on death.
RETENTION = "retention"


@contextmanager
def shared(directory: Path, name: str = RETENTION, wait_s: float = 30.0) -> Iterator[None]:
    """Hold the `name` lock in `directory` shared for the block (any number of holders at once). Wait up to
    `wait_s` for an exclusive holder (a retention run deleting, which is quick); raise BusyError after that."""
    ensure_dir(directory)
    fd = os.open(directory / f".{name}.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BusyError(f"retention has been deleting backups in {directory} for over {wait_s:.0f} s; try again") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def for_deletion(directory: Path, name: str = RETENTION) -> Iterator[None]:
    """Hold the `name` lock in `directory` exclusively for the block, without waiting. Raise BusyError if a
    verify or restore holds it shared: retention then deletes nothing this time rather than wait."""
    ensure_dir(directory)
    fd = os.open(directory / f".{name}.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(f"a verify or restore is reading the backups in {directory}; nothing is deleted now, "
                            "the next retention run catches up") from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
