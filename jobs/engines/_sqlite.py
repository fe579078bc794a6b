"""SQLite primitives shared by the SQLite engine's snapshot, check and restore: connections, lock waits that
look at the clock and the stop flag, page copies in bounded steps, and the integrity check.

Copies use the online backup API in steps of a few MiB, so a stop request is seen within milliseconds however
large the database. A snapshot holds ONE read transaction on the source across all steps: every step reads the
same consistent state and the copy never restarts when another process commits (a backup that opens a new read
transaction per step restarts on every foreign commit and may never finish on a busy database).
"""

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
import sqlite3
import threading
import time
from urllib.parse import quote

from jobs.errors import Cancelled, IntegrityError, SourceError
from jobs.interrupt import acting_when

BUSY_TIMEOUT_S = 60.0  # how long a snapshot or restore waits for another connection's lock
STEP_BUSY_S = 0.2  # each lock attempt waits this long, then we look at the clock and the stop flag
STEP_BYTES = 4 << 20  # pages copied per backup step: a stop is seen within one step
CHECK = "PRAGMA integrity_check"
HEADER = b"SQLite format 3\x00"

SQLITE_OK, SQLITE_DONE = 0, 101
_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED (and their extended codes, masked)
_DAMAGED_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


def connect(path: Path, mode: str, timeout: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """Open `path` in URI `mode` (ro, rw or rwc) in autocommit mode; `ro` and `rw` never create the file."""
    uri = f"file:{quote(path.as_posix())}?mode={mode}"
    return sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)


def reason(error: BaseException) -> str:
    """Return an SQLite error's text without its trailing period."""
    return str(error).rstrip(".") or type(error).__name__


def is_busy(error: sqlite3.Error) -> bool:
    """Return whether `error` means another connection holds a lock we need."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _BUSY_CODES
    return "locked" in str(error) or "busy" in str(error)


def is_damaged(error: sqlite3.Error) -> bool:
    """Return whether `error` means the file is not a usable SQLite database (not a database, malformed)."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _DAMAGED_CODES
    return "not a database" in str(error) or "malformed" in str(error)


class LockWait:
    """The clock and the stop flag while we wait for another connection's lock."""

    def __init__(self, cancel: threading.Event, what: str) -> None:
        self.cancel = cancel
        self.what = what
        self.since: float | None = None  # when the current wait for a lock began

    def stop_if_cancelled(self) -> None:
        """Raise Cancelled if the worker is stopping."""
        if self.cancel.is_set():
            raise Cancelled(f"the worker is stopping; {self.what} was interrupted")

    def busy(self) -> None:
        """A lock we need is held: raise Cancelled if stopping, SourceError once we waited BUSY_TIMEOUT_S."""
        self.stop_if_cancelled()
        now = time.monotonic()
        if self.since is None:
            self.since = now
        elif now - self.since > BUSY_TIMEOUT_S:
            raise SourceError(f"{self.what} waited {BUSY_TIMEOUT_S:g} s for another connection's lock; "
                              "a long write transaction is holding the database, try again when it ends")

    def progressed(self) -> None:
        """The lock was granted: a later wait starts its own clock."""
        self.since = None


def begin_read(connection: sqlite3.Connection, wait: LockWait) -> None:
    """Open a read transaction on `connection` and take its shared lock (or WAL snapshot) now, waiting for a
    writer's lock in short attempts. Raise Cancelled, SourceError (too long), or sqlite3.Error."""
    while True:
        connection.execute("BEGIN")
        try:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return
        except sqlite3.OperationalError as error:
            connection.execute("ROLLBACK")
            if not is_busy(error):
                raise
        wait.busy()
        time.sleep(0.05)


