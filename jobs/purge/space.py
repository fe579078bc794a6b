"""The space a purge frees in a SQLite file: deleting rows does not shrink it (SQLite keeps the freed pages on its
free list and reuses them), and a volume fills anyway. After a purge `reclaim` reports the reclaimable space (free
pages times page size) and, when the database has `auto_vacuum=INCREMENTAL`, gives it back to the file system in
small `incremental_vacuum` steps: each its own short write transaction (BEGIN IMMEDIATE) of at most STEP_PAGES
pages, a pause between steps as long as the step held the lock (so the app's writers get their turn), stoppable
between steps. A full `VACUUM` (which rewrites the whole file under the write lock) is never run. In WAL mode the
file shrinks at the next checkpoint; a passive one is asked for (it never waits for the app's readers).
"""

from dataclasses import dataclass
from pathlib import Path
import threading
import time
from typing import Any

from sqlalchemy.engine import Connection

from jobs.purge import database
from jobs.purge.database import SourceLike

LOCK_ATTEMPTS = 15  # as a delete batch: each waits database.BUSY_TIMEOUT_S for the write lock
STEP_PAGES = 256  # pages released per write transaction (1 MiB with 4 KiB pages: about a millisecond of lock)
MAX_PAUSE_S = 0.5
AUTO_VACUUM = {0: "none", 1: "full", 2: "incremental"}


@dataclass
class Space:
    """A SQLite file's free space after a purge, and what `reclaim` gave back."""

    auto_vacuum: str  # none, full or incremental (PRAGMA auto_vacuum)
    page_size: int
    free_pages: int  # on the free list after the purge, before any release
    released_pages: int = 0
    stopped: bool = False  # the worker was stopping: the release ended between steps

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON-able fields for the purge's outcome (`space`)."""
        return {"auto_vacuum": self.auto_vacuum, "free_bytes": self.free_pages * self.page_size,
                "released_bytes": self.released_pages * self.page_size,
                "reclaimable_bytes": (self.free_pages - self.released_pages) * self.page_size}


def _pragma(connection: Connection, name: str) -> int:
    value = connection.exec_driver_sql(f"PRAGMA {name}").scalar_one()  # a constant name, never user input
    connection.commit()
    return int(value)


def _release_step(connection: Connection, pages: int) -> None:
    """Give `pages` free pages back in one write transaction."""
    with database.write_transaction(connection):
        raw = connection.connection.driver_connection
        for _ in range(pages):  # Python's sqlite3 steps the pragma once: one page each time
            raw.execute("PRAGMA incremental_vacuum(1)").fetchall()


def release(connection: Connection, space: Space, cancel: threading.Event, step_pages: int = STEP_PAGES,
            pause: float | None = None) -> None:
    """Give the free pages back to the file system, `step_pages` per write transaction, into
    `space.released_pages`, until none are left or `cancel` is set (then `space.stopped`)."""
    while _pragma(connection, "freelist_count") > 0:
        if cancel.is_set():
            space.stopped = True
            return
        before = _pragma(connection, "freelist_count")
        started = time.monotonic()
        database.retry_locked(lambda: _release_step(connection, min(step_pages, before)), cancel, LOCK_ATTEMPTS)
        held_for = time.monotonic() - started
        after = _pragma(connection, "freelist_count")
        space.released_pages += max(0, before - after)
        if after >= before:
            return  # nothing moved (another connection is using the pages): the next purge tries again
        wait = pause if pause is not None else min(held_for, MAX_PAUSE_S)
        if wait > 0 and after > 0:
            cancel.wait(wait)


def reclaim(source: SourceLike, cancel: threading.Event, *, cwd: Path | None = None,
            step_pages: int = STEP_PAGES, pause: float | None = None) -> Space | None:
    """Given the purge's source, report its free space and, with `auto_vacuum=INCREMENTAL`, release it (see the
    module docstring); None for PostgreSQL (its autovacuum reclaims space). Raise sqlalchemy errors as they come
    (the caller reports them)."""
    with database.engine_for(source, cwd) as engine, engine.connect() as connection:
        if not database.is_sqlite(connection):
            return None
        space = Space(auto_vacuum=AUTO_VACUUM.get(_pragma(connection, "auto_vacuum"), "none"),
                      page_size=_pragma(connection, "page_size"), free_pages=_pragma(connection, "freelist_count"))
        if space.auto_vacuum == "incremental" and space.free_pages:
            release(connection, space, cancel, step_pages, pause)
            mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar_one()
            if mode == "wal":
                connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").all()
            connection.commit()
        return space
