"""One backup cycle: preflight, snapshot, check and compress (one pass), publish, upload, retention.

Every engine meets the pipeline through `Source.snapshot`: the raw stream is read once, each chunk goes to the
engine's check and to the compressor, and the slower of the two sets the pace. The artifact and then its
manifest are renamed into place only after the check passed (`jobs.publish`); anything that fails leaves
temporary files only, and those are removed here or on the next start.
"""

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from datetime import datetime, timedelta, timezone
import os
from pathlib import Path
import secrets
import shutil
import tempfile
import threading
import time
from typing import Any

import structlog
import zstandard

from jobs import (artifacts, compression, encryption, files, guard, identity, offsite, ownership, publish, retention,
                  selection)
from jobs.artifacts import BackupSet
from jobs.backups import Backup, list_backups
from jobs.cycle import Cycle, CycleUploadFailed
from jobs.destinations import Destination
from jobs.destinations.local import LocalDestination
from jobs.engines import HOLDS, Source
from jobs.errors import BusyError, IntegrityError, RemoteError, SpaceError, StorageError
from jobs.intact import CACHE_NAME, IntactCache
from jobs.settings import BackupSettings
from jobs.manifest import MANIFEST_VERSION, utc_iso, write_manifest
from jobs.volume import MinFree, room_problem, write_problem

log = structlog.get_logger("jobs.pipeline")

HEADROOM = 16 << 20


@contextmanager
def stage(name: str, writing: Path | None = None) -> Iterator[None]:
    """Turn an OSError inside the block into a StorageError at stage `name`: one sentence naming the file (the
    error's own, else `writing`, the file the block writes), and for a full volume the volume and its free space."""
    try:
        yield
    except OSError as error:
        raise StorageError(write_problem(name, error, writing), stage=name) from None


def required_space(estimate: int, previous: list[Backup], on_disk: bool = True) -> int:
    """Return the bytes a backup needs: the raw snapshot (when the engine writes one to the volume, see
    `Source.snapshot_on_disk`) plus the artifact, judged by the last compression ratio."""
    ratio = 1.0
    for backup in previous:
        raw = backup.manifest.get("raw_size")
        if isinstance(raw, int) and raw > 0:
            ratio = min(1.0, backup.size / raw * 1.5)
            break
    return (estimate if on_disk else 0) + int(estimate * ratio) + HEADROOM


def check_space(directory: Path, estimate: int, previous: list[Backup], min_free: MinFree | None = None,
                on_disk: bool = True) -> None:
    """Raise SpaceError if the volume holding `directory` cannot take the snapshot (if `on_disk`) and the
    artifact and still keep `min_free` (BACKUP_MIN_FREE) free for the app."""
    usage = shutil.disk_usage(directory)
    problem = room_problem(usage.free, usage.total, required_space(estimate, previous, on_disk), min_free)
    if problem:
        what = f"a {estimate >> 20} MiB snapshot and its compressed copy" if on_disk else \
            f"the compressed copy of a {estimate >> 20} MiB database"
        raise SpaceError(f"{directory} {problem} ({what}); "
                         "free space or grow the volume" + (", or lower BACKUP_MIN_FREE" if "BACKUP_MIN_FREE" in problem else ""))


def _free_name(directory: Path, name: str, kind: str, now: datetime, taken: Collection[str] = (),
               encrypted: bool = False) -> tuple[str, datetime]:
    """Return an artifact name for `now` (`encrypted`: `….zst.age`) whose backup id no file in `directory` has yet
    and no name in `taken` has (the bucket's names: a volume lost a second after its last backup, or a clock that
    went back, must not give a new backup the id of one already off-site, encrypted or not), and its timestamp."""
    moment = now.replace(microsecond=0)
    while True:
        names = [artifacts.artifact_name(name, kind, moment, encrypted=flag) for flag in (False, True)]
        if not any(artifact in taken or (directory / artifact).exists()
                   or (directory / (artifact + artifacts.MANIFEST_SUFFIX)).exists() for artifact in names):
            return names[encrypted], moment
        moment += timedelta(seconds=1)


