"""PostgreSQL: streamed `pg_dump` archives, proven by `pg_restore` reading every block in the same pass.

A snapshot is `pg_dump --format=custom --compress=0`: one consistent (repeatable read) view of the database,
written to a pipe that the pipeline reads, hashes and compresses with zstd; nothing uncompressed touches the
disk. Every chunk read is also written to `pg_restore --file=/dev/null` through its stdin. Reading a custom
archive from a pipe, pg_restore cannot seek, so it walks the archive front to back and reads each data block
in full to reach the next: a truncated or damaged archive makes it fail ("could not read from input file",
"could not find block ID"), and only an archive it read to the end passes. pg_dump's exit status is checked
at the end of the stream: a dump that failed half-way is never published.

pg_dump reads a snapshot the worker exported first (`--snapshot`), from a REPEATABLE READ transaction held open
until pg_dump ends; that snapshot (`xmin:xmax:xip`) and the transactions running right after it go into the
manifest's `holds`, so table retention can tell which rows the dump holds (jobs.purge.held). pg_dump is chosen
to match the server (see pg_tools); the password travels in the children's environment only.
"""

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
import io
from pathlib import Path
import threading
import time
from typing import Any, ClassVar, NoReturn

import psycopg
import structlog

from jobs import execute
from jobs.artifacts import set_name
from jobs.engines import HOLDS, InServer, Snapshot, pg_connect, pg_tools
from jobs.engines.pg_connect import Connection
from jobs.engines import pg_rows
from jobs.engines.pg_restore import restore_database, version_warning
from jobs.engines.pg_tools import bin_dir
from jobs.engines.pg_rows import CountingCheck, has_rows
from jobs.errors import Cancelled, IntegrityError, SourceError
from jobs.redact import scrub

SCHEMES = ("postgresql", "postgres")
URL_TARGET = True  # `restore --target-url` may name any PostgreSQL database
PG_SNAPSHOT = "pg_snapshot"  # in the manifest's `holds`: the dump's snapshot, xmin:xmax:xip (see jobs.purge.held)
PG_RUNNING = "pg_running"  # in `holds`: the xids (32-bit) that held a transaction lock right after that snapshot
KIND = "pgdump"
CHECK = "pg_restore read every block"
CLUSTER_FRESH_S = 60.0  # how long the server's system identifier is taken as read (PostgresSource.identity)
LOCK_WAIT = "5min"  # pg_dump gives up if a table stays locked this long (a migration), rather than hang the night
CATALOG_DRIVER = "postgresql+psycopg"

log = structlog.get_logger("jobs.engines.postgres")


# --- the check: pg_restore reading the stream -------------------------------------------------------------------

class RestoreCheck:
    """Feeds a raw archive to `pg_restore --file=/dev/null` through a pipe; finish() waits for its verdict."""

    path: Path | None = None  # keeps no copy of the archive

    def __init__(self, child: execute.Child, cancel: threading.Event) -> None:
        self._child = child
        self._cancel = cancel
        self._closed = False

    def feed(self, chunk: bytes) -> None:
        if self._cancel.is_set():
            raise Cancelled("the worker is stopping; the archive check was interrupted")
        try:
            self._child.stdin.write(chunk)
        except (OSError, ValueError):  # pg_restore stopped reading: it failed, finished early, or was stopped
            self._stopped_reading()

    def finish(self) -> str:
        try:
            self._child.stdin.close()
        except (OSError, ValueError):
            self._stopped_reading()
        code = self._child.wait(None, self._cancel)
        if self._cancel.is_set() or code is None:
            raise Cancelled("the worker is stopping; the archive check was interrupted")
        if code != 0:
            raise IntegrityError(self._failure(code))
        return CHECK

    def _stopped_reading(self) -> NoReturn:
        code = self._child.wait(5, self._cancel)
        if self._cancel.is_set():
            raise Cancelled("the worker is stopping; the archive check was interrupted")
        if code is None:
            self._child.stop()
            raise IntegrityError("pg_restore stopped reading the archive before its end")
        if code == 0:  # pg_restore exits as soon as the archive is complete: these bytes come after its end
            raise IntegrityError("the stream goes on after the end of a complete archive, so it is not what pg_dump wrote")
        raise IntegrityError(self._failure(code))

    def _failure(self, code: int) -> str:
        failure = self._child.failure(code)
        hint = "; install a newer PostgreSQL client" if "unsupported version" in failure else ""
        return f"pg_restore could not read the whole archive: {failure}{hint}"

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._child.stop()


