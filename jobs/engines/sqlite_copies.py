"""The safety copies a restore leaves beside a SQLite database, and which of them go.

Every restore over a live SQLite database saves its current content first (`jobs.engines.sqlite_restore`): a
file `<db>.pre-restore-<stamp>` (a `-N` suffix when several fall in one second), or, for a database SQLite could
not open, a directory of that name holding copies of its files. Without care they pile up, one database's size
each, on the volume the app writes to.

Ours means: named exactly so after this database, never a link, owned by this process's user, a file of mode
0600 or a directory of mode 0700 holding nothing but copies of the database's own files (0600). Anything else
beside the database, whatever its name, is not ours and is never touched.

Deciding is a pure function (`to_remove`): the copy just made is never a candidate, the newest `keep` others
stay. The caller removes only after the restore has succeeded, so a failed restore leaves every copy, and the
space check before a restore never counts on room these removals would make.
"""

from dataclasses import dataclass
import os
from pathlib import Path
import shutil
import stat

import structlog

from jobs.engines._sqlite_files import SIDECARS, parse_safety_copy_name

log = structlog.get_logger("jobs.engines.sqlite")



@dataclass(frozen=True)
class SafetyCopy:
    path: Path
    stamp: str  # when it was made (UTC, from its name)
    number: int  # 1 for the first copy of that second, then 2, 3 …

    @property
    def order(self) -> tuple[str, int]:
        return self.stamp, self.number


def parse(path: Path, database_name: str) -> SafetyCopy | None:
    """Given a path and the name of the database file, return the SafetyCopy its name says it is, or None when
    it is not named as a safety copy of that database. Judged by the name alone."""
    parts = parse_safety_copy_name(path.name, database_name)
    return SafetyCopy(path, *parts) if parts else None


def _ours(path: Path, database_name: str) -> bool:
    """Return whether `path` (named as a safety copy) is one this worker made: see the module docstring."""
    try:
        info = path.lstat()
    except OSError:
        return False
    if info.st_uid != os.geteuid():
        return False
    if stat.S_ISREG(info.st_mode):
        return stat.S_IMODE(info.st_mode) == 0o600
    if not stat.S_ISDIR(info.st_mode) or stat.S_IMODE(info.st_mode) != 0o700:
        return False
    names = {database_name, *(database_name + suffix for suffix in SIDECARS)}
    try:
        entries = list(os.scandir(path))
    except OSError:
        return False
    return all(entry.name in names and entry.is_file(follow_symlinks=False)
               and entry.stat(follow_symlinks=False).st_uid == info.st_uid for entry in entries)


def safety_copies(database: Path) -> list[SafetyCopy]:
    """Given the real database file (links followed), return the safety copies this worker made beside it,
    newest first. Nothing else is returned, whatever its name."""
    try:
        children = list(database.parent.iterdir())
    except OSError:
        return []
    found = [copy for child in children if (copy := parse(child, database.name)) and _ours(child, database.name)]
    return sorted(found, key=lambda copy: copy.order, reverse=True)


def to_remove(copies: list[SafetyCopy], keep: int, just_made: Path | None) -> list[SafetyCopy]:
    """Given the safety copies of one database, how many older ones to keep and the copy just made, return those
    to remove, newest first: every copy but `just_made` and the newest `keep` others."""
    older = sorted((copy for copy in copies if copy.path != just_made), key=lambda copy: copy.order, reverse=True)
    return older[max(keep, 0):]


def size_of(copy: SafetyCopy) -> int:
    """Return the bytes a safety copy takes (a directory: its files)."""
    try:
        if copy.path.is_dir():
            return sum(entry.stat(follow_symlinks=False).st_size for entry in os.scandir(copy.path))
        return copy.path.lstat().st_size
    except OSError:
        return 0


def remove_older(database: Path, keep: int, just_made: Path | None) -> tuple[list[Path], list[Path]]:
    """Remove the safety copies beside `database` (the real file) beyond the newest `keep`, never `just_made`;
    return (removed, kept), kept without `just_made`. Call only after a restore succeeded. A copy that cannot be
    removed only warns and counts as kept."""
    copies = safety_copies(database)
    going = to_remove(copies, keep, just_made)
    removed = []
    for copy in going:
        if not _ours(copy.path, database.name):  # looked at again right before it goes
            continue
        try:
            if copy.path.is_dir() and not copy.path.is_symlink():
                shutil.rmtree(copy.path)
            else:
                copy.path.unlink()
        except OSError as error:
            log.warning("restore.safety_copy_not_removed", path=str(copy.path), error=error.strerror or str(error))
            continue
        removed.append(copy.path)
        log.info("restore.safety_copy_removed", path=str(copy.path), keep=keep)
    kept = [copy.path for copy in copies if copy.path not in removed and copy.path != just_made]
    return removed, kept
