"""Is a stored artifact still the bytes its manifest names? The SHA-256 re-check retention relies on before it
deletes, with a cache so that a night's retention does not read the same artifacts again and again.

A result is cached by destination, artifact name, size and tag (a local file's mtime, an S3 object's ETag) for
CACHE_TTL: a rewritten file gets a new tag and is read again. The cache is a small JSON file in the backup
directory, written atomically; it is our own file but read as untrusted input: anything unexpected in it is
ignored (the artifact is simply read again). Losing it costs one re-read, nothing else.
"""

from datetime import datetime, timedelta, timezone
import json
from pathlib import Path
import threading
from typing import Any

import structlog

from jobs.backups import Backup
from jobs.destinations import Destination
from jobs.errors import Cancelled, JobError, NotFound
from jobs.files import atomic_file

log = structlog.get_logger("jobs.intact")

CACHE_NAME = ".sha256-cache.json"
CACHE_TTL = timedelta(days=1)
MAX_CACHE_BYTES = 1 << 20


class IntactCache:
    """SHA-256 re-checks of stored artifacts, remembered for CACHE_TTL in `path` (None: not remembered)."""

    def __init__(self, path: Path | None, now: datetime | None = None) -> None:
        self.path = path
        self.now = now or datetime.now(timezone.utc)
        self.entries: dict[str, dict[str, Any]] = self._load()
        self.changed = False

    def _load(self) -> dict[str, dict[str, Any]]:
        if self.path is None:
            return {}
        try:
            with self.path.open("rb") as handle:
                data = json.loads(handle.read(MAX_CACHE_BYTES + 1)[:MAX_CACHE_BYTES])
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {key: value for key, value in data.items() if isinstance(value, dict) and self._current(value)}

    def _current(self, entry: dict[str, Any]) -> bool:
        try:
            checked = datetime.fromisoformat(str(entry["checked_at"]))
        except (KeyError, ValueError):
            return False
        return checked.tzinfo is not None and timedelta(0) <= self.now - checked <= CACHE_TTL

    def intact(self, destination: Destination, backup: Backup, cancel: threading.Event | None = None) -> bool | None:
        """Return whether `backup`'s artifact on `destination` hashes to its manifest's SHA-256 (and has its size):
        True or False, or None when it cannot be read now (a network error; a missing artifact is False).
        Raise Cancelled if `cancel` is set."""
        if backup.damage:
            return False
        key = f"{destination.url()}|{backup.artifact}"
        entry = self.entries.get(key)
        if (entry and backup.tag and entry.get("tag") == backup.tag and entry.get("size") == backup.size
                and entry.get("sha256") == backup.sha256):
            return bool(entry.get("ok"))
        try:
            digest = destination.sha256(backup.artifact, cancel)
        except Cancelled:
            raise
        except NotFound:
            return False
        except JobError as error:
            log.warning("retention.recheck_failed", location=destination.location, backup=backup.id, reason=str(error),
                        detail="nothing is deleted this time; the next retention run checks again")
            return None
        ok = digest == backup.sha256
        if not ok:
            log.error("retention.damaged_backup", location=destination.location, backup=backup.id,
                      detail=f"{backup.artifact} does not match the SHA-256 in its manifest; it no longer counts "
                             "toward BACKUP_KEEP_MIN and an older intact backup is kept in its place")
        if backup.tag:
            self.entries[key] = {"tag": backup.tag, "size": backup.size, "sha256": backup.sha256, "ok": ok,
                                 "checked_at": self.now.isoformat()}
            self.changed = True
        return ok

    def save(self) -> None:
        """Write the cache back if anything was added; a failure only logs (the cache is an optimisation)."""
        if self.path is None or not self.changed:
            return
        try:
            with atomic_file(self.path) as handle:
                handle.write(json.dumps(self.entries, sort_keys=True).encode())
            self.changed = False
        except OSError as error:
            log.warning("retention.cache_not_saved", path=str(self.path), reason=error.strerror or str(error))
