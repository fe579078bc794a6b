"""Which backup a verify or restore means, where it lives, and how to get its artifact as a local file."""

from pathlib import Path

from jobs.artifacts import ensure_dir
from jobs.backups import Backup, find, newest_verified
from jobs.destinations import Destination
from jobs.destinations.local import LocalDestination
from jobs.errors import NotFound
from worker.actions.context import Context, UsageError


def select(backups: list[Backup], wanted: str | None, where: str) -> Backup:
    """Return the backup named `wanted`, or the newest verified one. Raise NotFound if there is none."""
    if wanted:
        return find(backups, wanted)
    newest = newest_verified(backups)
    if newest is not None:
        return newest
    raise NotFound(f"there are no backups in {where}; run `python -m worker backup` first")


def where(ctx: Context, remote: bool) -> tuple[Destination, str]:
    """Return the destination a verify or restore reads (local, or the bucket with --remote/--from-s3)."""
    if remote:
        destination = ctx.remote()
        if destination is None:
            raise UsageError("--remote and --from-s3 need S3_BUCKET (and its credentials) to be set")
        return destination, destination.url()
    return ctx.local, ctx.local.url()


def workdir(ctx: Context) -> Path:
    """Return the backup directory, created if missing: scratch files live on the backup volume."""
    ensure_dir(ctx.config.backup_dir)
    return ctx.config.backup_dir


def fetch(ctx: Context, destination: Destination, backup: Backup, scratch: Path) -> Path:
    """Return a local path to the backup's artifact: the file itself when local, else a download into scratch."""
    if isinstance(destination, LocalDestination):
        return destination.path(backup.artifact)
    target = scratch / backup.artifact
    destination.get(backup.artifact, target, ctx.cancel)
    return target
