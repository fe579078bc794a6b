"""Freshness: how old the newest sound backup of each configured set is, on the volume and, with S3_BUCKET, in
the bucket (which then decides), judged against FRESHNESS_LIMIT. The status model (`status.py`) is built on it."""

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
import threading
import time
from typing import TYPE_CHECKING, Any

from jobs import artifacts, selection
from jobs.artifacts import BackupSet
from jobs.backups import Backup, list_backups
from jobs.errors import JobError
from jobs.selection import Purpose

if TYPE_CHECKING:
    from jobs.destinations import Destination
    from worker.config import Config


def configured_sets(config: "Config", cwd: Path) -> list[str]:
    """Return the names of the configured backup sets, the main source's first; BACKUP_NAME alone when no source
    is configured; else []."""
    if config.sources:
        return [spec.name for spec in config.sources]
    return [config.backup_name] if config.backup_name else []


def set_of(backup: Backup) -> str:
    """Return the backup set a backup belongs to: the `<name>` of its artifact name."""
    owner = artifacts.set_of(backup.artifact)
    return owner.name if owner else ""


@dataclass(frozen=True)
class Offsite:
    """The bucket as listed: the backups there (`jobs.backups.list_backups`: an artifact and its manifest, both
    there), or None with `error` when it could not be listed (the off-site age is then unknown)."""

    backups: list[Backup] | None
    error: str | None = None
    listed_at: float | None = None  # time.monotonic() of the listing, when there was one


@dataclass(frozen=True)
class SetFreshness:
    name: str
    newest: Backup | None  # the newest sound backup on the volume
    age_s: float | None
    fresh: bool  # judged on the off-site copy when a bucket is configured, else on the volume's
    future: tuple[str, ...] = ()  # ids of backups dated in the future: never newest, never fresh
    offsite: bool = False  # a bucket is configured: freshness is judged there
    offsite_newest: Backup | None = None  # the newest sound backup in the bucket
    offsite_age_s: float | None = None
    offsite_error: str | None = None  # why the bucket's side is unknown

    def describe(self) -> dict[str, Any] | None:
        return _describe(self.newest, self.age_s)

    def describe_offsite(self) -> dict[str, Any] | None:
        return _describe(self.offsite_newest, self.offsite_age_s)

    @property
    def judged_age_s(self) -> float | None:
        """The age health is judged by: the off-site copy's with a bucket, else the volume's."""
        return self.offsite_age_s if self.offsite else self.age_s

    @property
    def state(self) -> str:
        """`ok`, `stale`, or `offsite_unknown` (a bucket is configured and could not be listed)."""
        if self.fresh:
            return "ok"
        return "offsite_unknown" if self.offsite and self.offsite_error else "stale"

    def why_stale(self, limit: str) -> str | None:
        """Return one clause saying why the set is not fresh (`limit` as written), or None when it is."""
        if self.fresh:
            return None
        if self.offsite and self.offsite_error:
            return f"the off-site copy cannot be told: {self.offsite_error}"
        if self.offsite and self.offsite_newest is None:
            local = " (only on the volume: uploads are failing)" if self.newest is not None else ""
            return f"there is no verified backup in the bucket{local}"
        if self.offsite:
            failing = " while the volume has a newer one (uploads are failing)" if (
                self.newest is not None and self.newest.created_at > self.offsite_newest.created_at) else ""
            return f"the newest off-site copy is older than {limit}{failing}"
        return f"no verified backup within {limit}"


def _describe(backup: Backup | None, age_s: float | None) -> dict[str, Any] | None:
    if backup is None:
        return None
    return {"id": backup.id, "created_at": backup.manifest["created_at"], "age_s": int(age_s or 0), "size": backup.size,
            "encrypted": selection.is_encrypted(backup)}


