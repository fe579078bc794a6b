"""Connections for table retention: one SQLAlchemy engine per call, set up for short write transactions.

SQLite: the file is opened with `mode=rw` (a missing file is never created), `PRAGMA foreign_keys=ON` (SQLite
enforces foreign keys, and runs ON DELETE CASCADE, only on connections that turn them on), in WAL mode
`synchronous=NORMAL` for this connection only, a short busy timeout, and transactions that say how they lock:
reads `BEGIN`, deletes `BEGIN IMMEDIATE` (the write lock is taken at the start, so a batch never fails half-way
on a lock it could not upgrade).
PostgreSQL: psycopg 3, `lock_timeout` so a batch never queues behind an app's long lock, and
`synchronous_commit=off` for this session only (a crash may undo the last batches, which the next purge redoes).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
import sqlite3
import threading
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

BUSY_TIMEOUT_S = 2.0  # one wait for SQLite's write lock; the caller retries and looks at the cancel flag between
LOCK_TIMEOUT = "5s"  # PostgreSQL: how long one statement may wait for a lock the app holds
_WRITE = "purge_write"
_INTERRUPT_EVERY = 20_000  # SQLite virtual machine steps between looks at the cancel flag

EngineLike = str | Engine


def sqlite_path(url: sa.URL, cwd: Path | None) -> Path:
    """Given a `sqlite:///relative.db` or `sqlite:////absolute.db` URL, return the file. Raise ValueError if none."""
    database = url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        raise ValueError(f"{url.render_as_string()!r} names no database file; write sqlite:///relative/path.db "
                         "or sqlite:////absolute/path.db")
    path = Path(database)
    return path if path.is_absolute() else (cwd or Path.cwd()) / path


def create_engine(source: EngineLike, cwd: Path | None = None) -> Engine:
    """Given a database URL (`sqlite://…`, `postgresql://…`, `postgres://…`) or an Engine, return a new Engine set up
    for retention; the caller disposes it. An Engine passed in only lends its URL. Raise ValueError for other
    schemes."""
    url = source.url if isinstance(source, Engine) else sa.make_url(_canonical(source))
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(sqlite_path(url, cwd))
    if backend == "postgresql":
        return sa.create_engine(url.set(drivername="postgresql+psycopg"), poolclass=NullPool,
                                connect_args={"application_name": "backup-worker retention"})
    raise ValueError(f"table retention works on SQLite and PostgreSQL sources, not {backend}")


@contextmanager
def engine_for(source: EngineLike, cwd: Path | None = None) -> Iterator[Engine]:
    """Yield a retention engine for `source` (see create_engine) and dispose it afterwards."""
    engine = create_engine(source, cwd)
    try:
        yield engine
    finally:
        engine.dispose()


def _canonical(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    if separator and scheme.lower() == "postgres":
        return "postgresql://" + rest
    return url


def _sqlite_engine(path: Path) -> Engine:
    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(f"file:{quote(path.as_posix())}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S,
                                     isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA foreign_keys=ON")
        if connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            # Our commits skip the fsync (the app's keep theirs): a power cut may undo the last batches, never
            # corrupt the file; the next purge deletes those rows again.
            connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    engine = sa.create_engine("sqlite://", creator=connect, poolclass=NullPool)

    @event.listens_for(engine, "begin")
    def begin(connection: Connection) -> None:
        # The driver is in autocommit mode (isolation_level=None); we say when and how a transaction starts.
        connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.info.get(_WRITE) else "BEGIN")

    return engine


def is_sqlite(connection: Connection) -> bool:
    return connection.dialect.name == "sqlite"


@contextmanager
def write_transaction(connection: Connection) -> Iterator[None]:
    """Run the block in one transaction that holds the write lock from its start (SQLite: BEGIN IMMEDIATE)."""
    if connection.in_transaction():
        connection.commit()
    connection.info[_WRITE] = True
    try:
        with connection.begin():
            connection.info[_WRITE] = False
            yield
    finally:
        connection.info[_WRITE] = False


def prepare(connection: Connection) -> None:
    """Session settings for a purge connection (PostgreSQL: bounded lock waits, commits without waiting for the
    WAL flush)."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SET lock_timeout = '{LOCK_TIMEOUT}'")  # a constant, never user input
        # Like synchronous=NORMAL on SQLite: a crash may undo the last batches (redone by the next purge), no more.
        connection.exec_driver_sql("SET synchronous_commit = off")
        connection.commit()


@contextmanager
def interruptible(connection: Connection, cancel: threading.Event) -> Iterator[None]:
    """Interrupt the statement `connection` is running as soon as `cancel` is set (a long scan stops promptly)."""
    raw = connection.connection.driver_connection
    if is_sqlite(connection):
        raw.set_progress_handler(cancel.is_set, _INTERRUPT_EVERY)  # non-zero return aborts the statement
        try:
            yield
        finally:
            raw.set_progress_handler(None, 0)
        return
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.1):
            if cancel.is_set():
                getattr(raw, "cancel_safe", raw.cancel)()
                return

    watcher = threading.Thread(target=watch, name="purge-interrupt", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def reason(error: BaseException) -> str:
    """Return the database's own words for `error`, one line, without the SQL or its parameters."""
    original = getattr(error, "orig", None) or error
    text = str(original).strip().splitlines()
    return (text[0] if text else type(original).__name__).rstrip(".")


def is_locked(error: BaseException) -> bool:
    """Return whether `error` is SQLite's "database is locked" (another connection holds the write lock)."""
    original = getattr(error, "orig", None)
    return isinstance(original, sqlite3.OperationalError) and "locked" in str(original)
