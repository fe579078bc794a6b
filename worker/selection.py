"""Which backup a verify or restore means, where it lives, and how to get its artifact as a local file.

Selection happens in two steps. First, before any job runs, the backup set: `--source NAME`, else the one
configured set, else BACKUP_NAME, else the only set the location holds; anything ambiguous is a usage error that
names the sets. Then the backup: the id asked for, or the set's newest backup as `jobs.selection` decides it (a
damaged newest one is an error unless --fallback). A backup of another set is never chosen by `--latest`.
"""

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
import errno
from pathlib import Path
import sys
import tempfile

import structlog

from jobs import selection
from jobs.artifacts import BackupSet, parse_id
from jobs.backups import Backup, find, list_backups, sets_in
from jobs.destinations import Destination
from jobs.destinations.local import LocalDestination
from jobs.errors import IntegrityError, NotFound, StorageError
from jobs.selection import Purpose
from jobs.volume import require_usable
from worker.context import Context, UsageError, not_an_id
from worker.lock import shared

log = structlog.get_logger("worker.actions.selection")

def _names(sets: list[BackupSet]) -> str:
    return ", ".join(str(backup_set) for backup_set in sets) or "none"


def _one_named(pool: list[BackupSet], name: str, where: str) -> BackupSet | None:
    """Return the one set of `pool` named `name`, or None when there is none. Raise UsageError when several kinds
    share the name (the backup id says which)."""
    named = [backup_set for backup_set in pool if backup_set.name == name]
    if len(named) > 1:
        raise UsageError(f"{where} holds several sets named {name!r} ({_names(named)}); give the backup id instead of --latest")
    return named[0] if named else None


def choose_set(configured: list[BackupSet], found: list[BackupSet], source_name: str | None,
               backup_name: str | None, where: str) -> BackupSet:
    """Given the configured sets, the sets found at `where`, `--source NAME` and BACKUP_NAME, return the one set
    `--latest` looks at. Raise UsageError when that is ambiguous or unknown, NotFound when there is nothing."""
    if source_name:
        for pool in (configured, found):
            if (named := _one_named(pool, source_name, where)) is not None:
                return named
        raise UsageError(f"there is no backup set {source_name!r} configured or in {where} (sets there: {_names(found)}); check --source")
    if len(configured) == 1:
        return configured[0]
    if configured:
        raise UsageError(f"several backup sets are configured ({_names(configured)}); pass --source NAME to choose one")
    if backup_name:
        if (named := _one_named(found, backup_name, where)) is not None:
            return named
        raise NotFound(f"there are no backups of the set {backup_name!r} (BACKUP_NAME) in {where} (sets there: {_names(found)})")
    if len(found) == 1:
        return found[0]
    if not found:
        raise NotFound(f"there are no backups in {where}; run `python -m worker backup` first")
    raise UsageError(f"{where} holds backups of several sets ({_names(found)}); set BACKUP_NAME or pass --source NAME to choose one")


@dataclass(frozen=True)
class Wanted:
    """What a verify or restore asked for: an id (`ident`), or the newest verified backup of `backup_set`."""

    ident: str | None
    backup_set: BackupSet | None  # for an id: its set when the id names its kind, else None (look in every set)

    def pick(self, destination: Destination, where: str, ctx: Context, fallback: bool = False,
             prove: Callable[[Backup], object] | None = None) -> Backup:
        """Return the backup meant, from the destination's files: the id asked for, or the newest of the set
        (`jobs.selection.latest`: with `fallback`, the newest one that `prove` accepts). Raise NotFound if it is
        not there, IntegrityError naming it when it is known damaged (and, for the latest, no fallback)."""
        backups, problems = list_backups(destination, self.backup_set, ctx.cancel)
        for problem in problems:
            log.warning("selection.skipped_file", location=destination.location, problem=problem)
        if self.ident:
            backup = find(backups, self.ident)
            if backup.damage:
                raise IntegrityError(f"{backup.damage}; that backup is damaged, choose another one (`python -m worker list`)")
            return backup
        of = f"the set {self.backup_set} in {where}"
        backup, _, notes = selection.latest(backups, Purpose.RESTORE, datetime.now(timezone.utc), prove, fallback, of)
        for note in notes:
            log.warning("selection.passed_over", note=note)
            print(f"warning: {note}", file=sys.stderr, flush=True)
        return backup


def wanted(ctx: Context, destination: Destination, where: str, ident: str | None, source_name: str | None) -> Wanted:
    """Resolve the command line into a Wanted. Raise UsageError (exit 2) for an ambiguous or contradictory request."""
    if ident:
        parts = parse_id(ident)
        if parts is None:
            raise UsageError(not_an_id(ident))
        name, kind = parts
        if source_name and name != source_name:
            raise UsageError(f"{ident} belongs to the set {name!r}, not {source_name!r}; drop --source or give an id of that set")
        return Wanted(ident, BackupSet(name, kind) if kind else None)
    found = sets_in(destination, ctx.cancel)
    return Wanted(None, choose_set(ctx.backup_sets(), found, source_name, ctx.config.backup_name, where))


def where(ctx: Context, remote: bool) -> tuple[Destination, str]:
    """Return the destination a verify or restore reads (local, or the bucket with --remote/--from-s3)."""
    if remote:
        destination = ctx.remote()
        if destination is None:
            raise UsageError("--remote and --from-s3 need S3_BUCKET (and its credentials) to be set")
        return destination, destination.url()
    return ctx.local, ctx.local.url()


def workdir(ctx: Context) -> Path:
    """Return the backup directory, created if missing and proven writable: scratch files live on the backup
    volume. Raise StorageError naming the path and the fix."""
    require_usable(ctx.config.backup_dir)
    return ctx.config.backup_dir


def scratch_dir(ctx: Context) -> Path:
    """Return where a verify or restore unpacks a backup: the backup directory, or, when that volume cannot be
    written (a read-only mount of the backups), the system's temporary directory."""
    try:
        return workdir(ctx)
    except StorageError as error:
        fallback = Path(tempfile.gettempdir())
        log.info("selection.scratch_elsewhere", scratch=str(fallback), reason=str(error))
        return fallback


def fetch(ctx: Context, destination: Destination, backup: Backup, scratch: Path) -> Path:
    """Return a local path to the backup's artifact: the file itself when local, else a download into scratch."""
    if isinstance(destination, LocalDestination):
        return destination.path(backup.artifact)
    target = scratch / backup.artifact
    destination.get(backup.artifact, target, ctx.cancel)
    return target


@contextmanager
def reading(ctx: Context, remote: bool) -> Iterator[None]:
    """Hold the backups against retention while a verify or restore reads one: the `retention` lock, shared
    with other readers, which retention needs exclusively before it deletes (see worker.lock). Where the backup
    directory cannot be written (a read-only volume), nothing here can delete either: read without the lock."""
    with ExitStack() as stack:
        try:
            stack.enter_context(shared(ctx.config.backup_dir))
        except OSError as error:
            if not remote and error.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            log.info("selection.unlocked_read", backup_dir=str(ctx.config.backup_dir), reason=error.strerror or str(error))
        yield
