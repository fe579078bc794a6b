"""The safety copies a restore leaves beside a SQLite database, and which of them go.

Every restore over a live SQLite database saves its current content first (`jobs.engines.sqlite_restore`): a
file `<db>.pre-restore-<stamp>` (a `-N` suffix when several fall in one second), or, for a database SQLite could
not open, a directory of that name holding copies of its files. Without care they pile up, one database's size
each, on the volume the app writes to.

Ours means: recorded by the worker when it made it, in `.safety-copies.json` in the backup directory (the
ledger: written atomically, mode 0600, read as untrusted: an entry counts only when it names, by an absolute path,
a copy of this very database beside it), and still looking as it did: named exactly so after this database,
never a link, owned by this process's user, a file of mode 0600 or a directory of mode 0700 holding nothing but
copies of the database's own files (0600). Anything else beside the database, whatever its name, is not ours
and is never touched; a copy made before the ledger existed is left to people.

Deciding is a pure function (`to_remove`): the copy just made is never a candidate, the newest `keep` others
stay, newest by creation order (the ledger's order, not the clock's stamp in the name). The caller records the
copy and removes only after the restore has succeeded, so a failed restore leaves every copy, and the space
check before a restore never counts on room these removals would make.
"""

from dataclasses import dataclass
from datetime import datetime, timezone
import json
import os
from pathlib import Path
import shutil
import stat

import structlog

from jobs.engines._sqlite_files import SIDECARS, parse_safety_copy_name
from jobs.files import atomic_file

log = structlog.get_logger("jobs.engines.sqlite")

LEDGER_NAME = ".safety-copies.json"  # in the backup directory: the copies this worker made
MAX_LEDGER_BYTES = 256 << 10
MAX_ENTRIES = 200


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
    """Given the safety copies of one database in creation order, oldest first, how many older ones to keep and
    the copy just made, return those to remove, newest first: every copy but `just_made` and the newest `keep`."""
    older = [copy for copy in copies if copy.path != just_made][::-1]
    return older[max(keep, 0):]


def size_of(copy: SafetyCopy) -> int:
    """Return the bytes a safety copy takes (a directory: its files)."""
    try:
        if copy.path.is_dir():
            return sum(entry.stat(follow_symlinks=False).st_size for entry in os.scandir(copy.path))
        return copy.path.lstat().st_size
    except OSError:
        return 0


def _load(backup_dir: Path) -> list[dict[str, str]]:
    """Return the ledger's entries that have the expected shape (untrusted: anything else is dropped)."""
    try:
        with (backup_dir / LEDGER_NAME).open("rb") as handle:
            data = json.loads(handle.read(MAX_LEDGER_BYTES))
    except (OSError, ValueError):
        return []
    entries = data.get("copies") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return []
    return [entry for entry in entries if isinstance(entry, dict) and isinstance(entry.get("path"), str)
            and isinstance(entry.get("database"), str)]


def _save(backup_dir: Path, entries: list[dict[str, str]]) -> None:
    with atomic_file(backup_dir / LEDGER_NAME) as handle:  # 0600, renamed in whole
        handle.write(json.dumps({"copies": entries[-MAX_ENTRIES:]}, indent=2).encode())


def record(backup_dir: Path, database: Path, copy: Path) -> None:
    """Record in the ledger that this worker made `copy`, the safety copy of `database` (the real file), now.
    A ledger that cannot be written only warns: that copy is then never removed by the worker."""
    entries = [entry for entry in _load(backup_dir) if entry["path"] != str(copy)]
    entries.append({"path": str(copy), "database": str(database),
                    "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    try:
        _save(backup_dir, entries)
    except OSError as error:
        log.warning("restore.safety_copy_not_recorded", path=str(copy), ledger=str(backup_dir / LEDGER_NAME),
                    error=error.strerror or str(error), detail="this copy stays until you delete it")


def recorded(backup_dir: Path, database: Path) -> list[SafetyCopy]:
    """Return the safety copies of `database` (the real file) that the ledger records and that are still ours
    (see the module docstring), in creation order, oldest first."""
    found: list[SafetyCopy] = []
    for entry in _load(backup_dir):
        path = Path(entry["path"])
        if entry["database"] != str(database) or not path.is_absolute() or path.parent != database.parent:
            continue
        copy = parse(path, database.name)
        if copy is not None and copy.path not in {known.path for known in found} and _ours(path, database.name):
            found.append(copy)
    return found


def remove_older(database: Path, keep: int, just_made: Path | None,
                 backup_dir: Path | None = None) -> tuple[list[Path], list[Path]]:
    """Record `just_made` in the ledger in `backup_dir`, then remove the recorded safety copies of `database`
    (the real file) beyond the newest `keep`, never `just_made`; return (removed, kept), kept without
    `just_made`. Without a backup directory nothing is recorded or removed. Call only after a restore
    succeeded. A copy that cannot be removed only warns and counts as kept."""
    if backup_dir is None:
        return [], []
    if just_made is not None:
        record(backup_dir, database, just_made)
    copies = recorded(backup_dir, database)
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
    if removed:  # the ledger forgets what went, and what is gone anyway
        try:
            _save(backup_dir, [entry for entry in _load(backup_dir)
                               if entry["path"] not in {str(path) for path in removed} and os.path.lexists(entry["path"])])
        except OSError as error:
            log.warning("restore.safety_copy_ledger_not_written", ledger=str(backup_dir / LEDGER_NAME),
                        error=error.strerror or str(error))
    kept = [copy.path for copy in copies if copy.path not in removed and copy.path != just_made][::-1]
    return removed, kept
