"""SQLite: online snapshots through the backup API, `PRAGMA integrity_check`, restores through the backup API.

The snapshot holds one read transaction on the source for the whole copy, so the copy is consistent even while
other processes write, and it copies a few MiB per step, so a stop request ends it within milliseconds. In WAL
mode writers go on while we read; in rollback-journal mode they wait for our read lock (bounded by their busy
timeout). The source is opened read-only (`mode=ro`): a missing file is never created and the source is never
written. The snapshot file is then streamed to the compressor while `PRAGMA integrity_check` runs on it in a
thread: the file is read once for both.
"""

from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
import os
from pathlib import Path
import sqlite3
import threading
from typing import Any, BinaryIO

from jobs.artifacts import set_name
from jobs.engines import COUNTS, Snapshot
from jobs.engines import _sqlite as lib, sqlite_copies
from jobs.engines._sqlite_files import live_file, real_file, sidecars, wal
from jobs.engines.sqlite_restore import restore_live
from jobs.errors import Cancelled, IntegrityError, SourceError
from jobs.files import create_private
from jobs.volume import free_space

SCHEMES = ("sqlite",)
KIND = "sqlite"
URL_TARGET = False  # a SQLite backup is restored to a file (--to) or over the configured database, not to a URL


class _ThreadCheck:
    """The snapshot's proof: `PRAGMA integrity_check` on the snapshot file, in a thread, while it streams; then the
    exact rows of each user table of that file, into `details` (the manifest's `counts`)."""

    path: Path | None = None  # the snapshot file is the Snapshot's raw_path, not the check's

    def __init__(self, path: Path, cancel: threading.Event, details: dict[str, Any] | None = None) -> None:
        self.cancel = cancel
        self.closed = threading.Event()
        self.error: BaseException | None = None
        self.result: str | None = None
        self.header_seen = False
        self.details = details if details is not None else {}
        self.thread = threading.Thread(target=self._run, args=(path,), name="sqlite-check", daemon=True)
        self.thread.start()

    def _stopping(self) -> bool:
        return self.cancel.is_set() or self.closed.is_set()

    def _run(self, path: Path) -> None:
        try:
            result = lib.integrity_check(path, self._stopping)
            self.details[COUNTS] = lib.count_rows(path, self._stopping)  # the snapshot's own rows, exactly
            self.result = result
        except sqlite3.Error as error:  # the check passed, so this is unexpected: say so, as a failed check
            self.error = IntegrityError(f"the rows of the snapshot could not be counted: {lib.reason(error)}")
        except BaseException as error:  # handed to finish() in the pipeline's thread
            self.error = error

    def feed(self, chunk: bytes) -> None:
        if not self.header_seen:
            self.header_seen = True
            if not chunk.startswith(lib.HEADER):
                raise IntegrityError("the snapshot does not start with the SQLite header")
        if self.error is not None and not self.thread.is_alive():
            raise self.error  # the check already failed: stop compressing a snapshot we will not keep

    def finish(self) -> str:
        while self.thread.is_alive():
            self.thread.join(0.05)
            if self.cancel.is_set():
                self.close()
                raise Cancelled("the worker is stopping; the integrity check was interrupted")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def close(self) -> None:
        self.closed.set()
        self.thread.join()


class _FileCheck:
    """The proof of an existing artifact: the raw chunks go to a file in the workdir, and `PRAGMA
    integrity_check` runs on it at the end. `path` is that file, for restore to use once finish() returned."""

    path: Path

    def __init__(self, path: Path, cancel: threading.Event) -> None:
        self.path = path
        self.cancel = cancel
        self.out: BinaryIO | None = create_private(path)
        self.header_seen = False

    def feed(self, chunk: bytes) -> None:
        if self.cancel.is_set():  # as every engine's check: a stop request ends the check at the next chunk
            raise Cancelled("the worker is stopping; the integrity check was interrupted")
        if not self.header_seen and chunk:
            self.header_seen = True
            if not chunk.startswith(lib.HEADER):
                raise IntegrityError("the backup does not hold a SQLite database (its first bytes are not the SQLite header)")
        assert self.out is not None, "feed() after finish()"
        self.out.write(chunk)

    def finish(self) -> str:
        assert self.out is not None, "finish() twice"
        self.out.flush()
        os.fsync(self.out.fileno())
        self.out.close()
        self.out = None
        return lib.integrity_check(self.path, self.cancel.is_set)

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None