@contextmanager
def kept_snapshot(directory: Path) -> Iterator[Path]:
    """Yield a path in the backup directory (a temporary name of this process) where `run_cycle(keep_snapshot=…)`
    keeps the raw snapshot of an engine that writes one (SQLite), for the table retention that follows the cycle
    to compare rows with; remove it on exit, whatever happened. A run killed meanwhile leaves it to the next
    start's removal of stale temporaries."""
    path = directory / f"{artifacts.temp_prefix()}held-{secrets.token_hex(4)}.snapshot"
    try:
        yield path
    finally:
        files.remove_temporary(path)


def take_backup(source: Source, settings: BackupSettings, cancel: threading.Event,
                reason: str | None = None, keep_snapshot: Path | None = None, flags: Sequence[str] = (),
                elsewhere: Sequence[Backup] = ()) -> dict[str, Any]:
    """Write one checked, compressed backup of `source` into the backup directory; return its manifest.
    `reason` (e.g. "pre-restore" for the safety backup before a restore) goes into the manifest as `reason`.
    With `keep_snapshot` (see kept_snapshot), the raw snapshot file of an engine that writes one is moved there
    once it passed its check, instead of being removed. `flags` (jobs.guard) go into the manifest's `flags`, and
    `shrunk` joins them when the backup is under a tenth of the set's previous one, here or `elsewhere` (the
    bucket's backups of the set); the manifest's `warnings` then say so for people (not written to the file).

    One pass: the snapshot's stream is read in chunks, each chunk goes to the engine's check and to zstd, and
    the compressed bytes are hashed on their way into a temporary file. Only when the check has passed is the
    manifest written (also under a temporary name); then the artifact is renamed into place, the manifest last.
    Raise SourceError, SpaceError, IntegrityError, StorageError or Cancelled; nothing that looks like a backup
    is left behind when it raises.
    """
    directory = settings.backup_dir
    local = LocalDestination(directory)
    with stage("preflight"):
        files.ensure_dir(directory)
        previous, _ = list_backups(local, BackupSet(source.name(), source.kind), cancel)
        estimate = source.estimate_size()
        check_space(directory, estimate, previous, settings.min_free, source.snapshot_on_disk)

    started = time.monotonic()
    artifact, created_at = _free_name(directory, source.name(), source.kind, datetime.now(timezone.utc),
                                      {backup.artifact for backup in elsewhere}, encrypted=bool(settings.recipients))
    final = directory / artifact
    temp_artifact = artifacts.temp_path(final)
    temp_manifest = artifacts.temp_path(directory / (artifact + artifacts.MANIFEST_SUFFIX))
    try:
        log.info("backup.snapshot", artifact=artifact, estimate_bytes=estimate)
        with stage("snapshot"):
            workdir = Path(tempfile.mkdtemp(prefix=artifacts.snapshot_dir_prefix(source.name()), dir=directory))
        try:
            compressed, passed, details = _snapshot_and_compress(source, workdir, temp_artifact, final, settings, cancel,
                                                                 keep_snapshot)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        flags, warnings = list(flags), []
        before = guard.previous([*previous, *elsewhere], datetime.now(timezone.utc))
        how = guard.shrank(compressed.raw_size, before, guard.held(details))
        if guard.EMPTY_ALLOWED not in flags and how:  # one warning is enough
            assert before is not None
            flags.append(guard.SHRUNK)
            warnings.append(f"the backup {artifacts.backup_id(artifact)} {how}; it is kept, flagged shrunk: `restore "
                            "--latest` passes over it and the backups from before stay until you delete them")
            log.warning("backup.shrunk", artifact=artifact, raw_size=compressed.raw_size, previous=before.id,
                        previous_raw_size=before.manifest.get("raw_size"), detail=warnings[-1])
        manifest = {
            **{key: value for key, value in details.items() if key != "versions"},
            "version": MANIFEST_VERSION,
            "id": artifacts.backup_id(artifact),
            "artifact": artifact,
            "created_at": utc_iso(created_at),
            "source": {**source.describe(), **identity.of(source, settings.backup_dir)},  # who made it: see jobs.identity
            "format": {"kind": source.kind, "compression": "zstd", "level": settings.compression_level, "frame_checksum": True},
            "size": compressed.size,
            "sha256": compressed.sha256,
            "raw_size": compressed.raw_size,
            "verified": {"check": passed, "result": "ok", "checked_at": utc_iso(datetime.now(timezone.utc))},
            "versions": {
                "worker": settings.worker_version,
                "zstandard": zstandard.__version__,
                "libzstd": ".".join(map(str, zstandard.ZSTD_VERSION)),
                **source.versions(),
                **details.get("versions", {}),
            },
            "duration_s": round(time.monotonic() - started, 3),
            **({"reason": reason} if reason else {}),
            **({"flags": flags} if flags else {}),
            **({"encryption": encryption.manifest_field(settings.recipients)} if settings.recipients else {}),
        }
        with stage("publish"):
            write_manifest(temp_manifest, manifest)
            publish.publish_backup(temp_artifact, temp_manifest, final)
        return {**manifest, **({"warnings": warnings} if warnings else {})}
    finally:
        temp_artifact.unlink(missing_ok=True)
        temp_manifest.unlink(missing_ok=True)


