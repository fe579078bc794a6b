"""Backups on a destination: an artifact and its manifest, side by side. The files are the truth.

Every backup belongs to one backup set, `(name, kind)`, read from its artifact name
`<name>-<YYYYMMDDTHHMMSSZ>.<kind>.zst`. Selection, retention, freshness and uploads look at one set at a time, so
that two services sharing a directory or a bucket never choose, count or delete each other's backups.

A manifest is untrusted input: it counts only if its `id` is its artifact's name minus `.zst` (or, for backups
written by version 1, minus `.<kind>.zst`). A backup's id is always derived from the validated artifact name,
never read from the manifest, so nothing a manifest says can name a path.
"""

from dataclasses import dataclass, field, replace
import functools
from datetime import datetime
import threading
from typing import Any

from jobs.artifacts import MANIFEST_SUFFIX, ArtifactName, BackupSet, backup_id, legacy_id, manifest_name, parse, set_of
from jobs.destinations import Destination
from jobs.errors import NotFound, TooLarge
from jobs.manifest import parse_iso, read_manifest


@dataclass(frozen=True)
class Backup:
    id: str
    artifact: str
    created_at: datetime
    size: int
    sha256: str
    verified: bool
    manifest: dict[str, Any] = field(compare=False, repr=False)
    # What the destination holds for the artifact: its size (None: not looked at), and whether it is there at all.
    stored_size: int | None = field(default=None, compare=False)
    present: bool = field(default=True, compare=False)
    tag: str = field(default="", compare=False)  # the artifact's version on its destination (mtime, ETag)

    @property
    def damage(self) -> str | None:
        """Return why the artifact cannot be this backup, judged without reading it (missing, or not the size its
        manifest records), or None."""
        if not self.present:
            return f"{self.artifact} is missing; only its manifest is there"
        if self.stored_size is not None and self.stored_size != self.size:
            return f"{self.artifact} is {self.stored_size} bytes but its manifest says {self.size}"
        return None

    @property
    def manifest_key(self) -> str:
        return manifest_name(self.artifact)

    @property
    def kind(self) -> str:
        return self.backup_set.kind

    @functools.cached_property
    def parts(self) -> ArtifactName | None:
        """The artifact's name taken apart (its set and stamp), read once: retention asks for it often."""
        return parse(self.artifact)

    @property
    def backup_set(self) -> BackupSet | None:
        return self.parts.backup_set if self.parts else None

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a person may use for this backup: id, version 1 id, artifact and manifest file names."""
        return (self.id, legacy_id(self.artifact), self.artifact, self.manifest_key)


def from_manifest(artifact: str, manifest: dict[str, Any]) -> Backup:
    """Build a Backup from an artifact name and its parsed manifest. Raise ValueError if the manifest's id is not
    the artifact's (a manifest copied, edited or planted beside another artifact is not a backup)."""
    if set_of(artifact) is None:
        raise ValueError(f"{artifact!r} is not an artifact name")
    ident = backup_id(artifact)
    if manifest["id"] not in (ident, legacy_id(artifact)):
        raise ValueError(f"its id {str(manifest['id'])[:80]!r} is not {ident!r}, its artifact's name")
    return Backup(
        id=ident,
        artifact=artifact,
        created_at=parse_iso(manifest["created_at"]),
        size=int(manifest["size"]),
        sha256=str(manifest["sha256"]),
        verified=passed(manifest.get("verified")),
        manifest=manifest,
    )


def passed(verified: Any) -> bool:
    """Given a manifest's `verified` (untrusted), return whether it records a passed check: `{"result": "ok", …}`."""
    return isinstance(verified, dict) and verified.get("result") == "ok"


def list_backups(destination: Destination, backup_set: BackupSet | None = None,
                 cancel: threading.Event | None = None) -> tuple[list[Backup], list[str]]:
    """Return the destination's backups of `backup_set` (every set if None), newest first, and a note for each of
    that set's files we skipped.

    A backup is a valid manifest (at most MANIFEST_LIMIT bytes, read no further; its id the artifact's) beside the
    artifact it names. A backup whose artifact is missing or not the size its manifest records is returned too,
    with `damage` saying so: whether it may be chosen, counted or deleted is decided in one place,
    `jobs.selection`, never by leaving it out here (a damaged newest backup left out would silently make an older
    one "the newest"). An artifact without a manifest is an interrupted backup or upload: not a backup. Other
    sets' files are not even read; files we did not write are ignored, never touched.
    """
    entries = {entry.key: entry for entry in destination.list(cancel=cancel)}
    backups, problems = [], []
    for key in entries:
        artifact = key.removesuffix(MANIFEST_SUFFIX)
        owner = set_of(artifact)
        if owner is None or (backup_set is not None and owner != backup_set):
            continue
        if key == artifact:  # an artifact: counted through its manifest, if it has one
            if manifest_name(artifact) not in entries:
                problems.append(f"{key} has no manifest (an interrupted backup or upload); it is not counted")
            continue
        try:
            backup = from_manifest(artifact, read_manifest(destination.read(key, cancel=cancel), artifact))
        except (ValueError, KeyError, TypeError, NotFound, TooLarge) as error:
            problems.append(f"{key} is not a valid manifest ({error}); the backup is not counted")
            continue
        stored = entries.get(artifact)
        backup = replace(backup, stored_size=stored.size if stored else None, present=stored is not None,
                         tag=stored.tag if stored else "")
        if backup.damage:
            problems.append(f"{backup.damage}; the backup is damaged")
        backups.append(backup)
    backups.sort(key=lambda backup: (backup.created_at, backup.id), reverse=True)
    return backups, problems


def sets_in(destination: Destination, cancel: threading.Event | None = None) -> list[BackupSet]:
    """Return, sorted, the backup sets that have at least one artifact with a manifest beside it on `destination`
    (judged by file names only: nothing is read)."""
    keys = {entry.key for entry in destination.list(cancel=cancel)}
    return sorted({owner for key in keys if (owner := set_of(key)) and manifest_name(key) in keys})


def find(backups: list[Backup], wanted: str) -> Backup:
    """Return the backup that `wanted` names: its id, its version 1 id, or its artifact or manifest file name.
    Raise NotFound naming how to list them, or if `wanted` names several backups."""
    matches = [backup for backup in backups if wanted in backup.names]
    if len(matches) > 1:
        raise NotFound(f"{wanted!r} names {len(matches)} backups ({', '.join(b.id for b in matches)}); give the full id")
    if not matches:
        raise NotFound(f"no backup {wanted!r}; run `python -m worker list` to see the ids")
    return matches[0]


def delete_backup(destination: Destination, backup: Backup, cancel: threading.Event | None = None) -> None:
    """Delete a backup: the manifest first, so that an interrupted delete never leaves a set that looks whole."""
    destination.delete(backup.manifest_key, cancel=cancel)
    destination.delete(backup.artifact, cancel=cancel)
