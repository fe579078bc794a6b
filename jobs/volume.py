"""The backup volume: is the backup directory usable, and how much room must a backup leave (BACKUP_MIN_FREE).

The app shares the volume with its backups, and the app's own writes come first: a backup that would leave less
than `BACKUP_MIN_FREE` free (10% of the volume by default, or a size like `2GB`) is refused before anything is
written.
"""

from dataclasses import dataclass
import errno
import os
from pathlib import Path
import re
import shutil

from jobs.artifacts import temp_prefix
from jobs.errors import StorageError
from jobs.files import create_private, ensure_dir

MIB = 1 << 20
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_AMOUNT = re.compile(r"^(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>%|[a-z]*)$", re.IGNORECASE)
MAX_PERCENT = 90.0


@dataclass(frozen=True)
class MinFree:
    """What a backup must leave free on its volume: a share of the volume (`percent`) or a number of bytes."""

    text: str
    percent: float | None = None
    size: int = 0

    def bytes_of(self, total: int) -> int:
        """Given the volume's size in bytes, return the bytes that must stay free."""
        return int(total * self.percent / 100) if self.percent is not None else self.size


def parse_min_free(text: str) -> MinFree:
    """Given `10%`, `2GB`, `500MB`, `1GiB` or `0`, return the MinFree. Raise ValueError saying what is accepted."""
    cleaned = text.strip()
    match = _AMOUNT.match(cleaned)
    accepted = "write a percentage of the volume like 10% or a size like 2GB, 500MB or 1GiB (0 turns it off)"
    if not match:
        raise ValueError(f"{text!r} is not an amount; {accepted}")
    number, unit = float(match["number"]), match["unit"].lower()
    if unit == "%":
        if number > MAX_PERCENT:
            raise ValueError(f"{text!r} would leave no room for backups; use at most {MAX_PERCENT:g}%")
        return MinFree(text=cleaned, percent=number)
    if not unit and number == 0:
        return MinFree(text=cleaned, size=0)
    if unit not in _UNITS:
        raise ValueError(f"{text!r} has no known unit; {accepted}")
    return MinFree(text=cleaned, size=int(number * _UNITS[unit]))


def room_problem(free: int, total: int, needed: int, min_free: MinFree | None) -> str | None:
    """Given the volume's free and total bytes, what a backup needs at its peak and what must stay free, return
    why the backup must not run (one clause with the numbers), or None if it fits."""
    if free < needed:
        return f"has {free // MIB} MiB free but this backup needs about {needed // MIB} MiB"
    reserve = min_free.bytes_of(total) if min_free is not None else 0
    if free - needed < reserve:
        return (f"has {free // MIB} MiB free of {total // MIB} MiB and this backup needs about {needed // MIB} MiB, "
                f"which would leave {(free - needed) // MIB} MiB, less than BACKUP_MIN_FREE={min_free.text} "
                f"({reserve // MIB} MiB) that the app keeps")
    return None


def dir_problem(path: Path) -> str | None:
    """Return why `path` can never be the backup directory (it, or a directory above it, is not a directory),
    as a sentence naming the fix; None if it is or can become one. Reads only."""
    probe = path
    while True:
        try:
            if probe.exists() or probe.is_symlink():
                break
        except OSError as error:
            return f"BACKUP_DIR={path} cannot be read ({error.strerror}); fix its permissions or choose another directory"
        if probe.parent == probe:
            return None
        probe = probe.parent
    if probe.is_dir():
        return None
    if probe == path:
        return f"BACKUP_DIR={path} exists and is not a directory; point it at a directory"
    return f"BACKUP_DIR={path} cannot be created because {probe} is a file, not a directory; point BACKUP_DIR at a directory"


def explain(error: OSError, path: Path | None = None, doing: str | None = None) -> str:
    """Return one sentence for a filesystem error on the backup volume: the path, what failed and how to fix it.
    With `doing` (like "write in the backup directory"), the sentence names `path` rather than the file that
    failed."""
    where = path if doing and path else (error.filename or path or "the backup directory")
    reason = error.strerror or str(error)
    fixes = {
        errno.EROFS: "the volume is mounted read-only; mount it read-write or point BACKUP_DIR elsewhere",
        errno.EACCES: f"give the worker's user (uid {os.getuid()}) write access to it, or point BACKUP_DIR elsewhere",
        errno.EPERM: f"give the worker's user (uid {os.getuid()}) write access to it, or point BACKUP_DIR elsewhere",
        errno.ENOTDIR: "a part of that path is a file, not a directory; point BACKUP_DIR at a directory",
        errno.ENOSPC: "the volume is full; free space or grow the volume",
        errno.EDQUOT: "the disk quota is used up; free space or raise the quota",
    }
    fix = fixes.get(error.errno or 0, "check the path and its permissions, or point BACKUP_DIR elsewhere")
    return f"cannot {doing or 'use'} {where}: {reason}; {fix}"


def free_space(directory: Path) -> str:
    """Return `the volume holding DIR has N MiB free of M MiB`, or `` if the volume cannot be asked."""
    try:
        usage = shutil.disk_usage(directory)
    except OSError:
        return ""
    return f"the volume holding {directory} has {usage.free // MIB} MiB free of {usage.total // MIB} MiB"


def write_problem(doing: str, error: OSError, writing: Path | None = None) -> str:
    """Given what failed (`compress`), the error and the file being written (used when the error names none, as
    a file object's write does not), return one sentence naming the file, and for a full volume the volume and
    its free space; for a file size limit, the limit."""
    target = Path(error.filename) if error.filename else writing
    where = f" writing {target}" if target is not None else " on the backup volume"
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        room = free_space(target.parent) if target is not None else ""
        what = "the disk quota is used up; free space or raise the quota" if error.errno == errno.EDQUOT else \
            "free space or grow the volume"
        fix = f"{room}; {what}" if room else what
    elif error.errno == errno.EFBIG:
        fix = "the file reached this process's file size limit (ulimit -f); raise the limit"
    else:
        fix = "check free space and permissions on the volume"
    return f"{doing} failed{where}: {reason}; {fix}"


def require_usable(directory: Path) -> None:
    """Create the backup directory if missing and prove we can write in it (a probe file, removed at once).
    Raise StorageError (stage preflight) with one sentence naming the path and the fix."""
    probe = directory / f"{temp_prefix()}probe"
    try:
        ensure_dir(directory)
        probe.unlink(missing_ok=True)
        create_private(probe).close()
        probe.unlink()
    except OSError as error:
        raise StorageError(explain(error, directory, "write in the backup directory"), stage="preflight") from None
