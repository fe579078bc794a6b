"""SQLite: online snapshots through the backup API, `PRAGMA integrity_check`, restores through the backup API.

The snapshot is one `sqlite3_backup_step(-1)`: a single read transaction copies every page, so the copy is
consistent even while other processes write. A multi-step backup restarts whenever another connection writes
and may never finish on a busy database. In WAL mode writers go on while we read; in rollback-journal mode they
wait for our read lock (bounded by their busy timeout). The source is opened read-only (`mode=ro`), so a
missing file is never created and the source is never written.
"""

from collections.abc import Iterator
from contextlib import contextmanager, closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
import re
import sqlite3
import threading
import time
from urllib.parse import quote

from jobs.artifacts import STAMP, create_private
from jobs.errors import Cancelled, IntegrityError, SourceError

SCHEMES = ("sqlite",)
KIND = "sqlite"
BUSY_TIMEOUT_S = 60.0  # how long a snapshot or restore waits for another connection's lock
_STEP_BUSY_S = 0.2  # each backup step waits this long for a lock, then we look at the clock and the cancel flag
_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED
CHECK = "PRAGMA integrity_check"


def _connect(path: Path, mode: str, timeout: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    uri = f"file:{quote(path.as_posix())}?mode={mode}"
    return sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)


def _copy(source: sqlite3.Connection, target: sqlite3.Connection, cancel: threading.Event, what: str) -> None:
    """Copy every page of `source` into `target` in one backup step.

    CPython's `backup()` retries a busy step forever; the progress callback bounds that wait by BUSY_TIMEOUT_S and
    stops at once when `cancel` is set. Raise Cancelled, or SourceError if the lock is never released.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S

    def progress(status: int, _remaining: int, _total: int) -> None:
        if cancel.is_set():
            raise Cancelled(f"the worker is stopping; {what} was interrupted")
        if status in _BUSY_CODES and time.monotonic() > deadline:
            raise SourceError(f"{what} waited {BUSY_TIMEOUT_S:g} s for another connection's lock; "
                              "a long write transaction is holding the database, try again when it ends")

    source.backup(target, pages=-1, progress=progress, sleep=0.05)


@contextmanager
def _interrupt_when(cancel: threading.Event, connection: sqlite3.Connection) -> Iterator[None]:
    """Interrupt `connection`'s running statement as soon as `cancel` is set."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.1):
            if cancel.is_set():
                connection.interrupt()
                return

    watcher = threading.Thread(target=watch, name="sqlite-interrupt", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def _reason(error: sqlite3.Error) -> str:
    return str(error).rstrip(".") or type(error).__name__


@dataclass(frozen=True)
class SqliteSource:
    """A SQLite database file."""

    path: Path
    kind: str = KIND

    def name(self) -> str:
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", self.path.stem).strip("-")
        return stem or "sqlite"

    def describe(self) -> dict[str, str]:
        return {"kind": KIND, "database": self.path.name}

    def target(self) -> str:
        return str(self.path)

    def protected_files(self) -> list[Path]:
        return [self.path.with_name(self.path.name + suffix) for suffix in ("", "-wal", "-shm", "-journal")]

    def estimate_size(self) -> int:
        self._require_file()
        wal = self.path.with_name(self.path.name + "-wal")
        return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)

    def snapshot(self, out: Path, cancel: threading.Event) -> None:
        self._require_file()
        if cancel.is_set():
            raise Cancelled("the worker is stopping; the snapshot was not started")
        create_private(out).close()  # SQLite keeps the mode of a file it opens: only we can read the copy
        try:
            self._snapshot_into(out, cancel)
        finally:
            for sidecar in ("-journal", "-wal", "-shm"):
                out.with_name(out.name + sidecar).unlink(missing_ok=True)

    def _snapshot_into(self, out: Path, cancel: threading.Event) -> None:
        try:
            source = _connect(self.path, "ro", timeout=_STEP_BUSY_S)
        except sqlite3.Error as error:
            raise SourceError(f"cannot open the SQLite database {self.path}: {_reason(error)}; check BACKUP_SOURCE and the file's permissions") from None
        try:
            with closing(source), closing(sqlite3.connect(out, isolation_level=None)) as target:
                _copy(source, target, cancel, f"the snapshot of {self.path}")
                # The copy carries the source's WAL flag; a plain rollback-journal file opens anywhere, read-only too.
                target.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.DatabaseError as error:
            reason = _reason(error)
            if "disk is full" in reason or "disk I/O" in reason:
                raise SourceError(f"cannot write the snapshot of {self.path} to {out.parent}: {reason}; free space on the volume", stage="snapshot") from None
            raise SourceError(f"cannot read the SQLite database {self.path}: {reason}; it may be damaged or not a SQLite file (run `sqlite3 {self.path} 'PRAGMA integrity_check'`)") from None

    def versions(self) -> dict[str, str]:
        return {"sqlite": sqlite3.sqlite_version}

    def restore(self, raw: Path, cancel: threading.Event) -> Path:
        """Save the live database to a new safety copy beside it, then write `raw` into it through the backup
        API; return the safety copy's path.

        Connections the app holds open see the restored data at their next transaction; the file is never torn.
        Raise SourceError if the live database cannot be read or written.
        """
        self._require_file()
        safety_copy = safety_copy_path(self.path)
        create_private(safety_copy).close()
        try:
            with closing(_connect(self.path, "rw", timeout=_STEP_BUSY_S)) as live:
                with closing(sqlite3.connect(safety_copy, isolation_level=None)) as safety:
                    _copy(live, safety, cancel, f"the safety copy of {self.path}")
                    safety.execute("PRAGMA journal_mode=DELETE")
                with closing(_connect(raw, "ro")) as backup:
                    _copy(backup, live, cancel, f"the restore into {self.path}")
        except sqlite3.Error as error:
            raise SourceError(f"cannot restore into {self.path}: {_reason(error)}; stop the app's writers and try again", stage="restore") from None
        return safety_copy

    def _require_file(self) -> None:
        if not self.path.exists():
            raise SourceError(f"the SQLite database {self.path} does not exist; check BACKUP_SOURCE (relative paths start from {Path.cwd()})")
        if not self.path.is_file():
            raise SourceError(f"the SQLite database {self.path} is not a file; point BACKUP_SOURCE at the database file")


