"""A bound on how long one of our PostgreSQL sessions may wait for a lock, kept from a second connection.

A `lock_timeout` cannot do it for pg_restore: every archive's preamble runs `SET lock_timeout = 0` (and
`statement_timeout = 0`) before the first statement, whatever the connection asked for. So `LockWatch` looks at
the session from outside, by its unique application_name, twice a second; once it has waited for one lock
longer than the limit, the watch names the sessions that hold it (pid, state, application; never their query
text, which may hold the app's data) and cancels the waiting statement with `pg_cancel_backend`. pg_restore then
fails and its transaction rolls back. The app's sessions are never touched.
"""

from collections.abc import Iterator
from contextlib import contextmanager
import threading
import time

import psycopg
import structlog

from jobs.engines import pg_connect
from jobs.engines.pg_connect import Connection
from jobs.errors import SourceError

log = structlog.get_logger("jobs.engines.pg_watch")

POLL_S = 0.5

_WAITING = """SELECT pid, wait_event_type = 'Lock' FROM pg_stat_activity
               WHERE application_name = %s AND pid <> pg_backend_pid()"""
_HOLDERS = """SELECT b.pid, coalesce(b.state, 'state hidden'), coalesce(b.application_name, '')
                FROM pg_stat_activity b WHERE b.pid = ANY(pg_blocking_pids(%s)) ORDER BY b.pid"""
_CANCEL = "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'"


class LockWatch:
    """What the watch saw: `holders` is set (a description of the sessions holding the lock) once it cancelled
    the watched session's statement for waiting longer than `limit_s`."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.holders: str | None = None
        self.stop = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self.holders is not None

    def run(self, connection: psycopg.Connection, application_name: str) -> None:
        waiting_since: dict[int, float] = {}
        while not self.stop.wait(POLL_S):
            try:
                rows = connection.execute(_WAITING, (application_name,)).fetchall()
            except psycopg.Error as error:
                log.warning("postgres.lock_watch_failed", error=str(error)[:200])
                return
            now = time.monotonic()
            waiting_since = {pid: waiting_since.get(pid, now) for pid, waiting in rows if waiting}
            for pid, since in waiting_since.items():
                if now - since >= self.limit_s and self._cancel(connection, pid):
                    return

    def _cancel(self, connection: psycopg.Connection, pid: int) -> bool:
        holders = connection.execute(_HOLDERS, (pid,)).fetchall()
        described = "; ".join(f"pid {holder}, {state}" + (f", application {app}" if app else "") for holder, state, app in holders)
        row = connection.execute(_CANCEL, (pid,)).fetchone()
        if not row or not row[0]:
            return False  # the lock came just now: nothing to cancel
        self.holders = described or "a session that has since ended"
        log.warning("postgres.lock_wait_cancelled", waited_s=self.limit_s, holders=self.holders)
        return True


@contextmanager
def watching(conn: Connection, application_name: str, limit_s: float) -> Iterator[LockWatch]:
    """Yield a LockWatch that, while the block runs, cancels the statement of the session named
    `application_name` on `conn`'s database once it has waited longer than `limit_s` for one lock. A watch that
    cannot connect only warns: the restore then runs unwatched."""
    watch = LockWatch(limit_s)
    try:
        connection = pg_connect.connect(conn)
    except SourceError as error:
        log.warning("postgres.lock_watch_unavailable", error=str(error)[:200])
        connection = None
    if connection is None:
        yield watch
        return
    thread = threading.Thread(target=watch.run, args=(connection, application_name), name="pg-lock-watch", daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        watch.stop.set()
        thread.join(5)
        connection.close()
