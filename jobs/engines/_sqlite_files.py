"""What the SQLite engine knows about files beside a database: the sidecars SQLite keeps (-wal, -shm,
-journal), the file a symlinked database really is, and the names of the safety copies a restore leaves
(`<db>.pre-restore-<stamp>`, then `-2`, `-3` … for more in the same second). Private to jobs.engines."""

from datetime import datetime, timezone
import os
from pathlib import Path
import re

from jobs.artifacts import STAMP
from jobs.errors import SourceError

SIDECARS = ("-wal", "-shm", "-journal")
SAFETY_MARKER = ".pre-restore-"
_SAFETY_STAMP = re.compile(r"^(?P<stamp>\d{8}T\d{6}Z)(?:-(?P<number>[1-9]\d{0,5}))?$")


def sidecars(database: Path) -> list[Path]:
    """Return the files SQLite keeps beside `database`: `-wal`, `-shm` and `-journal`."""
    return [database.with_name(database.name + suffix) for suffix in SIDECARS]


def wal(database: Path) -> Path:
    """Return the write-ahead log SQLite keeps beside `database` in WAL mode."""
    return database.with_name(database.name + "-wal")


def real_file(database: Path) -> Path:
    """Return the file `database` names with every symlink followed (a chain of links too): the file a restore
    writes, whose directory holds SQLite's -wal/-shm/-journal and the safety copy. Raise SourceError if the
    links lead nowhere or in a circle."""
    try:
        return database.resolve(strict=True)
    except (OSError, RuntimeError) as error:
        why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise SourceError(f"cannot follow {database} to the database file it names: {why}; point BACKUP_SOURCE at the "
                          "database file or fix the link", stage="restore") from None


def live_file(database: Path) -> Path:
    """Return the file `database` names with every symlink followed as far as the links lead, whether or not that
    file exists: where a restore into a missing database writes (the links stay)."""
    return Path(os.path.realpath(database))


def safety_copy_path(database: Path, now: datetime | None = None, suffix: str = "") -> Path:
    """Return a new path beside `database` where its live content is saved before a restore overwrites it."""
    stamp = (now or datetime.now(timezone.utc)).strftime(STAMP)
    candidate = database.with_name(f"{database.name}{SAFETY_MARKER}{stamp}{suffix}")
    number = 1
    while candidate.exists() or candidate.is_symlink():
        number += 1
        candidate = database.with_name(f"{database.name}{SAFETY_MARKER}{stamp}-{number}{suffix}")
    return candidate


def is_safety_copy_name(name: str, database_name: str) -> bool:
    """Return whether `name` starts as a safety copy (or its temporary) of the database `database_name` does."""
    return name.startswith(database_name + SAFETY_MARKER)


def parse_safety_copy_name(name: str, database_name: str) -> tuple[str, int] | None:
    """Given a file name and the name of the database file, return the stamp and sequence number (1 for the first
    copy of that second) of the safety copy it names, or None when it is not named as one of that database."""
    if not is_safety_copy_name(name, database_name):
        return None
    match = _SAFETY_STAMP.match(name[len(database_name + SAFETY_MARKER):])
    if match is None:
        return None
    return match["stamp"], int(match["number"] or 1)
