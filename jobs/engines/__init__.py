"""One module per database engine, behind one small interface, chosen by URL scheme.

Engines that produce a stream (pg_dump's stdout, Redis replication) and engines that produce a file (SQLite) meet
the pipeline through one shape, so hashing, compression and the engine's proof happen in one pass:
`Source.snapshot(workdir, cancel)` yields a `Snapshot` whose `stream` the pipeline reads in chunks, feeding every
chunk to the snapshot's `Check` and to the compressor. Re-proving an existing artifact needs no source: the
engine module's `checker(workdir, cancel)` gives the same proof for the decompressed chunks.

Each engine module exports `SCHEMES`, `KIND`, `URL_TARGET`, `open_source(url, cwd, name)` and
`checker(workdir, cancel)`; its Source and Check declare every member of the protocols below, optional features
included (a feature an engine lacks is declared with its "none" value, never left for callers to probe).
`conformance(module)` says what a module lacks; `engines()` refuses to offer a module that lacks anything, and
tests/engines/ runs one suite over every engine.

Restoring takes one route whatever the target: the proven raw snapshot goes to a Source's `restore`. The live
database is the configured Source; `--target-url` is a Source opened from that URL (`open_target`, for engines
with `URL_TARGET`); a new file (`--to`) is the raw snapshot itself, engine-independent (jobs.restore); an engine
that does not restore over a live database says why up front (`Source.restore_refusal`).
"""

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
import functools
import importlib
from pathlib import Path
import re
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any, BinaryIO, ContextManager, Protocol, runtime_checkable
from urllib.parse import quote, unquote

from jobs.errors import IntegrityError

if TYPE_CHECKING:
    from jobs.engines.pg_connect import Connection


@runtime_checkable
class Check(Protocol):
    """The engine's proof of a raw stream, fed the same chunks that go to the compressor, in order."""

    # The proven raw file the check itself writes while it is fed (SQLite's check of an artifact), for a restore
    # to use once finish() returned; None for a check that keeps no copy (a restore then writes one beside it).
    path: Path | None

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


@runtime_checkable
class Source(Protocol):
    """A database to back up and restore into. Implementations live one per module in this package."""

    kind: str  # artifact kind: "sqlite", "pgdump" or "rdb"
    # Whether the raw snapshot lands on the backup volume as a file before it is compressed (SQLite's copy), so
    # the space check counts it; False when it only streams through (pg_dump's archive, Redis's SYNC payload).
    snapshot_on_disk: bool
    # How a restore over the live data keeps what it replaces: False when the engine saves it itself (SQLite's
    # safety copy, returned by restore()); True when the caller first takes an ordinary backup of the set
    # (manifest reason "pre-restore"), as for PostgreSQL.
    safety_backup: bool

    def name(self) -> str:
        """Return the backup-set name: the one given to open_source (BACKUP_NAME, BACKUP_SOURCE_<NAME>), else the
        source's own: the SQLite file stem, the PostgreSQL database name, `redis`."""

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

    def problem(self) -> str | None:
        """Return what would stop this source's backups as things stand, one sentence without secrets (PostgreSQL:
        no fitting pg_dump, or a server that cannot be reached to tell its version), else None. Asked at start
        (worker.preflight); a backup finds the same problem again itself."""

    def restore_refusal(self) -> str | None:
        """Return why the worker does not restore over this live source, as a sentence saying what to do
        instead (Redis: write the file with --to and load it by hand); None when it does. Asked before anything
        is fetched; restore() raises SourceError with the same sentence."""

    def restore_warning(self, versions: Mapping[str, Any]) -> str | None:
        """Given the `versions` a backup's manifest records, return what to warn a person of before restoring it
        into this database (PostgreSQL: the backup comes from a newer major than the server runs), or None. May
        reach the server; raise SourceError if it cannot be reached."""

    def restore_space(self, raw_size: int) -> dict[Path, int]:
        """Return the bytes a restore over the live data writes beside it, by directory (SQLite: the safety copy
        and the restored file next to the database), given the raw snapshot's size; {} for a server."""

    def lost_file(self) -> Path | None:
        """Return the new file a restore into this lost database writes (SQLite: the database file, links followed
        as far as they lead), or None for an engine that restores into a server or not at all."""

    def kept_copies(self) -> list[tuple[Path, int]]:
        """Return the safety copies earlier restores left beside the live data, newest first, with the bytes each
        takes; [] for an engine whose safety copies are ordinary backups (kept by retention) or that makes none."""

    def tidy_copies(self, made: Path, keep: int, backup_dir: Path | None) -> tuple[list[Path], list[Path]]:
        """After a restore over the live data succeeded and left the safety copy `made`, record it (in
        `backup_dir`) and remove the safety copies earlier restores recorded beyond the newest `keep`
        (BACKUP_KEEP_MIN), never `made`, never a file the worker did not make; return (removed, kept)."""

    def restore(self, raw: Path, cancel: threading.Event,
                notify: Callable[[str], None] | None = None) -> Path | None:
        """Replace the live data with the proven raw snapshot `raw`; return the safety copy made first, if any.

        Call `notify` with one sentence naming the safety copy BEFORE anything changes (the command prints it).
        Raise SourceError or Cancelled, saying whether the live data changed; once the restore has committed,
        never raise (a stop request then does not make a finished restore report failure)."""


