"""One module per database engine, behind one small interface, chosen by URL scheme.

A `Source` is a configured database we can snapshot and restore into. Verifying an artifact needs no source:
`verifier(kind)` returns the engine's own check for a raw snapshot of that kind.
"""

from collections.abc import Callable
from pathlib import Path
import threading
from typing import Protocol
from urllib.parse import unquote, urlsplit

from jobs.engines import sqlite


class Source(Protocol):
    """A database to back up and restore into. Implementations live one per module in this package."""

    kind: str  # artifact kind: "sqlite", "pgdump" or "rdb"

    def name(self) -> str:
        """Return the short, file-name-safe name used in artifact names (`app` for app.db)."""

    def describe(self) -> dict[str, str]:
        """Return the source for manifests and logs: kind and database name, no secrets."""

    def target(self) -> str:
        """Return where a restore writes, for people: a file path or a URL with its password masked."""

    def estimate_size(self) -> int:
        """Return the expected size in bytes of a raw snapshot. Raise SourceError if the source is unusable."""

    def snapshot(self, out: Path, cancel: threading.Event) -> None:
        """Write a consistent raw snapshot to `out` (a new file). Raise SourceError or Cancelled."""

    def restore(self, raw: Path, cancel: threading.Event) -> Path | None:
        """Replace the live data with the proven raw snapshot `raw`; return the safety copy made first, if any.

        Raise SourceError or Cancelled."""

    def protected_files(self) -> list[Path]:
        """Return the files of this database that cleanup rules must never match (none for a server)."""

    def versions(self) -> dict[str, str]:
        """Return tool and server versions worth recording in the manifest."""


class Engine(Protocol):
    """What each engine module exports: its URL schemes, its artifact kind, an opener and the raw check."""

    SCHEMES: tuple[str, ...]
    KIND: str

    def open_source(self, url: str, cwd: Path) -> Source: ...

    def verify(self, raw: Path, cancel: threading.Event) -> str: ...


Verifier = Callable[[Path, threading.Event], str]

ENGINES: tuple[Engine, ...] = (sqlite,)
_BY_SCHEME = {scheme: engine for engine in ENGINES for scheme in engine.SCHEMES}
_BY_KIND = {engine.KIND: engine for engine in ENGINES}
_PLANNED = {"postgresql", "postgres", "redis", "rediss"} - set(_BY_SCHEME)


def open_source(url: str, cwd: Path) -> Source:
    """Given a BACKUP_SOURCE URL, return its Source. Raise ValueError naming what is wrong with the URL."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in _BY_SCHEME:
        return _BY_SCHEME[scheme].open_source(url, cwd)
    if scheme in _PLANNED:
        raise ValueError(f"{scheme}:// sources are not supported by this version yet; use sqlite:///path/to/app.db")
    known = " or ".join(f"{s}://" for s in sorted(_BY_SCHEME))
    raise ValueError(
        f"the URL must start with {known} (like sqlite:///data/app.db or sqlite:////app/data/app.db)"
        + (f", not {scheme}://" if scheme else "")
    )


def verifier(kind: str) -> Verifier:
    """Return the engine check for raw snapshots of `kind`. Raise ValueError for a kind we do not know."""
    try:
        return _BY_KIND[kind].verify
    except KeyError:
        raise ValueError(f"backups of kind {kind!r} cannot be checked by this version") from None


def url_secrets(url: str) -> list[str]:
    """Return the password in `url`, if any, in raw and decoded form, for log scrubbing."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return [password, unquote(password)] if password else []