def _snapshot_and_compress(source: Source, workdir: Path, temp_artifact: Path, final: Path, settings: BackupSettings,
                           cancel: threading.Event,
                           keep_snapshot: Path | None = None) -> tuple[compression.Compressed, str, dict[str, Any]]:
    """Stream a snapshot of `source` through its check and zstd into `temp_artifact` (the artifact `final`
    under its temporary name); return the compressed file's facts, what the check passed and the engine's extra
    manifest fields. With `keep_snapshot`, move the raw snapshot file (if the engine wrote one) there once it
    passed."""
    with stage("snapshot"), source.snapshot(workdir, cancel) as snap:
        try:
            with stage("compress", writing=final), files.create_private(temp_artifact) as out:
                if settings.recipients:  # compressed, then encrypted in the same pass; the file's bytes are hashed
                    sealed = compression.HashingWriter(out, cancel)
                    with encryption.encrypting(sealed, settings.recipients) as plain:
                        compressed = compression.compress_stream(snap.stream, plain, settings.compression_level,
                                                                 cancel, size=snap.size, feed=snap.check.feed)
                    out.flush()
                    compressed = replace(compressed, size=sealed.size, sha256=sealed.digest.hexdigest())
                else:
                    compressed = compression.compress_stream(snap.stream, out, settings.compression_level, cancel,
                                                             size=snap.size, feed=snap.check.feed)
            passed = snap.check.finish()
            if keep_snapshot is not None and snap.raw_path is not None:
                with stage("snapshot"):
                    os.replace(snap.raw_path, keep_snapshot)  # the same volume: a rename, no copy
            return compressed, passed, dict(snap.details)
        except IntegrityError as error:
            raise IntegrityError(
                f"the snapshot of {source.describe()['database']} failed its check: {error}; "
                "the source database may be damaged, so no backup was kept"
            ) from None
        finally:
            snap.check.close()


def plan_retention(destination: Destination, policy: retention.Policy, now: datetime | None = None,
                   backup_set: BackupSet | None = None, cancel: threading.Event | None = None,
                   fresh: str | None = None, cache: IntactCache | None = None) -> retention.Plan:
    """Return the retention plan for a destination's backups of `backup_set` (every set if None) now, its
    keep_min slots proven intact (SHA-256, cached in `cache`) when it deletes anything; `fresh` is the backup this
    cycle just wrote (it does not move the anchor of ages). Files that are not whole backups, and backups dated
    in the future, are logged."""
    now = now or datetime.now(timezone.utc)
    backups, problems = list_backups(destination, backup_set, cancel)
    for problem in problems:
        log.warning("retention.skipped_file", location=destination.location, problem=problem)
    for backup in selection.future(backups, now):
        log.warning("backup.future_dated", location=destination.location, backup=backup.id,
                    created_at=backup.manifest.get("created_at"),
                    detail="dated more than 5 minutes in the future: the clock was wrong when it was written; it is "
                           "never the newest, never fresh and never fills a BACKUP_KEEP_MIN slot")
    cache = cache or IntactCache(None, now)
    try:
        return retention.prove_slots(backups, policy, now, lambda backup: cache.intact(destination, backup, cancel), fresh)
    finally:
        cache.save()