@contextmanager
def _restore_check(pg_restore: Path, cancel: threading.Event) -> Iterator[RestoreCheck]:
    with execute.writing([str(pg_restore), "--file=/dev/null"], cancel=cancel) as child:
        check = RestoreCheck(child, cancel)
        try:
            yield check
        finally:
            check.close()


@contextmanager
def checker(workdir: Path, cancel: threading.Event) -> Iterator[RestoreCheck]:
    """Yield the proof for an existing raw archive: feed it every chunk in order, then finish(). The newest
    installed pg_restore reads archives of every older pg_dump. Raise SourceError if none is installed."""
    with _restore_check(pg_tools.newest(bin_dir()).pg_restore, cancel) as check:
        yield check


# --- the stream: pg_dump's stdout ---------------------------------------------------------------------------------

class DumpStream(io.RawIOBase):
    """pg_dump's stdout; at its end, pg_dump's exit status: a failed dump raises SourceError instead of ending."""

    def __init__(self, child: execute.Child, cancel: threading.Event, database: str) -> None:
        super().__init__()
        self._child = child
        self._cancel = cancel
        self._database = database
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._ended:
            return 0
        if self._cancel.is_set():
            raise Cancelled("the worker is stopping; the dump was interrupted")
        try:
            count = self._child.stdout.readinto(buffer)
        except (OSError, ValueError):
            count = 0
        if count:
            return count
        code = self._child.wait(None, self._cancel)
        if self._cancel.is_set() or code is None:
            raise Cancelled("the worker is stopping; the dump was interrupted")
        if code != 0:
            raise SourceError(dump_failure(self._database, self._child.failure(code)))
        self._ended = True
        return 0


def dump_failure(database: str, failure: str) -> str:
    """Return one sentence for a pg_dump that failed: what it said, and what to do about it."""
    hint = "no backup was kept"
    if "permission denied" in failure:
        hint = ("the backup user must be able to read every table: GRANT SELECT ON ALL TABLES IN SCHEMA ... (and "
                "USAGE on the schemas, SELECT on sequences), or back up as the database owner")
    elif "LOCK TABLE" in failure or "lock timeout" in failure:
        hint = f"another session held a table locked for over {LOCK_WAIT} (a migration?); the next backup tries again"
    elif "server version mismatch" in failure:
        hint = "set PG_BIN_DIR to a newer PostgreSQL client, or unset it to let the worker choose"
    elif "terminating connection" in failure or "server closed the connection" in failure or "connection" in failure:
        hint = "the server or the network dropped the connection mid-dump; the next backup tries again"
    return f"pg_dump of {database} failed: {failure}; {hint}"


