"""Where backups live: one module per destination behind one interface (put, get, read, list, delete).

Keys are flat file names (`app-20261122T020000Z.sqlite.zst`, and its `.json` manifest). A destination never
exposes a partly written object under its key: local files are renamed into place, S3 objects appear whole.
"""

from dataclasses import dataclass
from pathlib import Path
import threading
from typing import Protocol


@dataclass(frozen=True)
class Entry:
    key: str
    size: int


class Destination(Protocol):
    location: str  # "local" or "s3"

    def put(self, path: Path, key: str, cancel: threading.Event) -> None:
        """Store the file at `path` under `key`, whole or not at all. Raise StorageError or UploadError."""

    def get(self, key: str, path: Path, cancel: threading.Event) -> None:
        """Copy the object `key` into the new file `path`. Raise NotFound, StorageError or UploadError."""

    def read(self, key: str) -> bytes:
        """Return a small object's bytes (a manifest). Raise NotFound if it is missing."""

    def list(self) -> list[Entry]:
        """Return every object under this destination, in no particular order."""

    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is not an error."""

    def url(self, key: str = "") -> str:
        """Return where `key` (or the destination itself) lives, for messages: a path or `s3://bucket/prefix/key`."""
