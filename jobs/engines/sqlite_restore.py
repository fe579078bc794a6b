"""Restoring a proven backup over the live SQLite database, with a safety copy that misses no commit.

A live database that SQLite can open is restored through the backup API, and the safety copy is taken INSIDE the
restore's write transaction: the first backup step takes the live database's write lock (and copies a few pages
into memory only); with that lock held the safety copy is made, from the last committed state; the remaining
steps copy the backup in and the last one commits. No other connection can commit between the safety copy and
the restore, so every commit is in one of them. Connections the app holds open see the restored data at their
next transaction; the file is never torn. A stop before the commit rolls the restore back: nothing changed.

- WAL mode: readers are never blocked, so the safety copy is read through a second, read-only connection.
- Rollback-journal mode: the restore's lock is exclusive and nothing is written to the database file before
  the commit, so the safety copy is a byte copy of the file, taken under that lock.

A live file SQLite cannot open ("file is not a database", "malformed") is the main reason to restore: its files
(database, -wal, -shm, -journal) are copied as they are into a `<db>.pre-restore-<stamp>/` directory, then the
stale -wal/-shm/-journal are removed (they would be replayed into the restored file) and the proven file is
renamed into place with the live file's mode, owner and group. A worker that is not root cannot give a new file
another user's ownership: then the proven bytes are written into the live file itself, which keeps its owner.

A database reached through a symlink (or a chain of them) is restored into the file the links lead to, resolved
once at the start: the links stay as they are, and the safety copy, the staged file and the sidecars are those
beside the real file (SQLite itself keeps -wal/-shm there).
"""

from collections.abc import Callable
from contextlib import closing
import os
from pathlib import Path
import shutil
import sqlite3
import threading
import time

import structlog

from jobs.artifacts import is_stale_temporary, temp_prefix, temporary_of
from jobs.compression import CHUNK
from jobs.engines import _sqlite as lib
from jobs.engines._sqlite_files import is_safety_copy_name, real_file, safety_copy_path, sidecars
from jobs.errors import Cancelled, JobError, SourceError
from jobs.files import DIR_MODE, create_private, fsync_path, remove_temporary

log = structlog.get_logger("jobs.engines.sqlite")

_UNCHANGED = "the live database was not changed"


class _Damaged(Exception):
    """The live file cannot be used as a SQLite database."""