def safety_copy_path(database: Path, now: datetime | None = None) -> Path:
    """Return a new path beside `database` where its live content is saved before a restore overwrites it."""
    stamp = (now or datetime.now(timezone.utc)).strftime(STAMP)
    candidate = database.with_name(f"{database.name}.pre-restore-{stamp}")
    number = 1
    while candidate.exists():
        number += 1
        candidate = database.with_name(f"{database.name}.pre-restore-{stamp}-{number}")
    return candidate


def open_source(url: str, cwd: Path) -> SqliteSource:
    """Given `sqlite:///relative.db` or `sqlite:////absolute.db`, return the source. Raise ValueError if malformed."""
    rest = url.split("://", 1)[1]
    if not rest.startswith("/"):
        raise ValueError(f"{url!r} has a host part; write sqlite:///relative/path.db or sqlite:////absolute/path.db")
    path_text = rest[1:].split("?", 1)[0]
    if not path_text or path_text in (":memory:",) or path_text.endswith("/"):
        raise ValueError(f"{url!r} names no database file; write sqlite:///relative/path.db or sqlite:////absolute/path.db")
    path = Path(path_text)
    return SqliteSource(path=path if path.is_absolute() else cwd / path)


def verify(raw: Path, cancel: threading.Event) -> str:
    """Run `PRAGMA integrity_check` on a raw snapshot; return what passed. Raise IntegrityError or Cancelled."""
    try:
        connection = _connect(raw, "ro")
    except sqlite3.Error as error:
        raise IntegrityError(f"the snapshot cannot be opened as a SQLite database: {_reason(error)}") from None
    with closing(connection), _interrupt_when(cancel, connection):
        try:
            rows = [row[0] for row in connection.execute(CHECK + "(20)")]
        except sqlite3.OperationalError as error:
            if cancel.is_set():
                raise Cancelled("the worker is stopping; the integrity check was interrupted") from None
            raise IntegrityError(f"{CHECK} could not run: {_reason(error)}") from None
        except sqlite3.DatabaseError as error:
            raise IntegrityError(f"{CHECK} failed: {_reason(error)}") from None
    if rows != ["ok"]:
        raise IntegrityError(f"{CHECK} failed: {'; '.join(rows[:3])}")
    return CHECK