# --- the source ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PostgresSource(InServer):
    """A PostgreSQL database reached through a URL."""

    conn: Connection
    kind: str = KIND
    set_name: str | None = field(default=None, kw_only=True)  # BACKUP_NAME or BACKUP_SOURCE_<NAME>, else dbname
    snapshot_on_disk: ClassVar[bool] = False  # pg_dump's archive streams to the compressor: no raw file on the volume
    safety_backup: ClassVar[bool] = True  # a restore over the database is preceded by a pre-restore backup
    _versions: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    # The server's system identifier, with when it was read: kept for a minute (one backup cycle asks several
    # times), never when unknown. The source lives as long as the process, and a server may be replaced overnight.
    _cluster: dict[str, tuple[str, float]] = field(default_factory=dict, compare=False, repr=False)

    def name(self) -> str:
        return self.set_name or set_name(self.conn.dbname, "postgres")

    def describe(self) -> dict[str, str]:
        return {"kind": KIND, "database": self.conn.dbname, "host": self.conn.host}

    def target(self) -> str:
        return self.conn.masked

    def identity(self) -> dict[str, str]:
        found = {"host": self.conn.hostname, "port": self.conn.port, "database": self.conn.dbname}
        known = self._cluster.get("read")
        if known is None or time.monotonic() - known[1] > CLUSTER_FRESH_S:
            cluster = pg_connect.cluster_id(self.conn)
            self._cluster.clear()
            if cluster:
                self._cluster["read"] = known = (cluster, time.monotonic())
            else:
                known = None
        return {**found, "cluster": known[0]} if known else found

    def protected_files(self) -> list[Path]:
        return []

    def sql_database(self) -> Connection:
        return self.conn

    def has_rows(self) -> bool:
        return has_rows(self.conn)

    def estimate_size(self) -> int:
        return pg_connect.database_size(self.conn)

    def missing(self) -> str | None:
        """Return why the database counts as lost (it has no user tables: none in any schema but the system's,
        an extension's own tables not counted), or None. Raise SourceError, Unreachable when nobody answers."""
        with pg_connect.connect(self.conn) as session:
            found = pg_rows.user_tables(session)
        return None if found else f"the PostgreSQL database {self.conn.dbname} on {self.conn.host} has no user tables"

    def versions(self) -> dict[str, str]:
        return dict(self._versions)

    def tools(self) -> pg_tools.Tools:
        """Return the pg_dump and pg_restore that fit this server, and record both versions. Raise SourceError."""
        server_text, server_major = pg_connect.server_version(self.conn)
        tools = pg_tools.tools_for(server_major, server_text, bin_dir())
        self._versions.update(pg_dump=tools.version, server=server_text)
        return tools

    @contextmanager
    def snapshot(self, workdir: Path, cancel: threading.Event) -> Iterator[Snapshot]:
        """Yield pg_dump's archive as a stream, with pg_restore reading it as the check; both stopped on exit.

        Raise SourceError (unreachable, refused, no fitting pg_dump, the dump failed) or Cancelled.
        """
        if cancel.is_set():
            raise Cancelled("the worker is stopping; the dump was not started")
        tools = self.tools()
        conninfo, env = pg_connect.for_child(self.conn, self._versions["server"])
        with ExitStack() as children:
            exported, current, running = children.enter_context(exported_snapshot(self.conn))  # until pg_dump ends
            args = [str(tools.pg_dump), "--format=custom", "--compress=0", "--no-password",
                    f"--lock-wait-timeout={LOCK_WAIT}", *([f"--snapshot={exported}"] if exported else []),
                    f"--dbname={conninfo}"]
            log.info("pg_dump.start", database=self.conn.dbname, host=self.conn.host, pg_dump=tools.version,
                     server=self._versions["server"], path=str(tools.pg_dump), snapshot=current)
            try:
                check = children.enter_context(_restore_check(tools.pg_restore, cancel))
                dump = children.enter_context(execute.reading(args, env=env, secrets=self.conn.secrets(), cancel=cancel))
            except OSError as error:
                raise SourceError(f"cannot start {error.filename or 'pg_dump'}: {error.strerror or error}; check "
                                  "PG_BIN_DIR and the PostgreSQL client installation") from None
            details: dict[str, Any] = {HOLDS: {PG_SNAPSHOT: current, PG_RUNNING: running}}  # + counts, see pg_rows
            counting = CountingCheck(check, details, self.conn.dbname)
            yield Snapshot(DumpStream(dump, cancel, self.conn.dbname), counting, details=details)

    def problem(self) -> str | None:
        try:
            self.tools()
        except SourceError as error:
            return str(error)
        return None

    def restore_warning(self, versions: Mapping[str, Any]) -> str | None:
        """Warn when the backup comes from a newer PostgreSQL major than this server runs. Raise SourceError if
        the server cannot be reached."""
        target_text, _ = pg_connect.server_version(self.conn)
        server = versions.get("server")
        return version_warning(server if isinstance(server, str) else None, target_text)

    def restore_refusal(self) -> str | None:
        return None

    def restore(self, raw: Path, cancel: threading.Event, notify: Callable[[str], None] | None = None) -> None:
        """Restore the proven archive `raw` into this database in one transaction, replacing the objects the
        archive holds (objects it does not hold are left alone); return None (the safety backup is an ordinary
        backup the caller takes first, see `safety_backup`). Warnings (a backup from a newer major) are logged
        and go to `notify` before anything changes. Raise SourceError (unreachable, refused, the restore failed)
        or Cancelled, and then the database is unchanged (the transaction was rolled back)."""
        restore_database(raw, self.conn, cancel, notify)


