"""The rows of a PostgreSQL database: counted exactly in the archive pg_dump streams (`CountingCheck`, through
jobs.engines.pg_archive), and asked of the live database before a backup (`has_rows`)."""

from pathlib import Path
from typing import Any

import psycopg
import structlog

from jobs.engines import COUNTS, Check, pg_connect
from jobs.engines.pg_archive import ArchiveRows
from jobs.engines.pg_connect import Connection

log = structlog.get_logger("jobs.engines.pg_rows")

# The app's tables, the one definition every part of the worker uses (is a database new or lost, does it hold rows,
# which tables may table retention wait for): ordinary and partitioned tables outside the system schemas, and not
# members of an extension (PostGIS's spatial_ref_sys comes with CREATE EXTENSION, not with the app's data; pg_dump
# dumps an extension's tables with the extension). A partitioned table's rows are its partitions'.
USER_TABLES = """
SELECT format('%I.%I', n.nspname, c.relname), c.relkind = 'p'
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.deptype = 'e')
ORDER BY 1
"""


def user_tables(session: Any, rows_only: bool = False) -> list[str]:
    """Given an open psycopg connection, return the app's tables (see USER_TABLES) as `schema.table`, quoted where
    needed; with `rows_only`, without the partitioned parents (their rows are their partitions')."""
    return [name for name, partitioned in session.execute(USER_TABLES).fetchall() if not (rows_only and partitioned)]


class CountingCheck:
    """pg_restore's proof of the archive (`inner`) and, in the same pass, its exact rows per table, which finish()
    puts into `details` as the manifest's `counts`. An archive the counter cannot read only loses the counts
    (logged as a warning): the backup stands on pg_restore's proof."""

    path: Path | None = None  # keeps no copy of the archive

    def __init__(self, inner: Check, details: dict[str, Any], database: str) -> None:
        self._inner = inner
        self._rows = ArchiveRows()
        self._details = details
        self._database = database

    def feed(self, chunk: bytes) -> None:
        self._rows.feed(chunk)
        self._inner.feed(chunk)

    def finish(self) -> str:
        passed = self._inner.finish()
        counts = self._rows.result()
        if counts is None:
            log.warning("pg_dump.counts_unavailable", database=self._database, reason=self._rows.problem,
                        detail="the backup is kept (pg_restore read it whole) but its manifest records no row counts")
        else:
            self._details[COUNTS] = counts
        return passed

    def close(self) -> None:
        self._inner.close()


def has_rows(conn: Connection) -> bool:
    """Return whether any user table (see USER_TABLES) of the database has a row; a table this user may not read
    counts as holding rows (pg_dump will say what is wrong). Raise SourceError if the server cannot be reached."""
    with pg_connect.connect(conn) as session:
        for table in user_tables(session, rows_only=True):
            try:
                if session.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]:
                    return True
            except psycopg.Error:
                return True
    return False