def apply_retention(destination: Destination, policy: retention.Policy, now: datetime | None = None,
                    backup_set: BackupSet | None = None, offsite_copies: set[str] | None = None,
                    cancel: threading.Event | None = None, fresh: str | None = None,
                    cache: IntactCache | None = None) -> retention.Plan:
    """Plan retention on a destination's backups of `backup_set` and carry the plan out; return it."""
    result = plan_retention(destination, policy, now, backup_set, cancel, fresh, cache)
    return carry_out(destination, result, offsite_copies, cancel)


def carry_out(destination: Destination, result: retention.Plan, offsite_copies: set[str] | None = None,
              cancel: threading.Event | None = None) -> retention.Plan:
    """Delete what `result` says to delete, logging each deletion with its reason; return the plan.

    With `offsite_copies` (the artifact names known to be in the bucket), deleting a backup that is not among
    them is logged as a warning: the rules still apply (the volume must not fill up), but that copy is gone.
    """
    for backup in result.delete:
        if offsite_copies is not None and backup.artifact not in offsite_copies:
            log.warning("retention.delete_not_offsite", location=destination.location, backup=backup.id,
                        reason=result.why(backup.id), detail="this backup was never uploaded; it is deleted by the usual rules")
        else:
            log.info("retention.delete", location=destination.location, backup=backup.id, reason=result.why(backup.id))
    retention.apply(destination, result, cancel)
    log.info("retention.done", location=destination.location, kept=len(result.keep), deleted=len(result.delete))
    return result


def remove_stale(local: LocalDestination, sets: Collection[str] | None = None) -> None:
    """Settle what killed runs of the backup sets `sets` (every set when None) left behind in the backup
    directory, and log it; temporaries that belong to no set are removed once their writer is gone. Call under
    the lock of each of `sets`: another set's running backup is never touched.

    Artifacts without a manifest are re-proved or removed first (their leftover manifests are temporaries)."""
    for orphan in publish.recover_orphans(local.directory, sets):
        level = log.warning if orphan["action"] == "kept" else log.info
        level("backup.orphan_artifact", **orphan)
    removed = local.remove_stale_temporaries(sets)
    if removed:
        log.info("backup.stale_temporaries_removed", files=removed)