def step_pages(connection: sqlite3.Connection) -> int:
    """Return how many pages of `connection`'s database make one backup step of about STEP_BYTES."""
    page_size = connection.execute("PRAGMA page_size").fetchone()[0] or 4096
    return max(1, STEP_BYTES // page_size)


def copy_pages(source: sqlite3.Connection, target: sqlite3.Connection, wait: LockWait, pages: int,
               after_step: Callable[[int], None] | None = None) -> None:
    """Copy every page of `source` into `target` with the backup API, `pages` per step.

    Between steps the stop flag is checked (and `after_step(status)` called) until the copy is done; a step
    that finds a lock busy is retried until the LockWait deadline. The last step commits the target; nothing
    is checked after it, so a stop that arrives then never undoes or misreports the finished copy. Raise
    Cancelled, SourceError or sqlite3.Error; the target is rolled back when this raises."""

    def progress(status: int, _remaining: int, _total: int) -> None:
        if status == SQLITE_DONE:
            return
        if status in _BUSY_CODES:
            wait.busy()
            return
        wait.progressed()
        if after_step is not None:
            after_step(status)
        wait.stop_if_cancelled()

    source.backup(target, pages=pages, progress=progress, sleep=0.05)


def interrupt_when(stop: Callable[[], bool], connection: sqlite3.Connection) -> AbstractContextManager[None]:
    """Interrupt `connection`'s running statement as soon as `stop()` is true."""
    return acting_when(stop, connection.interrupt, name="sqlite-interrupt")


def integrity_check(path: Path, stop: Callable[[], bool]) -> str:
    """Run `PRAGMA integrity_check` on the database file `path`; return what passed.

    Raise IntegrityError if it fails, Cancelled if `stop()` became true while it ran."""
    try:
        connection = connect(path, "ro")
    except sqlite3.Error as error:
        raise IntegrityError(f"the snapshot cannot be opened as a SQLite database: {reason(error)}") from None
    try:
        with interrupt_when(stop, connection):
            try:
                rows = [row[0] for row in connection.execute(CHECK + "(20)")]
            except sqlite3.OperationalError as error:
                if stop():
                    raise Cancelled("the worker is stopping; the integrity check was interrupted") from None
                raise IntegrityError(f"{CHECK} could not run: {reason(error)}") from None
            except sqlite3.DatabaseError as error:
                raise IntegrityError(f"{CHECK} failed: {reason(error)}") from None
    finally:
        connection.close()
    if rows != ["ok"]:
        raise IntegrityError(f"{CHECK} failed: {'; '.join(rows[:3])}")
    return CHECK


def page_count(path: Path) -> int:
    """Return the number of pages of a database file, from its header (0 for an empty file)."""
    with path.open("rb") as handle:
        header = handle.read(100)
    if len(header) < 100:
        return 0
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    return path.stat().st_size // page_size if page_size else 0


def user_tables(connection: sqlite3.Connection) -> list[str]:
    """Return the tables that hold the app's rows, by name: ordinary and virtual tables (an FTS index counts its
    documents), not SQLite's own (`sqlite_%`) nor a virtual table's shadow tables (where it keeps its rows)."""
    try:
        found = connection.execute("SELECT name, type FROM pragma_table_list WHERE schema = 'main'").fetchall()
    except sqlite3.OperationalError:  # SQLite before 3.37 cannot tell shadow tables: they count as tables there
        found = [(name, "virtual" if (sql or "").lstrip().upper().startswith("CREATE VIRTUAL") else "table")
                 for name, sql in connection.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'")]
    return sorted(name for name, kind in found if kind in ("table", "virtual") and not name.startswith("sqlite_"))


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _rows(connection: sqlite3.Connection, table: str, any_row: bool = False) -> int | None:
    """Return the rows of `table` (with `any_row`, 1 if it has one, else 0), or None for a virtual table whose
    module this SQLite lacks (it cannot be read here at all)."""
    query = f"SELECT EXISTS (SELECT 1 FROM {_quoted(table)})" if any_row else f"SELECT count(*) FROM {_quoted(table)}"
    try:
        return connection.execute(query).fetchone()[0]
    except sqlite3.OperationalError as error:
        if "no such module" in str(error):
            return None
        raise


def count_rows(path: Path, stop: Callable[[], bool]) -> dict[str, object]:
    """Return the exact rows of each user table of the database file `path` (see `user_tables`), as the manifest
    records them: {"unit": "rows", "total": N, "tables": {name: n}}; a virtual table whose module is missing is
    left out. Raise Cancelled if `stop()` became true, sqlite3.Error if the file cannot be read."""
    connection = connect(path, "ro")
    tables: dict[str, int] = {}
    try:
        with interrupt_when(stop, connection):
            for name in user_tables(connection):
                try:
                    if stop():
                        raise sqlite3.OperationalError("interrupted")
                    found = _rows(connection, name)
                except sqlite3.OperationalError:
                    if stop():
                        raise Cancelled("the worker is stopping; the row count was interrupted") from None
                    raise
                if found is not None:
                    tables[name] = found
    finally:
        connection.close()
    return {"unit": "rows", "total": sum(tables.values()), "tables": tables}


def has_rows(path: Path) -> bool:
    """Return whether any user table (see `user_tables`) of the live database `path`, opened read-only, has a row.
    Raise sqlite3.Error if it cannot be read."""
    connection = connect(path, "ro", timeout=STEP_BUSY_S * 10)
    try:
        return any(_rows(connection, name, any_row=True) for name in user_tables(connection))
    finally:
        connection.close()