def restore_live(database: Path, raw: Path, cancel: threading.Event, notify: Callable[[str], None]) -> Path:
    """Replace the live database with `raw`; return the safety copy (a file, or a directory for a damaged
    database). `notify` gets one sentence naming the safety copy before anything is written.

    `database` may be a symlink (or a chain of them): the file it leads to is restored and the links stay.

    Raise SourceError or Cancelled with a message that says the live database was not changed (it never is
    when this raises before the commit), and where the safety copy is if one was made."""
    named, database = database, real_file(database)
    if database != named:
        log.info("restore.real_file", database=str(named), real_file=str(database))
        notify(f"{named} is a link to {database}: the restore writes that file and leaves the link in place")
    _sweep_stale(database)
    wait = lib.LockWait(cancel, f"the restore into {database}")
    try:
        mode = _probe(database, wait)
    except _Damaged as damaged:
        return _restore_damaged(database, raw, cancel, notify, str(damaged))
    except JobError as error:
        raise type(error)(f"{error}; {_UNCHANGED}", stage="restore") from None
    if lib.page_count(raw) < 2:
        raise SourceError(f"the backup holds an empty database of one page, which cannot be written over {database} "
                          "with the lock this restore needs; restore it with --to PATH and swap the files while the app is stopped", stage="restore")
    # Closing ANY descriptor of a file drops every POSIX lock this process holds on it, SQLite's included: the
    # byte copy reads through a descriptor opened before the restore's lock and closed after its connection.
    try:
        live_fd = os.open(database, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise SourceError(f"cannot read {database}: {error.strerror or error}; {_UNCHANGED}", stage="restore") from None
    safety = safety_copy_path(database)
    notify(f"the live database {database} is saved as {safety} before the restore")
    log.info("restore.safety_copy", path=str(safety), database=str(database), journal_mode=mode)
    state = {"saved": False}

    def save_under_lock(_status: int) -> None:
        if not state["saved"]:
            _save(database, live_fd, safety, mode == "wal", wait)
            state["saved"] = True

    def kept() -> str:
        return f"; the safety copy {safety} is kept" if state["saved"] else ""

    try:
        pages = lib.page_count(raw) - 1  # the first step never finishes the copy: the safety copy comes first
        with closing(lib.connect(raw, "ro")) as backup, closing(lib.connect(database, "rw", timeout=lib.STEP_BUSY_S)) as live:
            _refuse_page_size_change(live, backup, mode, database)
            live.execute(f"PRAGMA cache_size=-{2 * lib.STEP_BYTES >> 10}")  # the first step stays in memory
            lib.copy_pages(backup, live, wait, min(lib.step_pages(backup), pages), after_step=save_under_lock)
    except Cancelled:
        raise Cancelled(f"the worker is stopping; {_UNCHANGED}{kept()}", stage="restore") from None
    except JobError as error:
        raise type(error)(f"{error}; {_UNCHANGED}{kept()}", stage="restore") from None
    except sqlite3.Error as error:
        raise SourceError(f"cannot restore into {database}: {lib.reason(error)}; {_UNCHANGED}{kept()}",
                          stage="restore") from None
    except OSError as error:
        where = f" {error.filename}" if error.filename else ""
        raise SourceError(f"cannot restore into {database}: {error.strerror or error}{where}; {_UNCHANGED}{kept()}",
                          stage="restore") from None
    finally:
        os.close(live_fd)
    return safety


def _sweep_stale(database: Path) -> None:
    """Remove what a killed restore of this database left beside it: our temporaries of its safety copy and of
    the staged file (`.tmp-<pid>-<token>-app.db…`, their writer gone). Nothing else there is touched."""
    for child in database.parent.iterdir():
        final = temporary_of(child.name) or ""
        if (final == database.name or is_safety_copy_name(final, database.name)) and is_stale_temporary(child.name):
            remove_temporary(child)
            log.info("restore.stale_temporary_removed", path=str(child))


def _probe(database: Path, wait: lib.LockWait) -> str:
    """Return the live database's journal mode. Raise _Damaged if SQLite cannot read it as a database,
    SourceError if it cannot be opened for another reason (permissions, a lock held too long).

    The first look is read-only, so a damaged database and its -wal are copied exactly as they were; only a
    database that needs a writer to open it (a hot journal to roll back) gets a second, read-write look."""
    mode = "ro"
    while True:
        try:
            with closing(lib.connect(database, mode, timeout=lib.STEP_BUSY_S)) as live:
                live.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return str(live.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        except sqlite3.DatabaseError as error:
            if lib.is_damaged(error):
                raise _Damaged(lib.reason(error)) from None
            if not lib.is_busy(error):
                if mode == "ro":
                    mode = "rw"
                    continue
                raise SourceError(f"cannot open {database} to restore into it: {lib.reason(error)}; "
                                  "check the file's permissions", stage="restore") from None
        wait.busy()
        time.sleep(0.05)


def _refuse_page_size_change(live: sqlite3.Connection, backup: sqlite3.Connection, mode: str, database: Path) -> None:
    """SQLite cannot change the page size of a WAL database through the backup API; say what to do instead."""
    theirs, ours = (c.execute("PRAGMA page_size").fetchone()[0] for c in (live, backup))
    if mode == "wal" and theirs != ours:
        raise SourceError(f"the backup's page size ({ours} bytes) differs from the live WAL database's ({theirs}), which "
                          f"SQLite cannot restore in place; restore with --to PATH and swap the files while the app is stopped",
                          stage="restore")


def _save(database: Path, live_fd: int, safety: Path, wal: bool, wait: lib.LockWait) -> None:
    """Write the live database's committed state to `safety`, under the restore's write lock."""
    temp = safety.with_name(temp_prefix() + safety.name)
    try:
        if wal:
            create_private(temp).close()
            with closing(lib.connect(database, "ro", timeout=lib.STEP_BUSY_S)) as reader, \
                    closing(sqlite3.connect(temp, isolation_level=None)) as copy:
                copy.execute("PRAGMA journal_mode=OFF")
                lib.begin_read(reader, wait)
                lib.copy_pages(reader, copy, wait, lib.step_pages(reader))
                reader.execute("COMMIT")
                copy.execute("PRAGMA journal_mode=DELETE")
        else:
            if os.fstat(live_fd).st_ino != database.stat().st_ino:
                raise SourceError(f"{database} was replaced by another file while the restore began; try again")
            _copy_fd(live_fd, temp, wait.cancel)
        fsync_path(temp)
        os.rename(temp, safety)
        fsync_path(safety.parent)
    finally:
        temp.unlink(missing_ok=True)
        for sidecar in sidecars(temp):
            sidecar.unlink(missing_ok=True)


def _copy_fd(fd: int, target: Path, cancel: threading.Event) -> None:
    """Copy the whole file open at `fd` to the new file `target` (0600) without closing `fd`."""
    offset = 0
    with create_private(target) as writer:
        while chunk := os.pread(fd, CHUNK, offset):
            if cancel.is_set():
                raise Cancelled("the worker is stopping; the copy was interrupted")
            writer.write(chunk)
            offset += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())


def _copy_file(source: Path, target: Path, cancel: threading.Event) -> None:
    """Copy `source` byte for byte to the new file `target` (0600), stopping when `cancel` is set."""
    with source.open("rb") as reader, create_private(target) as writer:
        while chunk := reader.read(CHUNK):
            if cancel.is_set():
                raise Cancelled("the worker is stopping; the copy was interrupted")
            writer.write(chunk)
        writer.flush()
        os.fsync(writer.fileno())


def keeps_owner(live: os.stat_result) -> bool:
    """Return whether a new file this process creates can be given the owner and group of the file whose status
    is `live`: it runs as root, or that owner is its own user and that group one of its groups."""
    if os.geteuid() == 0:
        return True
    return live.st_uid == os.geteuid() and live.st_gid in {os.getegid(), *os.getgroups()}


def _restore_damaged(database: Path, raw: Path, cancel: threading.Event, notify: Callable[[str], None], why: str) -> Path:
    """Copy the damaged database's files aside as they are, then put the proven file in its place: renamed into
    place, with the live file's mode, owner and group; or, when this process cannot give a new file that owner
    and group (it is not root), written into the live file itself, which keeps them."""
    files = [path for path in (database, *sidecars(database)) if path.exists()]
    safety = safety_copy_path(database)
    notify(f"the live database {database} cannot be opened ({why}); its files are copied as they are to {safety}/ before the restore")
    log.warning("restore.damaged_live_database", database=str(database), reason=why, safety_copy=str(safety))
    staging = database.with_name(temp_prefix() + database.name)
    temp_dir = safety.with_name(temp_prefix() + safety.name)
    writing = in_place = False  # writing: the live file is being written, from then on it has changed
    try:
        live = database.stat()
        temp_dir.mkdir(mode=DIR_MODE)
        for path in files:
            _copy_file(path, temp_dir / path.name, cancel)
        fsync_path(temp_dir)
        os.rename(temp_dir, safety)
        fsync_path(database.parent)
        in_place = not keeps_owner(live)
        if in_place:
            notify(f"the worker cannot give a new file the owner of {database} (uid {live.st_uid}, gid {live.st_gid}), "
                   "so the backup is written into the file itself")
            log.info("restore.in_place", database=str(database), uid=live.st_uid, gid=live.st_gid)
        else:
            _stage(raw, staging, live, cancel)
        if cancel.is_set():
            raise Cancelled("the worker is stopping")
        # From here on nothing stops: the stale -wal and -journal would be replayed into the restored file.
        writing = True
        for sidecar in sidecars(database):
            sidecar.unlink(missing_ok=True)
        if in_place:
            _write_into(raw, database)
        else:
            os.replace(staging, database)
        fsync_path(database.parent)
    except Cancelled:
        kept = f"; the copies of its files are kept in {safety}" if safety.exists() else ""
        raise Cancelled(f"the worker is stopping; {_UNCHANGED}{kept}", stage="restore") from None
    except OSError as error:
        kept = f"; the copies of its files are kept in {safety}" if safety.exists() else ""
        state = ("it is partly written now: run the restore again" if writing and in_place
                 else "its stale -wal/-journal are gone: run the restore again" if writing else _UNCHANGED)
        raise SourceError(f"cannot restore over the damaged database {database}: {error.strerror or error}; "
                          f"{state}{kept}", stage="restore") from None
    finally:
        staging.unlink(missing_ok=True)
        if temp_dir.exists():
            shutil.rmtree(temp_dir, ignore_errors=True)
    return safety


def _stage(raw: Path, staging: Path, live: os.stat_result, cancel: threading.Event) -> None:
    """Put the proven file beside the database under a temporary name, with the live file's permissions, owner
    and group (see keeps_owner)."""
    try:
        os.link(raw, staging)  # same volume: no second copy of the data
    except OSError:
        _copy_file(raw, staging, cancel)
    os.chmod(staging, live.st_mode & 0o7777)
    os.chown(staging, live.st_uid if os.geteuid() == 0 else -1, live.st_gid)
    os.chmod(staging, live.st_mode & 0o7777)  # a chown by a user other than root clears set-id bits
    fsync_path(staging)


def _write_into(raw: Path, database: Path) -> None:
    """Write the proven file's bytes over the file `database` from its start and cut it to that length, keeping
    its inode (and with it mode, owner, group, ACLs). Not stopped midway: a half-written file helps nobody."""
    with raw.open("rb") as reader, open(database, "r+b") as writer:
        shutil.copyfileobj(reader, writer, CHUNK)
        writer.truncate()
        writer.flush()
        os.fsync(writer.fileno())