@contextmanager
def exported_snapshot(conn: Connection) -> Iterator[tuple[str | None, str, list[int]]]:
    """Open a REPEATABLE READ, READ ONLY transaction and yield the id of its exported snapshot, for
    `pg_dump --snapshot` (None when the server cannot export one: pg_dump then takes its own, later snapshot),
    that snapshot as `xmin:xmax:xip,…`, and the 32-bit ids that held a transaction lock right after it was taken
    (running transactions and their subtransactions): together, the bound of what the dump holds (see
    jobs.purge.held). The transaction stays open until exit (the export can be imported only while it is). Raise
    SourceError if the server cannot be reached."""
    session = pg_connect.connect(conn)
    try:
        session.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        current = f"{pg_connect.snapshot_function(session.info.server_version)}::text"
        # The transaction's snapshot is taken as the statement starts; pg_locks is read live while it runs, so
        # right after the snapshot (and before anything that ran then could be missed for long).
        locks = ("ARRAY(SELECT DISTINCT transactionid::text::bigint FROM pg_locks "
                 "WHERE locktype = 'transactionid')")
        try:
            exported, snapshot, running = session.execute(
                f"SELECT pg_export_snapshot(), {current}, {locks}").fetchone()
        except psycopg.Error as error:  # e.g. a standby before PostgreSQL 10
            log.warning("pg_dump.snapshot_not_exported", reason=scrub(str(error).strip(), conn.secrets())[:200],
                        detail="pg_dump takes its own snapshot after this one; table retention uses this one")
            session.execute("ROLLBACK")
            session.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            exported = None
            snapshot, running = session.execute(f"SELECT {current}, {locks}").fetchone()
    except psycopg.Error as error:
        session.close()
        reason = scrub(str(error).strip(), conn.secrets())
        raise SourceError(f"cannot take a snapshot of {conn.dbname} on {conn.host}: {reason}") from None
    try:
        yield _text(exported) if exported is not None else None, _text(snapshot), sorted(int(xid) for xid in running)
    finally:
        session.close()


def _text(value: object) -> str:
    """Return a text value of the server as str: from a SQL_ASCII database psycopg hands text back as bytes."""
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def open_source(url: str, cwd: Path, name: str | None = None) -> PostgresSource:
    """Given a postgresql:// or postgres:// URL, return the source; nothing is connected yet. Raise ValueError."""
    return PostgresSource(pg_connect.parse_url(url), set_name=name)


# --- wiring helpers for the worker --------------------------------------------------------------------------------

def catalog_url(url: str) -> str:
    """Return a CATALOG_URL for SQLAlchemy with the drivers this worker has: a PostgreSQL URL (postgresql://,
    postgres://, or a SQLAlchemy one with any driver, such as postgresql+asyncpg:// copied from the app) goes
    through psycopg 3, a SQLite one (sqlite+aiosqlite:// too) through sqlite3; other URLs unchanged. The driver
    is read off by `jobs.engines.scheme_of`, as for BACKUP_SOURCE."""
    from jobs.engines import scheme_of, source_url  # the package imports this module lazily

    plain = source_url(url)
    scheme, sep, rest = plain.partition("://")
    if sep and scheme.lower() in SCHEMES:
        return f"{CATALOG_DRIVER}://{rest}"
    if sep and scheme_of(plain) == "sqlite":
        return f"sqlite://{rest}"
    return url


CONFORMANCE = (PostgresSource, (RestoreCheck, CountingCheck))  # checked against the protocols by jobs.engines.engines()
