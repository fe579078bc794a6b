"""One module per database engine, behind one small interface, chosen by URL scheme.

Engines that produce a stream (pg_dump's stdout, Redis replication) and engines that produce a file (SQLite) meet
the pipeline through one shape, so hashing, compression and the engine's proof happen in one pass:
`Source.snapshot(workdir, cancel)` yields a `Snapshot` whose `stream` the pipeline reads in chunks, feeding every
chunk to the snapshot's `Check` and to the compressor. Re-proving an existing artifact needs no source: the
engine module's `checker(workdir, cancel)` gives the same proof for the decompressed chunks.

Each engine module exports `SCHEMES`, `KIND`, `open_source(url, cwd)` and `checker(workdir, cancel)`.
"""

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
import functools
import importlib
from pathlib import Path
import re
import threading
from typing import TYPE_CHECKING, Any, BinaryIO, ContextManager, Protocol
from urllib.parse import quote, unquote

from jobs.errors import IntegrityError

if TYPE_CHECKING:
    from jobs.engines.pg_connect import Connection


class Check(Protocol):
    """The engine's proof of a raw stream, fed the same chunks that go to the compressor, in order."""

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk. May block (back-pressure) but never forever; may raise IntegrityError early."""

    def finish(self) -> str:
        """End of stream: wait for the verdict and return what passed (e.g. "PRAGMA integrity_check").

        Raise IntegrityError (or Cancelled, or SourceError for a snapshot that failed)."""

    def close(self) -> None:
        """Release everything (kill a child, join a thread); idempotent; always called, also after errors."""


HOLDS = "holds"  # Snapshot.details (and manifest) field: what the snapshot holds, as table retention checks rows
# against it: {"pg_snapshot": "xmin:xmax:xip,…"} for PostgreSQL (see jobs.purge.held)
# Snapshot.details (and manifest) field: the exact rows the snapshot holds, counted on the snapshot itself,
# {"unit": "rows", "total": N, "tables": {"users": 12, …}} (SQLite: the table's name; PostgreSQL: `schema.table`,
# see jobs.engines.pg_archive.table_key). Absent when the engine cannot count exactly (Redis; an archive it
# cannot read): never estimated. Restore drills compare a restored copy with it; the empty-source guard reads it.
COUNTS = "counts"


@dataclass
class Snapshot:
    stream: BinaryIO  # the raw bytes; the pipeline reads it in chunks until b""
    check: Check  # fed every chunk read from `stream`
    size: int | None = None  # raw size when known up front (written as zstd content size), else None
    details: dict[str, Any] = field(default_factory=dict)  # extra manifest fields; read AFTER check.finish()
    # The raw bytes as a file on the backup volume, when the engine writes one (SQLite's copy): once
    # check.finish() returned, the pipeline may move it away (the engine removes it on exit if still there).
    raw_path: Path | None = None


class Source(Protocol):
    """A database to back up and restore into. Implementations live one per module in this package."""

    kind: str  # artifact kind: "sqlite", "pgdump" or "rdb"

    def name(self) -> str:
        """Return the default backup-set name: the SQLite file stem, the PostgreSQL database name, `redis`."""

    def describe(self) -> dict[str, str]:
        """Return the source for manifests and logs: {"kind": ..., "database": ...}, no secrets."""

    def target(self) -> str:
        """Return where a restore writes, for people: a file path or a URL with its password masked."""

    def identity(self) -> dict[str, str]:
        """Return what tells this source from another one with the same set name (see `jobs.identity`): the
        absolute path of a SQLite file; the host, port (and database) of a server. Never a secret."""

    def estimate_size(self) -> int:
        """Return the expected size in bytes of a raw snapshot. Raise SourceError if the source is unusable."""

    def snapshot(self, workdir: Path, cancel: threading.Event) -> ContextManager[Snapshot]:
        """Yield a consistent raw snapshot.

        `workdir` is a private (0700) scratch directory on the backup volume, removed by the caller afterwards.
        On exit the engine releases everything (children killed and waited). A snapshot that fails (child exit
        != 0, connection lost, truncated stream) raises SourceError from `stream.read()` or from
        `check.finish()`: the pipeline never publishes unless finish() returned. Raise Cancelled promptly
        (< 2 s) when `cancel` is set."""

    def versions(self) -> dict[str, str]:
        """Return tool and server versions worth recording in the manifest."""

    def protected_files(self) -> list[Path]:
        """Return the files of this database that cleanup rules must never match ([] for a server)."""

    def has_rows(self) -> bool:
        """Return whether the live source holds any data now: a row in a user table (SQLite: any table but
        SQLite's own; PostgreSQL: a table outside the system schemas and extensions), a key in any database
        (Redis). Asked before a backup (see jobs.guard). Raise SourceError if the source cannot be read."""

    def sql_database(self) -> "Path | Connection | None":
        """Return what table retention opens to reach this very database: the SQLite file, the PostgreSQL
        connection settings (jobs.engines.pg_connect.Connection), or None for a database without tables."""

    def missing(self) -> str | None:
        """Return why this database counts as lost, for a restore at start (RESTORE_ON_START=if-missing): a
        SQLite file that does not exist or holds 0 bytes, a PostgreSQL database without user tables; None when
        it holds data, and always for an engine whose data is loaded by hand (Redis). Raise SourceError if that
        cannot be told, Unreachable (a SourceError) when the server does not answer (yet)."""

    def restore(self, raw: Path, cancel: threading.Event,
                notify: Callable[[str], None] | None = None) -> Path | None:
        """Replace the live data with the proven raw snapshot `raw`; return the safety copy made first, if any.

        Call `notify` with one sentence naming the safety copy BEFORE anything changes (the command prints it).
        Raise SourceError or Cancelled, saying whether the live data changed; once the restore has committed,
        never raise (a stop request then does not make a finished restore report failure)."""


Checker = Callable[[Path, threading.Event], AbstractContextManager[Check]]


class Engine(Protocol):
    """What each engine module exports: its URL schemes, its artifact kind, an opener and the raw check."""

    SCHEMES: tuple[str, ...]
    KIND: str

    def open_source(self, url: str, cwd: Path) -> Source: ...

    def checker(self, workdir: Path, cancel: threading.Event) -> AbstractContextManager[Check]: ...


# Engine modules in this package, in the order they are offered. A module that is not there (yet) is skipped,
# so each engine lands as one new file.
_MODULES = ("sqlite", "postgres", "redis")
_PLANNED = {"postgresql": "postgres", "postgres": "postgres", "redis": "redis", "rediss": "redis"}


@functools.cache
def engines() -> tuple[Engine, ...]:
    """Return the engine modules this installation has."""
    found = []
    for name in _MODULES:
        module_name = f"{__name__}.{name}"
        try:
            found.append(importlib.import_module(module_name))
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
    return tuple(found)


def _by_scheme() -> dict[str, Engine]:
    return {scheme: engine for engine in engines() for scheme in engine.SCHEMES}


def _by_kind() -> dict[str, Engine]:
    return {engine.KIND: engine for engine in engines()}


# SQLAlchemy spells a URL `dialect+driver://` (postgresql+asyncpg://, sqlite+aiosqlite://): apps hold their
# DATABASE_URL in that form. The driver is the app's business; the database is the same.
_SQLALCHEMY_SCHEME = re.compile(r"^(?P<dialect>[A-Za-z][A-Za-z0-9]*)\+(?P<driver>[A-Za-z0-9_]+)://")


def source_url(url: str) -> str:
    """Given a BACKUP_SOURCE URL, return it with the driver part of a SQLAlchemy URL taken off
    (`postgresql+psycopg://…` is `postgresql://…`, `sqlite+aiosqlite:///…` is `sqlite:///…`); any other URL as it
    is. asyncpg's `ssl=` query parameter becomes libpq's `sslmode=` (`true` is `require`, `false` is `disable`, a
    mode stays itself; an `sslmode=` already there wins). The one place that reads a driver: every reader of the
    source URL gets the engine's Source (open_source), which was opened from this."""
    match = _SQLALCHEMY_SCHEME.match(url)
    if match is None or match["dialect"].lower() not in _by_scheme():
        return url
    rest = url[match.end():]
    if match["driver"].lower() == "asyncpg":
        rest = _asyncpg_ssl(rest)
    return f"{match['dialect']}://{rest}"


_SSL_WORDS = {"true": "require", "1": "require", "yes": "require", "on": "require",
              "false": "disable", "0": "disable", "no": "disable", "off": "disable"}


def _asyncpg_ssl(rest: str) -> str:
    """Return the URL part after `scheme://` with asyncpg's `ssl=VALUE` written as libpq's `sslmode=`; the other
    parameters stay as they were written."""
    head, mark, query = rest.partition("?")
    if not mark:
        return rest
    parts = query.split("&")
    has_mode = any(part.lower().startswith("sslmode=") for part in parts)
    kept = []
    for part in parts:
        if part.lower().startswith("ssl="):
            if has_mode:
                continue
            value = unquote(part[4:]).strip()
            part = "sslmode=" + quote(_SSL_WORDS.get(value.lower(), value.lower()), safe="-")
        kept.append(part)
    return f"{head}?{'&'.join(kept)}"


def scheme_of(url: str) -> str:
    """Return the lower-case scheme of a source URL once its driver part is off (`postgresql` for
    `postgresql+asyncpg://…`), or "" when it has none."""
    url = source_url(url)
    return url.partition("://")[0].lower() if "://" in url else ""


def open_source(url: str, cwd: Path) -> Source:
    """Given a BACKUP_SOURCE URL (a SQLAlchemy `dialect+driver://` one too: the driver is ignored), return its
    Source. Raise ValueError naming what is wrong with the URL."""
    url = source_url(url)
    scheme = scheme_of(url)
    by_scheme = _by_scheme()
    if scheme in by_scheme:
        return by_scheme[scheme].open_source(url, cwd)
    if scheme in _PLANNED:
        raise ValueError(f"{scheme}:// sources are not supported by this version yet; use sqlite:///path/to/app.db")
    known = " or ".join(f"{s}://" for s in sorted(by_scheme))
    raise ValueError(
        f"the URL must start with {known} (like sqlite:///data/app.db or sqlite:////app/data/app.db; a SQLAlchemy "
        "URL such as postgresql+psycopg:// is read without its driver)"
        + (f", not {scheme}://" if scheme else "")
    )


def checker(kind: str, workdir: Path, cancel: threading.Event) -> AbstractContextManager[Check]:
    """Return the engine's check for an existing artifact's raw stream of `kind`.

    Raise IntegrityError, saying which kinds this version knows, for a kind no engine here can check."""
    engine = _by_kind().get(kind)
    if engine is None:
        known = ", ".join(sorted(_by_kind()))
        raise IntegrityError(f"backups of kind {kind!r} cannot be checked or restored by this version (it knows {known}); "
                             "use a worker version with that engine, or restore by hand with `zstd -d`")
    return engine.checker(workdir, cancel)