@dataclass(frozen=True)
class Freshness:
    sets: list[SetFreshness]
    limit: timedelta

    @property
    def fresh(self) -> bool:
        """Every configured set has a verified backup younger than the limit (in the bucket, when one is set)."""
        return bool(self.sets) and all(state.fresh for state in self.sets)

    @property
    def deciding(self) -> SetFreshness | None:
        """The set that decides health: one without a backup (or whose off-site side is unknown), else the one
        whose newest backup is oldest."""
        if not self.sets:
            return None
        return min(self.sets, key=lambda s: (s.judged_age_s is not None, -(s.judged_age_s or 0.0)))


def _newest(backups: list[Backup], now: datetime) -> tuple[Backup | None, float | None]:
    newest = selection.newest(backups, Purpose.FRESHNESS, now)
    return newest, (max(0.0, (now - newest.created_at).total_seconds()) if newest else None)


def evaluate(backups: list[Backup], sets: list[str], limit: timedelta, now: datetime | None = None,
             offsite: Offsite | None = None) -> Freshness:
    """Given the backups on the volume and the configured set names, return each set's newest sound backup (as
    `jobs.selection` decides it: backups dated in the future never count), its age and whether it is within
    `limit`. With `offsite` (S3_BUCKET is set: what the bucket holds), each set is also judged there, and that
    decides: a set whose uploads fail is stale however fresh its local backups, and one whose bucket cannot be
    listed is not fresh either. With no configured set, every set found on the volume (or in the bucket) counts."""
    now = now or datetime.now(timezone.utc)
    remote = offsite.backups if offsite is not None and offsite.backups is not None else []
    names = list(sets) or sorted({set_of(backup) for backup in [*backups, *remote]})
    states = []
    for name in names:
        members = [b for b in backups if set_of(b) == name]
        newest, age = _newest(members, now)
        ahead = tuple(b.id for b in selection.future(members, now))
        if offsite is None:
            states.append(SetFreshness(name, newest, age, age is not None and age <= limit.total_seconds(), ahead))
            continue
        there, there_age = _newest([b for b in remote if set_of(b) == name], now)
        fresh = offsite.backups is not None and there_age is not None and there_age <= limit.total_seconds()
        states.append(SetFreshness(name, newest, age, fresh, ahead, offsite=True, offsite_newest=there,
                                   offsite_age_s=there_age, offsite_error=offsite.error if offsite.backups is None else None))
    return Freshness(states, limit)


# --- the bucket -----------------------------------------------------------------------------------------------

LIST_ATTEMPTS = 2  # freshness asks the bucket quickly: a person or a scrape is waiting
LIST_CONNECT_S = 3.0
LIST_READ_S = 10.0


def offsite_destination(config: "Config") -> "Destination | None":
    """Return the bucket as freshness lists it (few retries, short timeouts), or None when S3_BUCKET is unset."""
    settings = config.s3
    if settings is None:
        return None
    from jobs.destinations.s3 import Retry, S3Destination  # boto3 costs ~80 ms of start-up: only with a bucket

    return S3Destination(settings.bucket, settings.prefix, settings.endpoint_url, settings.region,
                         retry=Retry(attempts=LIST_ATTEMPTS, first_delay=0.5, max_delay=1.0),
                         client_options={"max_attempts": LIST_ATTEMPTS, "connect_timeout": LIST_CONNECT_S,
                                         "read_timeout": LIST_READ_S})


def list_offsite(destination: "Destination", backup_sets: "list[BackupSet] | None",
                 cancel: threading.Event | None = None) -> Offsite:
    """Given the bucket and the configured backup sets (None: every set), return what it holds of them; never
    raise for the bucket's sake: a listing that fails is an Offsite with its error (one sentence, no secret)."""
    found: list[Backup] = []
    try:
        for backup_set in backup_sets if backup_sets is not None else [None]:
            found += list_backups(destination, backup_set, cancel)[0]
    except JobError as error:
        return Offsite(None, str(error), None)
    except Exception as error:  # a bucket that cannot be listed must not break status or a scrape
        return Offsite(None, f"the bucket cannot be listed: {type(error).__name__}", None)
    return Offsite(found, None, time.monotonic())
