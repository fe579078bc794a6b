"""Who a backup set belongs to, as a backup cycle asks before it writes: the set's backups on the volume and in
the bucket, the refusal to write into a set another source made (`jobs.identity`), and `backup --take-over`."""

from collections.abc import Sequence
import threading

import structlog

from jobs import identity
from jobs.artifacts import BackupSet
from jobs.backups import Backup, list_backups
from jobs.destinations.local import LocalDestination
from jobs.engines import Source
from jobs.errors import RemoteError
from jobs.settings import BackupSettings


log = structlog.get_logger("jobs.pipeline")


def set_backups(settings: BackupSettings, backup_set: BackupSet,
                cancel: threading.Event) -> tuple[list[Backup], list[Backup], str | None]:
    """Return the set's backups on the volume and in the bucket ([] without one), and why the bucket could not be
    listed (None when it could, or without one). That only warns here: the upload of this cycle will say why,
    and the empty-source guard counts the bucket as holding data."""
    here, _ = list_backups(LocalDestination(settings.backup_dir), backup_set, cancel)
    there: list[Backup] = []
    unknown = None
    if settings.remote is not None:
        try:
            there, _ = list_backups(settings.remote, backup_set, cancel)
        except RemoteError as error:
            unknown = str(error)
            log.warning("backup.owner_unchecked", location=settings.remote.location, reason=unknown)
    return here, there, unknown


def require_own_set(source: Source, settings: BackupSettings, backup_set: BackupSet, here: Sequence[Backup],
                    there: Sequence[Backup]) -> None:
    """Raise SourceError (stage preflight) when the set's newest backup, on the volume (`here`) or in the bucket
    (`there`), was made by another source that this one did not take over (`jobs.identity`): two services sharing
    a directory or a bucket under one set name would otherwise choose, count and delete each other's backups."""
    ours = identity.of(source, settings.backup_dir)
    taken = identity.adopted(settings.backup_dir, backup_set)
    identity.require_own(here, ours, taken, backup_set, LocalDestination(settings.backup_dir).url())
    if settings.remote is not None:
        identity.require_own(there, ours, taken, backup_set, settings.remote.url())


def take_over(source: Source, settings: BackupSettings, backup_set: BackupSet, cancel: threading.Event) -> list[str]:
    """Make `source` the owner of its set (`backup --take-over`): adopt the maker of the set's newest backup on the
    volume and in the bucket when it is another source; return who was taken over, for people."""
    ours = identity.of(source, settings.backup_dir)
    done = []
    here, there, _ = set_backups(settings, backup_set, cancel)
    for found in (here, there):
        owner = identity.owner(found)
        if owner is not None and not identity.same(owner[1], ours):
            identity.adopt(settings.backup_dir, backup_set, owner[1])
            done.append(identity.describe(owner[1]))
    return done