class InServer:
    """The file-side members of a Source whose data lives in a server (PostgreSQL, Redis), declared once: no new
    file a lost database is restored into, no safety copies beside the data, nothing written beside a file."""

    def lost_file(self) -> Path | None:
        return None

    def kept_copies(self) -> list[tuple[Path, int]]:
        return []

    def tidy_copies(self, made: Path, keep: int, backup_dir: Path | None) -> tuple[list[Path], list[Path]]:
        return [], []

    def restore_space(self, raw_size: int) -> dict[Path, int]:
        return {}  # a restore writes into the server, not beside a file of ours


Checker = Callable[[Path, threading.Event], AbstractContextManager[Check]]


class Engine(Protocol):
    """What each engine module exports: its URL schemes, its artifact kind, whether `restore --target-url` may
    name one of its databases, an opener and the raw check."""

    SCHEMES: tuple[str, ...]
    KIND: str
    URL_TARGET: bool

    def open_source(self, url: str, cwd: Path, name: str | None = None) -> Source: ...

    def checker(self, workdir: Path, cancel: threading.Event) -> AbstractContextManager[Check]: ...


# Engine modules in this package, in the order they are offered.
_MODULES = ("sqlite", "postgres", "redis")
_MODULE_MEMBERS = {"SCHEMES": tuple, "KIND": str, "URL_TARGET": bool}


def _members(protocol: type) -> list[str]:
    """Return the public members a Protocol declares: its annotated attributes and its methods."""
    return sorted({*protocol.__annotations__, *(name for name in vars(protocol) if not name.startswith("_"))})


def conformance(module: ModuleType, source_class: type, check_classes: tuple[type, ...]) -> list[str]:
    """Return what the engine `module`, its Source class and its Check classes lack of the Engine, Source and
    Check protocols (every optional feature included), one line each; [] when they conform."""
    problems = [f"{module.__name__}.{name} is missing or not a {kind.__name__}"
                for name, kind in _MODULE_MEMBERS.items() if not isinstance(getattr(module, name, None), kind)]
    problems += [f"{module.__name__}.{name}() is missing" for name in ("open_source", "checker")
                 if not callable(getattr(module, name, None))]
    for cls, protocol in ((source_class, Source), *((check, Check) for check in check_classes)):
        declared = {*getattr(cls, "__dataclass_fields__", {}), *dir(cls), *getattr(cls, "__annotations__", {})}
        problems += [f"{cls.__qualname__} does not declare {protocol.__name__}.{name}"
                     for name in _members(protocol) if name not in declared]
    return problems


@functools.cache
def engines() -> tuple[Engine, ...]:
    """Return the engine modules, each checked against the protocols (its `CONFORMANCE` names its Source and
    Check classes). Raise TypeError naming what a module lacks: a bug, caught by the first test that opens one."""
    found = []
    for name in _MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        problems = conformance(module, *module.CONFORMANCE)
        if problems:
            raise TypeError("; ".join(problems))
        found.append(module)
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


def open_source(url: str, cwd: Path, name: str | None = None) -> Source:
    """Given a BACKUP_SOURCE URL (a SQLAlchemy `dialect+driver://` one too: the driver is ignored), return its
    Source, nothing connected yet, whose backup set is `name` (else the source's own name). Raise ValueError
    naming what is wrong with the URL."""
    url = source_url(url)
    scheme = scheme_of(url)
    by_scheme = _by_scheme()
    if scheme in by_scheme:
        return by_scheme[scheme].open_source(url, cwd, name)
    known = " or ".join(f"{s}://" for s in sorted(by_scheme))
    raise ValueError(
        f"the URL must start with {known} (like sqlite:///data/app.db or sqlite:////app/data/app.db; a SQLAlchemy "
        "URL such as postgresql+psycopg:// is read without its driver)"
        + (f", not {scheme}://" if scheme else "")
    )


TARGET_URL_ONLY = ("--target-url takes the PostgreSQL database to restore into, like "
                   "postgresql://USER@HOST:5432/DBNAME (pgdump backups only; restore other kinds to a file with --to PATH)")


def open_target(url: str, cwd: Path) -> Source:
    """Given a `restore --target-url` URL, return the Source a restore writes into: a database of an engine with
    URL_TARGET (PostgreSQL). Raise ValueError naming what is wrong: another engine, or a malformed URL."""
    engine = _by_scheme().get(scheme_of(url))
    if engine is None or not engine.URL_TARGET:
        raise ValueError(TARGET_URL_ONLY)
    try:
        return engine.open_source(source_url(url), cwd)
    except ValueError as error:
        raise ValueError(f"--target-url: {error}") from None


def checker(kind: str, workdir: Path, cancel: threading.Event) -> AbstractContextManager[Check]:
    """Return the engine's check for an existing artifact's raw stream of `kind`.

    Raise IntegrityError, saying which kinds this version knows, for a kind no engine here can check."""
    engine = _by_kind().get(kind)
    if engine is None:
        known = ", ".join(sorted(_by_kind()))
        raise IntegrityError(f"backups of kind {kind!r} cannot be checked or restored by this version (it knows {known}); "
                             "use a worker version with that engine, or restore by hand with `zstd -d`")
    return engine.checker(workdir, cancel)

