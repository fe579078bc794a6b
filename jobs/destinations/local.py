"""The backup directory on the local volume."""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import timedelta
from pathlib import Path
import shutil
import threading

from jobs import artifacts
from jobs.artifacts import TEMP_PREFIX
from jobs.compression import CHUNK, sha256_file
from jobs.destinations import Entry, too_large
from jobs.errors import Cancelled, NotFound, StorageError, TooLarge
from jobs.files import atomic_file, create_private, ensure_dir, remove_temporary
from jobs.manifest import MANIFEST_LIMIT


def _check(cancel: threading.Event | None, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"the worker is stopping; {what} was not started")


class LocalDestination:
    location = "local"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, key: str) -> Path:
        if "/" in key or key.startswith("."):
            raise ValueError(f"{key!r} is not a backup file name")
        return self.directory / key

    def url(self, key: str = "") -> str:
        return str(self.path(key) if key else self.directory)

    def put(self, path: Path, key: str, cancel: threading.Event) -> None:
        ensure_dir(self.directory)
        try:
            with path.open("rb") as source, atomic_file(self.path(key)) as target:
                while chunk := source.read(CHUNK):
                    if cancel.is_set():
                        raise Cancelled("the worker is stopping; the copy was interrupted")
                    target.write(chunk)
        except OSError as error:
            raise StorageError(f"cannot write {key} to {self.directory}: {error.strerror or error}") from None

    def get(self, key: str, path: Path, cancel: threading.Event) -> None:
        source = self.path(key)
        if not source.exists():
            raise NotFound(f"{key} is not in {self.directory}")
        try:
            with source.open("rb") as reader, create_private(path) as writer:  # 0600, as from S3
                shutil.copyfileobj(reader, writer, CHUNK)
        except OSError as error:
            raise StorageError(f"cannot copy {key} to {path}: {error.strerror or error}") from None

    def read(self, key: str, cancel: threading.Event | None = None) -> bytes:
        _check(cancel, f"reading {key}")
        try:
            with self.path(key).open("rb") as file:
                data = file.read(MANIFEST_LIMIT + 1)
        except FileNotFoundError:
            raise NotFound(f"{key} is not in {self.directory}") from None
        if len(data) > MANIFEST_LIMIT:
            raise TooLarge(too_large(self.url(key)))
        return data

    def list(self, cancel: threading.Event | None = None) -> list[Entry]:
        _check(cancel, f"listing {self.directory}")
        if not self.directory.is_dir():
            return []
        entries = []
        for child in self.directory.iterdir():
            if child.name.startswith(TEMP_PREFIX) or not child.is_file() or child.is_symlink():
                continue
            try:
                info = child.stat()
                entries.append(Entry(key=child.name, size=info.st_size, tag=str(info.st_mtime_ns)))
            except FileNotFoundError:
                continue
        return entries

    def delete(self, key: str, cancel: threading.Event | None = None) -> None:
        _check(cancel, f"deleting {key}")
        self.path(key).unlink(missing_ok=True)

    def sha256(self, key: str, cancel: threading.Event | None = None) -> str:
        try:
            return sha256_file(self.path(key), cancel)
        except FileNotFoundError:
            raise NotFound(f"{key} is not in {self.directory}") from None
        except OSError as error:
            raise StorageError(f"cannot read {self.path(key)}: {error.strerror or error}") from None

    def abort_incomplete(self, match: Callable[[str], bool], older_than: timedelta,
                         cancel: threading.Event | None = None) -> list[str]:
        return []  # a local file is renamed into place whole; temporaries are swept by remove_stale_temporaries

    def remove_stale_temporaries(self, sets: Collection[str] | None = None) -> list[str]:
        """Delete temporary files and directories left by runs that died; return their names. With `sets` (the
        backup sets whose lock the caller holds), a temporary that belongs to another set is left to that set's
        own run.

        Temporary names carry the writer's pid and a per-process token (`.tmp-<pid>-<token>-…`); those of a live
        process are left alone, so a backup starting never removes the scratch files of a verify or restore
        running beside it, while a restarted worker that got its predecessor's pid still clears its leftovers.
        The pid means nothing to a worker in another container sharing the volume (each may be pid 1): there the
        set's lock is what keeps one set's cycle away from another set's running backup.
        """
        removed: list[str] = []
        if not self.directory.is_dir():
            return removed
        for child in self.directory.iterdir():
            if not artifacts.is_stale_temporary(child.name) or child.is_symlink():
                continue
            owner = artifacts.set_of_temporary(child.name)
            if sets is not None and owner is not None and owner not in sets:
                continue
            remove_temporary(child)
            removed.append(child.name)
        return removed
