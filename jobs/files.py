"""File primitives: private modes, directories, fsync, and writing a file so that it is whole or absent.

Every file is written under a temporary name (`jobs.artifacts.temp_path`), flushed, fsynced and only then renamed
into place.
"""

from collections.abc import Iterator
from contextlib import contextmanager
import errno
import os
from pathlib import Path
import shutil
from typing import BinaryIO

import structlog

from jobs.artifacts import temp_path

FILE_MODE = 0o600
DIR_MODE = 0o700


def ensure_dir(path: Path) -> None:
    """Create `path` (and parents) with mode 0700 if missing. The mode of an existing directory is never changed
    (it may be the app's own data directory); one that others can read or write is logged as a warning, once."""
    try:
        path.mkdir(parents=True, mode=DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(path)) from None
        mode = path.stat().st_mode & 0o777
        if mode & 0o077 and path not in _warned_modes:
            _warned_modes.add(path)
            structlog.get_logger("jobs.artifacts").warning(
                "backup_dir.open_mode", path=str(path), mode=oct(mode),
                hint=f"users other than this one have access to the backups; run chmod 700 {path} unless the app needs that")
        return
    path.chmod(DIR_MODE)  # ours: exactly 0700 whatever the umask


_warned_modes: set[Path] = set()


def remove_temporary(path: Path) -> None:
    """Remove a stale temporary file or directory of ours. A symlink is removed itself, never what it points at."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def fsync_path(path: Path) -> None:
    """Fsync a file or a directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private(path: Path) -> BinaryIO:
    """Create a new file with mode 0600 (failing if it exists) and return it open for binary writing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    return os.fdopen(fd, "wb")


def publish(temp: Path, final: Path) -> None:
    """Fsync `temp`, rename it to `final` and fsync the directory: after this `final` is whole or absent."""
    fsync_path(temp)
    os.replace(temp, final)
    fsync_path(final.parent)


@contextmanager
def atomic_file(final: Path) -> Iterator[BinaryIO]:
    """Yield a 0600 file written under a temporary name; rename it to `final` only if the block succeeds."""
    temp = temp_path(final)
    try:
        with create_private(temp) as handle:
            yield handle
        publish(temp, final)
    finally:
        temp.unlink(missing_ok=True)
