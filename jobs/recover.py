"""Restore at start (RESTORE_ON_START=if-missing): bring a lost database back from the newest intact backup of
its set, before the catch-up backup and the app can touch it.

- Lost: the engine says (`Source.missing`): a SQLite file that does not exist or holds 0 bytes, a PostgreSQL
  database without user tables. Or emptied (the caller tells, `over`): tables without a row while the set's
  newest backup records rows, what an app that creates its schema at start leaves. A server that does not answer is asked again for SERVER_WAIT_S (a database
  service may start after the worker), then `wait_missing` gives up naming the limit.
- Which backup: the set's backups on the volume and in the bucket, merged by id (a backup in both places is
  read from the volume; its copy in the bucket is tried when the volume's proves damaged), chosen by
  `jobs.selection.latest` for a restore, with fallback: a damaged newest backup is passed over with a note,
  since the point is to bring the data back. A backup is proven whole before it is chosen (size and SHA-256,
  decompression with its frame checksum, the engine's own check), exactly as every restore proves it, and the
  proven raw file is what is restored. Backups of other sets are never listed.
- Into what: SQLite gets a new file at the database's path (the file its links lead to; the links stay), 0600,
  unpacked beside it under a temporary name and renamed in when whole; a 0-byte file there is replaced, and
  `-wal`/`-shm`/`-journal` leftovers refuse the restore (they may hold the only copy of the last commits: they
  are named, never deleted). PostgreSQL is restored into the empty database with the options of
  `restore --target-url` (one transaction), after checking once more that it has no user tables: it holds
  nothing, so no safety backup is taken.
- Whose backup (`own_backups`): one made by this source (`jobs.identity`), by a source it took over, or by none
  recorded; another source's only when that source looks gone: its newest backup in the set is older than
  FRESHNESS_LIMIT (a service recreated after a lost project). A live neighbour's backup is never restored at
  start: with nothing else to restore the start fails naming both sources and the deliberate way (`refusal`).
  Off Railway a lost volume loses the installation id too: a new one does not make the backups foreign.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
import tempfile
import threading
import time
from typing import Any

import structlog

from jobs import encryption, identity, offsite, restore as restoring, selection
from jobs.artifacts import BackupSet, temp_prefix
from jobs.backups import Backup, list_backups
from jobs.destinations import Destination
from jobs.destinations.local import LocalDestination
from jobs.engines import Source
from jobs.errors import Cancelled, IntegrityError, NotFound, SourceError, Unreachable, WrongIdentity
from jobs.selection import Purpose

log = structlog.get_logger("jobs.recover")

SERVER_WAIT_S = 60.0  # how long a server that does not answer is asked again before the start fails
RETRY_EVERY_S = 1.0


@dataclass(frozen=True)
class Copy:
    """One place a backup can be read from."""

    backup: Backup  # as that place's manifest and listing describe it
    destination: Destination

    @property
    def location(self) -> str:
        return self.destination.location


@dataclass(frozen=True)
class Found:
    """The backups of one set across the volume and the bucket."""

    backups: list[Backup]  # one per id, newest first: the copy selection judges (the volume's, when it is whole)
    copies: dict[str, list[Copy]]  # per id, every place it can be read from, the volume first
    problems: list[str]  # files of the set that are not backups (no manifest, an invalid one), one note each


@dataclass(frozen=True)
class Restored:
    """What a restore at start restored, from where, into what."""

    backup: Backup
    location: str  # local or s3
    target: str  # the file or database written, for people
    checks: list[str]
    notes: list[str]  # the backups passed over, and why
    safety: str | None = None  # the copy of the database restored over (SQLite, `over`)


@dataclass(frozen=True)
class _Proven:
    copy: Copy
    raw: Path
    checks: list[str]


def wait_missing(source: Source, cancel: threading.Event, on_wait: Callable[[Exception, float], None] | None = None,
                 limit_s: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], bool] | None = None) -> str | None:
    """Given a source, return why its database counts as lost (`Source.missing`), or None when it holds data.

    While the server does not answer (Unreachable), ask again every RETRY_EVERY_S for `limit_s` (default
    SERVER_WAIT_S) at most, telling `on_wait` each time (the error, the seconds waited). `sleep(seconds)` waits
    and returns True when the worker is stopping (default: `cancel.wait`). Raise Unreachable naming the limit
    when the server never answered, SourceError when it refused us, Cancelled when the worker is stopping."""
    limit = SERVER_WAIT_S if limit_s is None else limit_s
    pause = sleep or cancel.wait
    began = clock()
    while True:
        if cancel.is_set():
            raise Cancelled("the worker is stopping; nothing was restored")
        try:
            return source.missing()
        except Unreachable as error:
            waited = clock() - began
            if waited >= limit:
                raise Unreachable(f"the database {source.target()} did not answer within {limit:g} s of the worker's "
                                  f"start ({str(error).rstrip('.')}), so it could not be checked for a restore at start",
                                  stage="connect") from None
            if on_wait is not None:
                on_wait(error, waited)
            if pause(max(0.0, min(RETRY_EVERY_S, limit - waited))):
                raise Cancelled("the worker is stopping; nothing was restored") from None


def gather(local: LocalDestination, remote: Destination | None, backup_set: BackupSet,
           cancel: threading.Event) -> Found:
    """Given the volume, the bucket (None without S3_BUCKET) and a set, return the set's backups in both, merged by
    id. Raise ListError (or DownloadError for a manifest) or StorageError if a place cannot be listed: the newest
    backup cannot be known then."""
    copies: dict[str, list[Copy]] = {}
    problems: list[str] = []
    for destination in (local, remote):
        if destination is None:
            continue
        backups, notes = list_backups(destination, backup_set, cancel)
        problems.extend(f"{_where(destination)}: {note}" for note in notes)
        for backup in backups:
            copies.setdefault(backup.id, []).append(Copy(backup, destination))
    judged = [next((copy.backup for copy in found if not copy.backup.damage), found[0].backup) for found in copies.values()]
    judged.sort(key=lambda backup: (backup.created_at, backup.id), reverse=True)
    return Found(judged, copies, problems)


@dataclass(frozen=True)
class Live:
    """Another source that still backs up into the set, with its newest backup there."""

    newest: Backup
    maker: dict[str, str]


def own_backups(found: Found, ours: Mapping[str, str], adopted: Sequence[Mapping[str, Any]], limit: timedelta,
                now: datetime) -> tuple[Found, list[Live]]:
    """Given the set's backups (`gather`), this source's identity and the sources it took over, return the
    backups a restore at start may take (see the module docstring) and the live sources whose backups it may not,
    each once, newest first. A maker is this source when `identity.same_recovered` says so (a recreated server's
    new cluster, a lost volume's new installation id do not count); another maker is gone when its newest
    backup in the set is older than `limit`."""
    newest_of: list[Live] = []  # per foreign maker, its newest backup (found.backups is newest first)
    kept: list[Backup] = []
    for backup in found.backups:
        theirs = identity.recorded(backup.manifest.get("source"))
        if theirs is None or identity.same_recovered(theirs, ours) or identity.taken_over(theirs, backup.created_at, adopted):
            kept.append(backup)
            continue
        maker = next((live for live in newest_of if identity.same(live.maker, theirs)), None)
        if maker is None:
            maker = Live(backup, theirs)
            newest_of.append(maker)
        if now - maker.newest.created_at > limit:  # that source looks gone: a service recreated after a lost project
            kept.append(backup)
    live = [maker for maker in newest_of if now - maker.newest.created_at <= limit]
    ids = {backup.id for backup in kept}
    return Found(kept, {key: copies for key, copies in found.copies.items() if key in ids}, found.problems), live


def passed_over_live(live: Sequence[Live], chosen: Backup) -> list[str]:
    """Return a note for each live source whose newest backup is newer than the one restored at start."""
    return [f"passed over {maker.newest.id}: it was made by {identity.describe(maker.maker)}, another source that still "
            "backs up into this set" for maker in live if maker.newest.created_at > chosen.created_at]


def refusal(live: Sequence[Live], found: Found, ours: Mapping[str, str], limit: timedelta, now: datetime) -> str:
    """Return why nothing is restored at start when the set holds only the backups of live sources, as one clause
    naming both sources and the deliberate ways out."""
    newest = live[0].newest
    bucket = "" if any(isinstance(copy.destination, LocalDestination) for copy in found.copies.get(newest.id, [])) \
        else " --from-s3"
    return (f"the set's backups were made by another source that still backs up into it: its newest, {newest.id}, "
            f"{_age(now - newest.created_at)} old (FRESHNESS_LIMIT is {_age(limit)}), by {identity.describe(live[0].maker)}, "
            f"while this worker backs up {identity.describe(ours)}; a restore at start never takes a live source's "
            "backup: to restore it deliberately, set RESTORE_ON_START=never, run "
            f"`python -m worker restore {newest.id}{bucket} --yes` and restart the service; or give this service a set "
            "of its own with BACKUP_NAME (or the bucket a prefix of its own with S3_PREFIX)")


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= 2 * size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def restore_missing(source: Source, found: Found, workdir: Path, cancel: threading.Event,
                    now: datetime | None = None, over: bool = False,
                    identities: Sequence[encryption.Identity] = ()) -> Restored:
    """Given a source whose database is lost and its set's backups (`gather`), restore the newest intact one
    into it (see the module docstring); downloads and a server's unpacked archive go to `workdir` (the backup
    volume). Return what was restored. `over`: the database is there with tables but no row (an app created its
    schema at start): it is restored over as `restore --yes` does (SQLite: its safety copy first; PostgreSQL:
    `pg_restore --clean`, no safety backup, as there is no row to save), once it is checked again to hold none. Raise NotFound when there is no backup to restore, IntegrityError when
    none is intact (naming each), SourceError or StorageError when the database cannot take it (leftovers beside
    a SQLite file, tables that appeared meanwhile), DownloadError when the bucket cannot be read, Cancelled."""
    backup_set = BackupSet(source.name(), source.kind)
    if not found.backups:
        raise NotFound(f"there is no backup of the set {backup_set} to restore, only files of it that are not backups "
                       f"({'; '.join(found.problems[:3])})")
    target = None if over else source.lost_file()  # a new file (SQLite), else the server itself
    if target is not None:
        _require_room_for(target)
    unpack_in = target.parent if target is not None else workdir
    where = " and ".join(dict.fromkeys(_where(copy.destination) for copies in found.copies.values() for copy in copies))
    with ExitStack() as held:  # each proven raw file stays until the restore is done

        def prove(backup: Backup) -> _Proven:
            copies, failures = found.copies[backup.id], []
            for copy in copies:
                try:
                    return _prove(copy, workdir, unpack_in, cancel, held, identities)
                except WrongIdentity:  # the identity to fix, not damage: no older backup in its place
                    raise
                except (IntegrityError, NotFound) as error:
                    failures.append((f"its copy in {_where(copy.destination)}: " if len(copies) > 1 else "")
                                    + str(error).rstrip("."))
            raise IntegrityError("; ".join(failures))

        chosen, proven, notes = selection.latest(found.backups, Purpose.RESTORE, now or datetime.now(timezone.utc),
                                                 prove, True, where or "the backup directory")
        assert proven is not None
        if chosen.backup_set != backup_set:  # listing is by set; this only guards the promise
            raise SourceError(f"{chosen.id} is a backup of the set {chosen.backup_set}, not of {backup_set}", stage="restore")
        safety = None
        if over:
            if source.has_rows():
                raise SourceError(f"rows appeared in {source.target()} while the backup was fetched (has the app "
                                  "started?), so nothing was restored over them: stop whatever writes to it and start "
                                  "the worker again", stage="restore")
            copy = source.restore(proven.raw, cancel, notify=lambda note: log.warning("restore.note", note=note))
            written, safety = source.target(), (str(copy) if copy is not None else None)
        elif target is not None:
            _require_room_for(target)  # again: nothing may have appeared while the backup was fetched and proven
            restoring.place_new_file(proven.raw, target, empty_ok=True)
            written = str(target)
        else:
            if source.missing() is None:
                raise SourceError(f"tables appeared in {source.target()} while the backup was fetched (has the app "
                                  "started?), so nothing was restored into it: stop whatever writes to it and start the "
                                  "worker again", stage="restore")
            source.restore(proven.raw, cancel, notify=lambda note: log.warning("restore.note", note=note))
            written = source.target()
    return Restored(chosen, proven.copy.location, written, proven.checks, notes, safety)


def _prove(copy: Copy, workdir: Path, unpack_in: Path, cancel: threading.Event, held: ExitStack,
           identities: Sequence[encryption.Identity] = ()) -> _Proven:
    """Read one copy of a backup (download it from the bucket into `workdir`), prove it and unpack its raw
    content in `unpack_in`, which `held` keeps until the restore is done (a download goes once it is unpacked).
    Raise IntegrityError or NotFound if it fails."""
    local = isinstance(copy.destination, LocalDestination)
    with nullcontext(None) if local else _download_dir(workdir) as scratch:
        if scratch is None:
            artifact = copy.destination.path(copy.backup.artifact)
        else:
            artifact = offsite.fetch_verified(copy.destination, copy.backup, scratch, cancel)
        raw, checks = held.enter_context(restoring.proven_raw(artifact, copy.backup, unpack_in, cancel,
                                                              identities=identities))
    return _Proven(copy, raw, checks)


@contextmanager
def _download_dir(workdir: Path) -> Iterator[Path]:
    """Yield a private scratch directory in `workdir` for a download, named as our temporaries are (a killed
    run's is removed by the next one); remove it afterwards."""
    with tempfile.TemporaryDirectory(prefix=temp_prefix() + "restore-", dir=workdir) as scratch:
        yield Path(scratch)


def _require_room_for(target: Path) -> None:
    """Raise SourceError (stage restore) if the new database file `target` cannot be written: a file of data is
    there, or SQLite's leftovers sit beside it (named, never deleted). Create its missing directories."""
    found = restoring.leftovers(target)
    if found:
        one = len(found) == 1
        raise SourceError(f"{', '.join(map(str, found))} {'is' if one else 'are'} beside the missing database {target}; "
                          f"SQLite would read {'it' if one else 'them'} into the restored database and "
                          f"{'it' if one else 'they'} may hold the only copy of the last commits, so nothing was "
                          f"restored: move {'it' if one else 'them'} away yourself (or restore by hand), then start "
                          "the service again", stage="restore")
    if not target.parent.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("restore.created_directory", directory=str(target.parent))
    problem = restoring.new_file_problem(target, empty_ok=True)
    if problem:
        raise SourceError(f"{problem} (it holds data now, so it is not restored over)", stage="restore")


def _where(destination: Destination) -> str:
    return {"s3": "the bucket", "local": "the backup directory"}.get(destination.location, destination.location)
