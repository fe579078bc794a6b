"""Off-site copies: upload what the bucket lacks, and fetch a backup back with its checksum proven.

Works over any two Destinations (the bucket is usually an S3Destination; tests also use a second local
directory). Upload order is the contract: the artifact first, its manifest last, so a manifest in the bucket
always means a whole artifact beside it; an interrupted upload leaves at most an artifact without a manifest,
which `list_backups` does not count and the next cycle uploads again. A copy of the wrong size is uploaded again.
"""

from datetime import datetime, timedelta, timezone
from pathlib import Path
import threading

import structlog

from jobs import selection
from jobs.artifacts import BackupSet, set_of, temp_path
from jobs.backups import Backup, find, list_backups
from jobs.compression import sha256_file
from jobs.destinations import Destination
from jobs.destinations.local import LocalDestination
from jobs.errors import Cancelled, IntegrityError, NotFound, RemoteError
from jobs.retention import Policy, plan
from jobs.selection import Purpose, is_encrypted

log = structlog.get_logger("jobs.offsite")

# A multipart upload of one of our artifacts that started this long ago belongs to a run that died (uploads run
# under the backup lock, so no live run of this worker is still sending it): abort it so its parts stop costing.
STALE_UPLOAD_AGE = timedelta(hours=1)


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
    """Given the local and the remote backups, return the local ones the remote lacks whole (by artifact name; a
    remote copy of the wrong size is replaced), oldest first. A local backup that is damaged is never sent, nor
    one whose name the remote holds for another backup (another SHA-256: a clock that went back wrote the same
    name twice); that one is logged, never overwritten."""
    remote = {backup.artifact: backup for backup in remote_backups if not backup.damage}
    missing = []
    for backup in local_backups:
        there = remote.get(backup.artifact)
        if there is not None and there.sha256 != backup.sha256:
            log.error("offsite.name_taken", backup=backup.id, detail="the bucket holds another backup under this name "
                      "(a clock that went back wrote it twice); this one is not uploaded, restore it from the volume")
        elif there is None and not backup.damage:
            missing.append(backup)
    return sorted(missing, key=lambda backup: (backup.created_at, backup.id))


def sync(local: LocalDestination, remote: Destination, cancel: threading.Event,
         policy: Policy | None = None, now: datetime | None = None, backup_set: BackupSet | None = None,
         present: set[str] | None = None, stale_upload_age: timedelta = STALE_UPLOAD_AGE,
         fresh: str | None = None, encrypted_only: bool = False) -> list[str]:
    """Upload every local backup of `backup_set` (every set if None) that `remote` lacks, oldest first; return
    the ids uploaded.

    First abort the set's unfinished multipart uploads older than `stale_upload_age` (failing that only warns).
    With the remote's retention `policy`, backups its plan (jobs.retention.plan, with `fresh` the backup this cycle
    wrote) would delete at once are not uploaded (a bucket kept shorter than the volume would otherwise receive and
    lose the same old backups every cycle). When given, `present`
    receives the artifact names known to be whole on the remote (listed there, or uploaded now), also when this
    raises. Raise RemoteError, StorageError or Cancelled at the first failure; what was uploaded before stays,
    and the next call carries on from there. With `encrypted_only` (encryption is configured), a backup that is
    not encrypted (made before) is never uploaded: it stays on the volume, and a warning says so.
    """
    present = set() if present is None else present
    ours = backup_set.owns if backup_set is not None else (lambda key: set_of(key) is not None)
    try:
        aborted = remote.abort_incomplete(ours, stale_upload_age, cancel)
        if aborted:
            log.info("offsite.aborted_stale_uploads", keys=aborted, location=remote.location)
    except RemoteError as error:  # the reason names the cause; permissions are the fix only when access was denied
        hint = ({"hint": "grant s3:ListBucketMultipartUploads and s3:AbortMultipartUpload, or add a lifecycle rule "
                         "that aborts incomplete multipart uploads"} if error.kind == "denied" else {})
        log.warning("offsite.abort_stale_failed", reason=str(error), cause=error.cause or None, **hint)
    local_backups, _ = list_backups(local, backup_set, cancel)
    remote_backups, _ = list_backups(remote, backup_set, cancel)
    local_sha = {backup.artifact: backup.sha256 for backup in local_backups}
    present.update(backup.artifact for backup in remote_backups
                   if not backup.damage and local_sha.get(backup.artifact, backup.sha256) == backup.sha256)
    missing = missing_remote(local_backups, remote_backups)
    if policy is not None and missing:
        doomed = {b.id for b in plan(remote_backups + missing, policy, now or datetime.now(timezone.utc), fresh=fresh).delete}
        missing = [backup for backup in missing if backup.id not in doomed]
    if encrypted_only:
        plain = [backup for backup in missing if not is_encrypted(backup)]
        if plain:
            log.warning("offsite.plain_not_uploaded", backups=[backup.id for backup in plain], location=remote.location,
                        detail="encryption is configured, so backups made before it, unencrypted, stay on the volume only")
            missing = [backup for backup in missing if is_encrypted(backup)]
    uploaded = []
    for backup in missing:
        upload_backup(local, remote, backup, cancel)
        present.add(backup.artifact)
        log.info("offsite.uploaded", backup=backup.id, artifact=backup.artifact, size=backup.size, location=remote.location)
        uploaded.append(backup.id)
    return uploaded


def fetch_verified(remote: Destination, backup: Backup, workdir: Path, cancel: threading.Event) -> Path:
    """Given a backup on `remote`, download its artifact to a temporary file in `workdir` and return that path
    once its size and SHA-256 match the manifest (the caller moves or removes the file).

    Raise IntegrityError if they do not match, NotFound, DownloadError or StorageError if the download fails,
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


def pick_restorable(remote: Destination, workdir: Path, cancel: threading.Event, wanted: str | None,
                    fallback: bool, backup_set: BackupSet | None = None) -> tuple[Backup, Path, list[str]]:
    """Given a destination, a backup set (None: every set) and a wanted id (None for the latest), return the
    backup to restore, its verified artifact downloaded into `workdir`, and notes on what was skipped.

    The latest is the set's newest backup as `jobs.selection.latest` chooses it; if it proves damaged (missing,
    wrong size, wrong SHA-256) this raises IntegrityError naming it unless `fallback`, which tries older ones in
    order. Raise NotFound if there is no such backup, IntegrityError if none is intact.
    """
    backups, problems = list_backups(remote, backup_set, cancel)
    notes = list(problems)
    if wanted is not None:
        backup = find(backups, wanted)
        if backup.damage:
            raise IntegrityError(f"{backup.damage} in {_where(remote)}; restore another backup")
        return backup, fetch_verified(remote, backup, workdir, cancel), notes
    if not backups:
        of = f" of the set {backup_set}" if backup_set is not None else ""
        raise NotFound(f"there is no complete backup{of} in {_where(remote)}; run `python -m worker list --remote --all` to see what is there")
    backup, artifact, skipped = selection.latest(backups, Purpose.RESTORE, datetime.now(timezone.utc),
                                                 lambda chosen: fetch_verified(remote, chosen, workdir, cancel),
                                                 fallback, _where(remote))
    for note in skipped:
        log.warning("offsite.skipped_backup", note=note)
    assert artifact is not None
    return backup, artifact, notes + skipped