@contextmanager
def checker(workdir: Path, cancel: threading.Event) -> Iterator[_FileCheck]:
    """Yield the check for a decompressed SQLite artifact: it keeps the raw file at `check.path` in `workdir`."""
    check = _FileCheck(workdir / "restored.sqlite", cancel)
    try:
        yield check
    finally:
        check.close()


@dataclass(frozen=True)
class SqliteSource:
    """A SQLite database file."""

    path: Path
    kind: str = KIND
    set_name: str | None = field(default=None, kw_only=True)  # BACKUP_NAME or BACKUP_SOURCE_<NAME>, else the stem
    snapshot_on_disk: bool = field(default=True, init=False, repr=False)  # the backup API's copy is a file
    safety_backup: bool = field(default=False, init=False, repr=False)  # restore() saves a safety copy itself

    def name(self) -> str:
        return self.set_name or set_name(self.path.stem, "sqlite")

    def describe(self) -> dict[str, str]:
        return {"kind": KIND, "database": self.path.name}

    def target(self) -> str:
        return str(self.path)

    def identity(self) -> dict[str, str]:
        return {"path": str(self.path)}

    def protected_files(self) -> list[Path]:
        return [self.path, *sidecars(self.path)]

    def sql_database(self) -> Path:
        return self.path

    def missing(self) -> str | None:
        """Return why the database counts as lost (its real file, links followed, does not exist or holds 0
        bytes: what SQLite leaves when an app opened the missing path), or None."""
        real = live_file(self.path)
        via = f" (a link to {real})" if real != self.path else ""
        if not real.exists():
            return f"the SQLite database {self.path}{via} does not exist"
        if real.is_file() and real.stat().st_size == 0:
            return f"the SQLite database {self.path}{via} is an empty file (0 bytes, as SQLite leaves a missing file it was asked to open)"
        return None

    def has_rows(self) -> bool:
        self._require_file()
        try:
            return lib.has_rows(self.path)
        except sqlite3.Error as error:
            raise SourceError(f"cannot read the SQLite database {self.path}: {lib.reason(error)}; it may be damaged, locked "
                              "by a long write, or not a SQLite file", stage="preflight") from None

    def estimate_size(self) -> int:
        self._require_file()
        log = wal(self.path)
        return self.path.stat().st_size + (log.stat().st_size if log.exists() else 0)

    def versions(self) -> dict[str, str]:
        return {"sqlite": sqlite3.sqlite_version}

    @contextmanager
    def snapshot(self, workdir: Path, cancel: threading.Event) -> Iterator[Snapshot]:
        """Copy the database into `workdir` in one read transaction, then yield the copy as a stream whose
        check (`PRAGMA integrity_check`) runs on the copy in a thread while the pipeline reads it."""
        out = workdir / "snapshot.sqlite"
        self.copy_to(out, cancel)
        details: dict[str, Any] = {}
        check = _ThreadCheck(out, cancel, details)
        try:
            with out.open("rb") as stream:
                yield Snapshot(stream=stream, check=check, size=out.stat().st_size, raw_path=out, details=details)
        finally:
            check.close()
            out.unlink(missing_ok=True)

    def copy_to(self, out: Path, cancel: threading.Event) -> None:
        """Write a consistent copy of the database to the new file `out` (0600, rollback-journal mode).

        Raise SourceError (unreadable, locked too long, no space) or Cancelled; `out` is removed then."""
        self._require_file()
        if cancel.is_set():
            raise Cancelled("the worker is stopping; the snapshot was not started")
        create_private(out).close()  # SQLite keeps the mode of a file it opens: only we can read the copy
        try:
            self._copy_into(out, cancel)
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        finally:
            for sidecar in sidecars(out):
                sidecar.unlink(missing_ok=True)

    def _copy_into(self, out: Path, cancel: threading.Event) -> None:
        try:
            source = lib.connect(self.path, "ro", timeout=lib.STEP_BUSY_S)
        except sqlite3.Error as error:
            raise SourceError(f"cannot open the SQLite database {self.path}: {lib.reason(error)}; check BACKUP_SOURCE and the file's permissions") from None
        try:
            with closing(source), closing(sqlite3.connect(out, isolation_level=None)) as target:
                # The copy is scratch until its artifact is fsynced: no journal and no fsyncs of its own.
                target.execute("PRAGMA journal_mode=OFF")
                target.execute("PRAGMA synchronous=OFF")
                wait = lib.LockWait(cancel, f"the snapshot of {self.path}")
                lib.begin_read(source, wait)
                lib.copy_pages(source, target, wait, lib.step_pages(source))
                source.execute("COMMIT")
                # The copy carries the source's WAL flag; a plain rollback-journal file opens anywhere, read-only too.
                target.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.DatabaseError as error:
            text = lib.reason(error)
            if "disk is full" in text or "disk I/O" in text:
                room = free_space(out.parent.parent)
                raise SourceError(f"cannot write the snapshot of {self.path} to {out}: {text}; "
                                  f"{room + '; ' if room else ''}free space on the volume", stage="snapshot") from None
            raise SourceError(f"cannot read the SQLite database {self.path}: {text}; it may be damaged or not a SQLite file (run `sqlite3 {self.path} 'PRAGMA integrity_check'`)") from None

    def problem(self) -> str | None:
        return None  # the backup itself says what is wrong with a file

    def restore_warning(self, versions: Mapping[str, Any]) -> str | None:
        return None

    def lost_file(self) -> Path | None:
        return live_file(self.path)

    def kept_copies(self) -> list[tuple[Path, int]]:
        try:
            return [(copy.path, sqlite_copies.size_of(copy)) for copy in sqlite_copies.safety_copies(real_file(self.path))]
        except SourceError:  # the links lead nowhere: no copy can be told
            return []

    def tidy_copies(self, made: Path, keep: int, backup_dir: Path | None) -> tuple[list[Path], list[Path]]:
        return sqlite_copies.remove_older(real_file(self.path), keep, made, backup_dir)

    def restore_refusal(self) -> str | None:
        return None

    def restore_space(self, raw_size: int) -> dict[Path, int]:
        """Return the bytes a restore over this database needs, by a directory on the volume they land on: the
        safety copy beside the real database file, plus the restored pages written there (WAL or journal, or a
        new file)."""
        real = real_file(self.path)
        live = sum(path.stat().st_size for path in (real, *sidecars(real)) if path.exists())
        return {real.parent: live + raw_size}

    def restore(self, raw: Path, cancel: threading.Event, notify: Callable[[str], None] | None = None) -> Path:
        """Save the live database, then replace it with the proven raw database `raw`; return the safety copy.

        See `jobs.engines.sqlite_restore`. Raise SourceError, SpaceError or Cancelled; a message says whether
        anything changed."""
        self._require_file()
        return restore_live(self.path, raw, cancel, notify or (lambda _: None))

    def _require_file(self) -> None:
        if not self.path.exists():
            raise SourceError(f"the SQLite database {self.path} does not exist; check BACKUP_SOURCE (relative paths start from {Path.cwd()})")
        if not self.path.is_file():
            raise SourceError(f"the SQLite database {self.path} is not a file; point BACKUP_SOURCE at the database file")


def open_source(url: str, cwd: Path, name: str | None = None) -> SqliteSource:
    """Given `sqlite:///relative.db` or `sqlite:////absolute.db`, return the source. Raise ValueError if malformed."""
    rest = url.split("://", 1)[1]
    if not rest.startswith("/"):
        raise ValueError(f"{url!r} has a host part; write sqlite:///relative/path.db or sqlite:////absolute/path.db")
    path_text = rest[1:].split("?", 1)[0]
    if not path_text or path_text in (":memory:",) or path_text.endswith("/"):
        raise ValueError(f"{url!r} names no database file; write sqlite:///relative/path.db or sqlite:////absolute/path.db")
    path = Path(path_text)
    return SqliteSource(path=path if path.is_absolute() else cwd / path, set_name=name)



CONFORMANCE = (SqliteSource, (_ThreadCheck, _FileCheck))  # checked against the protocols by jobs.engines.engines()
