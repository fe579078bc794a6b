"""Off-site copies: upload what the bucket lacks, and fetch a backup back with its checksum proven.

Works over any two Destinations (the bucket is usually an S3Destination; tests also use a second local
directory). Upload order is the contract: the artifact first, its manifest last, so a manifest in the bucket
always means a whole artifact beside it; an interrupted upload leaves at most an artifact without a manifest,
which `list_backups` does not count and the next cycle uploads again.
"""

from datetime import datetime, timezone
from pathlib import Path
import threading

import structlog

from jobs.artifacts import ARTIFACT_NAME, MANIFEST_SUFFIX, sha256_file, temp_path
from jobs.backups import Backup, find, list_backups
from jobs.destinations import Destination
from jobs.destinations.local import LocalDestination
from jobs.errors import Cancelled, IntegrityError, NotFound
from jobs.retention import Policy, plan

log = structlog.get_logger("jobs.offsite")


def _where(destination: Destination) -> str:
    return {"s3": "the bucket", "local": "the backup directory"}.get(destination.location, destination.location)


def upload_backup(local: LocalDestination, remote: Destination, backup: Backup, cancel: threading.Event) -> None:
    """Given a local backup, copy its artifact and then its manifest to `remote`.

    Raise UploadError or StorageError if a copy fails, Cancelled if `cancel` is set; the manifest is never
    uploaded unless the artifact upload succeeded.
    """
    remote.put(local.path(backup.artifact), backup.artifact, cancel)
    if cancel.is_set():
        raise Cancelled(f"the worker is stopping; {backup.id} was uploaded without its manifest and will be uploaded again next cycle")
    remote.put(local.path(backup.manifest_key), backup.manifest_key, cancel)


def missing_remote(local_backups: list[Backup], remote_backups: list[Backup]) -> list[Backup]:
    """Given the local and the remote backups, return the local ones the remote lacks (by artifact name), oldest first."""
    present = {backup.artifact for backup in remote_backups}
    missing = [backup for backup in local_backups if backup.artifact not in present]
    return sorted(missing, key=lambda backup: (backup.created_at, backup.id))


def sync(local: LocalDestination, remote: Destination, cancel: threading.Event,
         policy: Policy | None = None, now: datetime | None = None) -> list[str]:
    """Upload every local backup `remote` lacks, oldest first; return the ids uploaded.

    With the remote's retention `policy`, backups it would delete at once are not uploaded (a bucket kept
    shorter than the volume would otherwise receive and lose the same old backups every cycle). Raise
    UploadError, StorageError or Cancelled at the first failure; what was uploaded before stays, and the next
    call carries on from there.
    """
    local_backups, _ = list_backups(local)
    remote_backups, _ = list_backups(remote)
    missing = missing_remote(local_backups, remote_backups)
    if policy is not None and missing:
        doomed = {b.id for b in plan(remote_backups + missing, policy, now or datetime.now(timezone.utc)).delete}
        missing = [backup for backup in missing if backup.id not in doomed]
    uploaded = []
    for backup in missing:
        upload_backup(local, remote, backup, cancel)
        log.info("offsite.uploaded", backup=backup.id, artifact=backup.artifact, size=backup.size, location=remote.location)
        uploaded.append(backup.id)
    return uploaded


def fetch_verified(remote: Destination, backup: Backup, workdir: Path, cancel: threading.Event) -> Path:
    """Given a backup on `remote`, download its artifact to a temporary file in `workdir` and return that path
    once its size and SHA-256 match the manifest (the caller moves or removes the file).

    Raise IntegrityError if they do not match, NotFound, UploadError or StorageError if the download fails,
    Cancelled if `cancel` is set; the temporary file is removed whenever this raises.
    """
    target = temp_path(workdir / backup.artifact)
    target.unlink(missing_ok=True)
    done = False
    try:
        remote.get(backup.artifact, target, cancel)
        size = target.stat().st_size
        if size != backup.size:
            raise IntegrityError(
                f"{backup.artifact} in {_where(remote)} is damaged: it is {size} bytes but its manifest says {backup.size}"
            )
        digest = sha256_file(target, cancel)
        if digest != backup.sha256:
            raise IntegrityError(
                f"{backup.artifact} in {_where(remote)} is damaged: its SHA-256 is {digest[:12]}… "
                f"but its manifest says {backup.sha256[:12]}…"
            )
        done = True
        return target
    finally:
        if not done:
            target.unlink(missing_ok=True)


def _stamp(artifact: str) -> str:
    return ARTIFACT_NAME.match(artifact)["stamp"]


def _damaged_sets(remote: Destination, backups: list[Backup]) -> list[str]:
    """Return, newest first, the artifacts on `remote` that have a manifest but are not complete backups."""
    keys = {entry.key for entry in remote.list()}
    complete = {backup.artifact for backup in backups}
    damaged = [key for key in keys if ARTIFACT_NAME.match(key) and key + MANIFEST_SUFFIX in keys and key not in complete]
    return sorted(damaged, key=_stamp, reverse=True)


def pick_restorable(remote: Destination, workdir: Path, cancel: threading.Event, wanted: str | None,
                    fallback: bool) -> tuple[Backup, Path, list[str]]:
    """Given a destination and a wanted id (None for the latest), return the backup to restore, its verified
    artifact downloaded into `workdir`, and notes on what was skipped.

    For the latest, the newest backup whose manifest and artifact are present and whose checksum matches is
    chosen; if the newest is damaged this raises IntegrityError unless `fallback`, which tries older ones in
    order. Raise NotFound if there is no such backup, IntegrityError if none is intact.
    """
    backups, problems = list_backups(remote)
    notes = list(problems)
    if wanted is not None:
        backup = find(backups, wanted)
        return backup, fetch_verified(remote, backup, workdir, cancel), notes
    damaged = _damaged_sets(remote, backups)
    if not backups and not damaged:
        raise NotFound(f"there is no complete backup in {_where(remote)}; run `python -m worker list --remote` to see what is there")
    newest_is_damaged = bool(damaged) and (not backups or _stamp(damaged[0]) > _stamp(backups[0].artifact))
    if newest_is_damaged and not fallback:
        raise IntegrityError(
            f"the newest backup in {_where(remote)}, {damaged[0]}, is damaged (its size does not match its manifest, "
            f"or the manifest is unreadable); run with --fallback to restore the newest intact older backup instead"
        )
    skipped = []
    for position, backup in enumerate(backups):
        try:
            return backup, fetch_verified(remote, backup, workdir, cancel), notes
        except (IntegrityError, NotFound) as error:
            if not fallback:
                older = f" ({backups[position + 1].id} is the next older one)" if position + 1 < len(backups) else ""
                raise IntegrityError(
                    f"the newest backup {backup.id} cannot be restored: {error}; run with --fallback to restore "
                    f"the newest intact older backup instead{older}"
                ) from None
            skipped.append(f"skipped {backup.id}: {error}")
            notes.append(skipped[-1])
            log.warning("offsite.skipped_backup", backup=backup.id, reason=str(error))
    raise IntegrityError(
        f"none of the {len(backups)} complete backups in {_where(remote)} passed its checksum ({'; '.join(skipped)})"
        if backups else f"the only backups in {_where(remote)} are damaged ({'; '.join(notes)})"
    )
