"""Connections for table retention: one SQLAlchemy engine per call, set up for short write transactions, on
exactly the database the backup reads.

The database is the engine Source's own (`Source.sql_database()`: the SQLite file, or the PostgreSQL connection
settings libpq parsed from the URL), never a second reading of BACKUP_SOURCE: a URL that SQLAlchemy and libpq
would read differently (`?dbname=a+b`, `%20` in a SQLite path) cannot make the purge act on another database.

SQLite: the file is opened with `mode=rw` (a missing file is never created), `PRAGMA foreign_keys=ON` (SQLite
enforces foreign keys, and runs ON DELETE CASCADE, only on connections that turn them on), in WAL mode
`synchronous=NORMAL` for this connection only, a short busy timeout, and transactions that say how they lock:
reads `BEGIN`, deletes `BEGIN IMMEDIATE` (the write lock is taken at the start, so a batch never fails half-way
on a lock it could not upgrade). The backup's raw snapshot, when given, is ATTACHed read-only as `held-backup`.
PostgreSQL: psycopg 3, `lock_timeout` so a batch never queues behind an app's long lock, deletes in REPEATABLE
READ (see jobs.purge.delete), and `synchronous_commit=off` for this session only (a crash may undo the last
batches, which the next purge redoes).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
import sqlite3
import threading
from typing import TypeVar
from urllib.parse import quote

import psycopg
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from jobs import engines
from jobs.engines import Source, pg_connect
from jobs.errors import SourceError
from jobs.interrupt import acting_when
from jobs.purge.held import HELD_SCHEMA

BUSY_TIMEOUT_S = 2.0  # one wait for SQLite's write lock; the caller retries and looks at the cancel flag between
LOCK_TIMEOUT = "5s"  # PostgreSQL: how long one statement may wait for a lock the app holds
APPLICATION_NAME = "backup-worker retention"
_WRITE = "purge_write"
_INTERRUPT_EVERY = 20_000  # SQLite virtual machine steps between looks at the cancel flag
_RETRY_STATES = ("40001", "40P01")  # serialization failure, deadlock: the batch is rolled back and may run again

T = TypeVar("T")
SourceLike = Source | str  # a URL is opened by jobs.engines.open_source, the parser the backup uses


def sql_database(source: SourceLike, cwd: Path | None = None) -> Path | pg_connect.Connection:
    """Given the engine Source the backup reads (or a BACKUP_SOURCE URL, opened the same way), return the SQLite
    file or the PostgreSQL connection settings retention opens. Raise ValueError for a malformed URL or a source
    without tables (Redis)."""
    opened = engines.open_source(source, cwd or Path.cwd()) if isinstance(source, str) else source
    database = opened.sql_database()
    if database is None:
        raise ValueError(f"table retention works on SQLite and PostgreSQL sources, not {opened.kind}")
    return database


def create_engine(source: SourceLike, cwd: Path | None = None, held_file: Path | None = None) -> Engine:
    """Given the source (see sql_database), return a new Engine set up for retention; the caller disposes it. With
    `held_file` (SQLite: the backup's raw snapshot), every connection has it attached read-only as HELD_SCHEMA.
    Raise ValueError for a source without tables."""
    database = sql_database(source, cwd)
    if isinstance(database, Path):
        return _sqlite_engine(database, held_file)
    return _postgres_engine(database)


@contextmanager
def engine_for(source: SourceLike, cwd: Path | None = None, held_file: Path | None = None) -> Iterator[Engine]:
    """Yield a retention engine for `source` (see create_engine) and dispose it afterwards."""
    engine = create_engine(source, cwd, held_file)
    try:
        yield engine
    finally:
        engine.dispose()


def _postgres_engine(conn: pg_connect.Connection) -> Engine:
    def connect() -> psycopg.Connection:
        try:
            return psycopg.connect(conn.conninfo(), password=conn.password, application_name=APPLICATION_NAME)
        except psycopg.Error as error:
            raise SourceError(pg_connect.connection_problem(str(error), conn)) from None

    return sa.create_engine("postgresql+psycopg://", creator=connect, poolclass=NullPool)


def _sqlite_engine(path: Path, held_file: Path | None) -> Engine:
    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(f"file:{quote(path.as_posix())}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S,
                                     isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA foreign_keys=ON")
        if held_file is not None:  # immutable: ours alone, never written again, so SQLite takes no locks on it
            connection.execute(f'ATTACH DATABASE ? AS "{HELD_SCHEMA}"',
                               (f"file:{quote(held_file.as_posix())}?mode=ro&immutable=1",))
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
    """Run the block in one transaction that holds the write lock from its start (SQLite: BEGIN IMMEDIATE), or
    in REPEATABLE READ (PostgreSQL: a cascade that meets a row newer than the transaction fails, see delete)."""
    if connection.in_transaction():
        connection.commit()
    connection.info[_WRITE] = True
    try:
        with connection.begin():
            connection.info[_WRITE] = False
            if not is_sqlite(connection):
                connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield
    except sa.exc.DBAPIError:
        _roll_back_what_is_left(connection)
        raise
    finally:
        connection.info[_WRITE] = False


def _roll_back_what_is_left(connection: Connection) -> None:
    """After a failed write transaction, roll back what the database still holds open. SQLite in rollback-journal
    mode: a COMMIT that could not get the exclusive lock while an app's reader reads fails with "database is
    locked" and leaves the transaction open; rolled back here, the caller's retry starts it afresh instead of
    failing with "cannot start a transaction within a transaction"."""
    if not is_sqlite(connection) or connection.closed or connection.invalidated:
        return
    raw = connection.connection.driver_connection
    if raw is not None and raw.in_transaction:
        raw.rollback()


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
    with acting_when(cancel.is_set, getattr(raw, "cancel_safe", raw.cancel), 0.1, "purge-interrupt"):
        yield


def retry_locked(work: Callable[[], T], cancel: threading.Event, attempts: int) -> T:
    """Run `work` (one write transaction), again while SQLite says another connection holds the write lock (each
    wait is BUSY_TIMEOUT_S), at most `attempts` times and not once `cancel` is set; raise its last error."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except sa.exc.DBAPIError as error:
            if not is_locked(error) or attempt >= attempts or cancel.is_set():
                raise
    raise ValueError("attempts must be at least 1")


def reason(error: BaseException) -> str:
    """Return the database's own words for `error`, one line, without the SQL or its parameters."""
    original = getattr(error, "orig", None) or error
    text = str(original).strip().splitlines()
    return (text[0] if text else type(original).__name__).rstrip(".")


def is_locked(error: BaseException) -> bool:
    """Return whether `error` is SQLite's "database is locked" (another connection holds the write lock)."""
    original = getattr(error, "orig", None)
    return isinstance(original, sqlite3.OperationalError) and "locked" in str(original)


def is_serialization_failure(error: BaseException) -> bool:
    """Return whether `error` is PostgreSQL refusing a statement because rows changed under it (or a deadlock)."""
    return getattr(getattr(error, "orig", None), "sqlstate", None) in _RETRY_STATES