def run_cycle(source: Source, settings: BackupSettings, cancel: threading.Event,
              keep_snapshot: Path | None = None) -> Cycle:
    """A whole backup cycle: the backup, the off-site copies if configured, then retention. Return what it did
    (jobs.cycle.Cycle), with what the backup holds (`holds`, PostgreSQL's snapshot), and the raw snapshot at
    `keep_snapshot` (SQLite, see kept_snapshot), for the table retention that may follow.

    Before the snapshot, the set's backups on the volume and in the bucket are listed once: an empty source must
    not follow backups that hold data (`jobs.guard`), and the set must be this source's (`ownership.require_own_set`); both
    fail at stage preflight with nothing written. The backup's flags and warnings (`jobs.guard`) join the fields.

    Everything after the backup looks at the source's backup set only. Local retention runs even when the upload
    failed: the volume must not fill up while the bucket is away. It follows the usual rules (the newest
    `keep_min` verified backups always stay), deleting a backup the bucket lacks is logged as a warning, and
    the cycle still fails at stage upload; the next cycle uploads what the bucket lacks.
    """
    local = LocalDestination(settings.backup_dir)
    backup_set = BackupSet(source.name(), source.kind)
    remove_stale(local, {source.name()})  # the caller holds this set's lock, and only this one
    here, there, unknown = ownership.set_backups(settings, backup_set, cancel)
    # An empty source first: its refusal says how to bring the data back, the one thing to do then (a new volume
    # off Railway is also a new installation, which the owner check would refuse with less useful words).
    what = identity.describe(identity.of(source, None), where=False)
    flags, warning = guard.require_data(source, what, here, there, settings.allow_empty, datetime.now(timezone.utc),
                                        identity.of(source, settings.backup_dir),
                                        identity.adopted(settings.backup_dir, backup_set), unknown)
    ownership.require_own_set(source, settings, backup_set, here, there)
    manifest = take_backup(source, settings, cancel, keep_snapshot=keep_snapshot, flags=flags, elsewhere=there)
    log.info("backup.written", artifact=manifest["artifact"], size=manifest["size"], raw_size=manifest["raw_size"])
    cycle = Cycle(backup=manifest["id"], artifact=manifest["artifact"], size=manifest["size"],
                  raw_size=manifest["raw_size"], verified=manifest["verified"]["check"], holds=manifest.get(HOLDS),
                  flags=list(manifest.get("flags") or []),
                  warnings=[*([warning] if warning else []), *manifest.get("warnings", [])])
    failure: str | None = None
    offsite_copies: set[str] | None = None
    if settings.remote is not None:
        offsite_copies = set()
        try:
            cycle.uploaded = offsite.sync(local, settings.remote, cancel, settings.remote_policy,
                                          backup_set=backup_set, present=offsite_copies, fresh=cycle.backup,
                                          encrypted_only=bool(settings.recipients))
            if settings.remote_policy is not None and settings.remote_policy.prunes:
                cycle.pruned_remote = _retention(settings.remote, settings.remote_policy, backup_set, settings, None,
                                                 cancel, cycle.backup)
        except RemoteError as error:  # listing the bucket too: the cycle's off-site copy failed, stage upload
            failure = f"{error}; the local backup {cycle.backup} is kept and the next cycle uploads it"
            log.warning("retention.despite_upload_failure", detail="local retention runs so that the volume does not fill up")
    cycle.pruned = _retention(local, settings.policy, backup_set, settings, offsite_copies, cancel, cycle.backup)
    cycle.time_anchor = time_anchor(local, backup_set, cycle.backup, cancel)
    if failure is not None:
        raise CycleUploadFailed(failure, cycle)
    return cycle


def time_anchor(local: LocalDestination, backup_set: BackupSet, fresh: str, cancel: threading.Event) -> datetime:
    """Return what time it is for the retention that follows a cycle: the newest sound backup of the set before the
    one this cycle wrote (`fresh`), or now if that is earlier (jobs.retention.anchor). Table retention counts ages
    from it as backup retention does, so one cycle run while the clock is a year ahead deletes no row by age."""
    backups, _ = list_backups(local, backup_set, cancel)
    return retention.anchor(backups, datetime.now(timezone.utc), fresh=fresh)


def _retention(destination: Destination, policy: retention.Policy, backup_set: BackupSet, settings: BackupSettings,
               offsite_copies: set[str] | None, cancel: threading.Event, fresh: str) -> list[str]:
    """Apply retention to one destination under the deletion lock; return the ids deleted. If a verify or
    restore holds the lock, delete nothing this time and say why. `fresh` is the backup this cycle wrote."""
    cache = IntactCache(settings.backup_dir / CACHE_NAME)
    try:
        with settings.deletion_lock() if settings.deletion_lock is not None else nullcontext():
            plan = apply_retention(destination, policy, backup_set=backup_set, offsite_copies=offsite_copies,
                                   cancel=cancel, fresh=fresh, cache=cache)
    except BusyError as error:
        log.warning("retention.deferred", location=destination.location, reason=str(error))
        return []
    return [backup.id for backup in plan.delete]
