"""Where backups live: one module per destination behind one interface (put, get, read, list, delete).

Keys are flat file names (`app-20261122T020000Z.sqlite.zst`, and its `.json` manifest). A destination never
exposes a partly written object under its key: local files are renamed into place, S3 objects appear whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
import threading
from typing import Protocol

from jobs.manifest import MANIFEST_LIMIT


@dataclass(frozen=True)
class Entry:
    key: str
    size: int
    tag: str = ""  # the stored version: a local file's mtime (ns), an S3 object's ETag; changes when it is rewritten


class Destination(Protocol):
    location: str  # "local" or "s3"

    def put(self, path: Path, key: str, cancel: threading.Event) -> None:
        """Store the file at `path` under `key`, whole or not at all. Raise StorageError or UploadError."""

    def get(self, key: str, path: Path, cancel: threading.Event) -> None:
        """Copy the object `key` into the new file `path` (mode 0600). Raise NotFound, StorageError or
        DownloadError."""

    def read(self, key: str, cancel: threading.Event | None = None) -> bytes:
        """Return a small object's bytes (a manifest), at most MANIFEST_LIMIT of them. Raise TooLarge, having read
        no more than MANIFEST_LIMIT + 1 bytes, if it is larger; NotFound if it is missing; Cancelled if `cancel`
        is set; DownloadError if it cannot be read."""

    def list(self, cancel: threading.Event | None = None) -> list[Entry]:
        """Return every object under this destination, in no particular order. Raise Cancelled if `cancel` is set,
        ListError if it cannot be listed."""

    def delete(self, key: str, cancel: threading.Event | None = None) -> None:
        """Remove `key`; a missing key is not an error. Raise Cancelled if `cancel` is set, UploadError if the
        bucket refuses."""

    def sha256(self, key: str, cancel: threading.Event | None = None) -> str:
        """Return the hex SHA-256 of the object `key`, read as a stream (nothing is written). Raise NotFound if it
        is missing, Cancelled if `cancel` is set, StorageError or DownloadError if it cannot be read."""

    def abort_incomplete(self, match: Callable[[str], bool], older_than: timedelta,
                         cancel: threading.Event | None = None) -> list[str]:
        """Abort unfinished uploads (S3 multipart uploads a killed run left, with their parts) of keys that
        `match` accepts, started more than `older_than` ago; return their keys. Local files are never partly
        visible (temporaries are swept at start), so a local directory has none."""

    def url(self, key: str = "") -> str:
        """Return where `key` (or the destination itself) lives, for messages: a path or `s3://bucket/prefix/key`."""


def too_large(where: str) -> str:
    """Return the sentence for an object at `where` that is larger than a manifest may be."""
    return f"{where} is larger than {MANIFEST_LIMIT // 1024} KiB, more than any manifest this worker writes; is it one of ours?"
