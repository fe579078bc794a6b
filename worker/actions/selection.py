"""Which backup a verify or restore means, where it lives, and how to get its artifact as a local file.

Selection happens in two steps. First, before any job runs, the backup set: `--source NAME`, else the one
configured set, else BACKUP_NAME, else the only set the location holds; anything ambiguous is a usage error that
names the sets. Then, inside the job, the backup: the id asked for, or the set's newest verified backup. A backup
of another set is never chosen by `--latest`.
"""

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
import re

import structlog

from jobs.backups import Backup, BackupSet, find, list_backups, newest_verified, sets_in
from jobs.destinations import Destination
from jobs.destinations.local import LocalDestination
from jobs.errors import NotFound
from jobs.volume import require_usable
from worker.actions.context import Context, UsageError
from worker.lock import shared

log = structlog.get_logger("worker.actions.selection")

_ID = re.compile(r"^(?P<name>[A-Za-z0-9_-]+)-(?P<stamp>\d{8}T\d{6}Z)(?:\.(?P<kind>[a-z]+))?(?:\.zst)?(?:\.json)?$")


def _names(sets: list[BackupSet]) -> str:
    return ", ".join(str(backup_set) for backup_set in sets) or "none"


def choose_set(configured: list[BackupSet], found: list[BackupSet], source_name: str | None,
               backup_name: str | None, where: str) -> BackupSet:
    """Given the configured sets, the sets found at `where`, `--source NAME` and BACKUP_NAME, return the one set
    `--latest` looks at. Raise UsageError when that is ambiguous or unknown, NotFound when there is nothing."""
    if source_name:
        for pool in (configured, found):
            named = [backup_set for backup_set in pool if backup_set.name == source_name]
            if len(named) == 1:
                return named[0]
            if named:
                raise UsageError(f"{where} holds several sets named {source_name!r} ({_names(named)}); give the backup id instead of --latest")
        raise UsageError(f"there is no backup set {source_name!r} configured or in {where} (sets there: {_names(found)}); check --source")
    if len(configured) == 1:
        return configured[0]
    if configured:
        raise UsageError(f"several backup sets are configured ({_names(configured)}); pass --source NAME to choose one")
    if backup_name:
        named = [backup_set for backup_set in found if backup_set.name == backup_name]
        if len(named) == 1:
            return named[0]
        if named:
            raise UsageError(f"{where} holds several sets named {backup_name!r} ({_names(named)}); give the backup id instead of --latest")
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

    def pick(self, destination: Destination, where: str, ctx: Context) -> Backup:
        """Return the backup meant, from the destination's files. Raise NotFound if it is not there."""
        backups, problems = list_backups(destination, self.backup_set, ctx.cancel)
        for problem in problems:
            log.warning("selection.skipped_file", location=destination.location, problem=problem)
        if self.ident:
            return find(backups, self.ident)
        newest = newest_verified(backups)
        if newest is None:
            raise NotFound(f"there are no verified backups of the set {self.backup_set} in {where}; run `python -m worker backup` first")
        return newest


def wanted(ctx: Context, destination: Destination, where: str, ident: str | None, source_name: str | None) -> Wanted:
    """Resolve the command line into a Wanted. Raise UsageError (exit 2) for an ambiguous or contradictory request."""
    if ident:
        parts = _ID.match(ident)
        if parts is None:
            raise UsageError(f"{ident!r} is not a backup id like app-20261122T020000Z.sqlite; run `python -m worker list` to see them")
        if source_name and parts["name"] != source_name:
            raise UsageError(f"{ident} belongs to the set {parts['name']!r}, not {source_name!r}; drop --source or give an id of that set")
        return Wanted(ident, BackupSet(parts["name"], parts["kind"]) if parts["kind"] else None)
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
    with other readers, which retention needs exclusively before it deletes (see worker.lock). Reading from the
    bucket where the backup directory cannot be used, there is no retention of this volume to hold off."""
    with ExitStack() as stack:
        try:
            stack.enter_context(shared(ctx.config.backup_dir))
        except OSError:
            if not remote:
                raise
        yield
