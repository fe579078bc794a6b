"""What a backup cycle is asked to do, as the worker's configuration gives it: where backups go, how hard to
compress, the retention policies, the bucket, the free space to leave and the guard's permission. Built once per
cycle by worker.context.Context.settings; read by jobs.pipeline and jobs.ownership."""

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs import retention
from jobs.destinations import Destination
from jobs.encryption import Recipient
from jobs.volume import MinFree


@dataclass(frozen=True)
class BackupSettings:
    backup_dir: Path
    compression_level: int
    policy: retention.Policy
    remote: Destination | None = None
    remote_policy: retention.Policy | None = None
    worker_version: str = "0"
    min_free: MinFree | None = None  # BACKUP_MIN_FREE: what a backup must leave free on the backup volume
    allow_empty: bool = False  # BACKUP_ALLOW_EMPTY: an empty source may follow backups that hold data (jobs.guard)
    # Held while retention deletes; raises BusyError while a verify or restore reads the backups (see worker.lock).
    deletion_lock: Callable[[], AbstractContextManager[Any]] | None = None
    # BACKUP_ENCRYPTION_RECIPIENTS: with any, every artifact is compressed then encrypted to them (`….zst.age`).
    recipients: tuple[Recipient, ...] = ()
