"""Backup sets on a destination: an artifact and its manifest, side by side. The files are the truth."""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jobs.artifacts import ARTIFACT_NAME, MANIFEST_SUFFIX, parse_iso, read_manifest
from jobs.destinations import Destination
from jobs.errors import NotFound


@dataclass(frozen=True)
class Backup:
    id: str
    artifact: str
    created_at: datetime
    size: int
    sha256: str
    verified: bool
    manifest: dict[str, Any] = field(compare=False, repr=False)

    @property
    def manifest_key(self) -> str:
        return self.artifact + MANIFEST_SUFFIX

    @property
    def kind(self) -> str:
        return ARTIFACT_NAME.match(self.artifact)["kind"]


def from_manifest(artifact: str, manifest: dict[str, Any]) -> Backup:
    """Build a Backup from an artifact name and its parsed manifest."""
    return Backup(
        id=manifest["id"],
        artifact=artifact,
        created_at=parse_iso(manifest["created_at"]),
        size=int(manifest["size"]),
        sha256=str(manifest["sha256"]),
        verified=bool(manifest.get("verified")),
        manifest=manifest,
    )


def list_backups(destination: Destination) -> tuple[list[Backup], list[str]]:
    """Return the destination's complete backups, newest first, and a note for each file pair we skipped.

    A backup counts only when both its artifact (named as we name them) and a readable manifest are present,
    and the artifact has the size the manifest records. Files we did not write are ignored, never touched.
    """
    entries = {entry.key: entry for entry in destination.list()}
    backups, problems = [], []
    for key, entry in entries.items():
        if not ARTIFACT_NAME.match(key):
            continue
        manifest_key = key + MANIFEST_SUFFIX
        if manifest_key not in entries:
            problems.append(f"{key} has no manifest (an interrupted backup or upload); it is not counted")
            continue
        try:
            backup = from_manifest(key, read_manifest(destination.read(manifest_key), key))
        except (ValueError, KeyError, TypeError, NotFound) as error:
            problems.append(f"{manifest_key} is not a valid manifest ({error}); the backup is not counted")
            continue
        if backup.size != entry.size:
            problems.append(f"{key} is {entry.size} bytes but its manifest says {backup.size}; it is not counted")
            continue
        backups.append(backup)
    backups.sort(key=lambda backup: (backup.created_at, backup.id), reverse=True)
    return backups, problems


def newest_verified(backups: list[Backup]) -> Backup | None:
    """Return the newest backup whose manifest records a passed check, or None."""
    return max((b for b in backups if b.verified), key=lambda b: (b.created_at, b.id), default=None)


def find(backups: list[Backup], wanted: str) -> Backup:
    """Return the backup whose id or artifact name is `wanted`. Raise NotFound naming how to list them."""
    for backup in backups:
        if wanted in (backup.id, backup.artifact, backup.manifest_key):
            return backup
    raise NotFound(f"no backup {wanted!r}; run `python -m worker list` to see the ids")


def delete_backup(destination: Destination, backup: Backup) -> None:
    """Delete a backup: the manifest first, so that an interrupted delete never leaves a set that looks whole."""
    destination.delete(backup.manifest_key)
    destination.delete(backup.artifact)
