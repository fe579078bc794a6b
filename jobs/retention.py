"""Retention: decide first (a pure function), then act and log the plan.

Rules, in order, within each backup set: the newest `keep_min` verified backups are kept however old (so the
last good copy always survives); anything younger than `retention_days` is kept; the rest goes. With no age
limit nothing goes. Sets are planned apart: one set's backups never count toward another's `keep_min`.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
import threading

from jobs.backups import Backup, BackupSet, delete_backup
from jobs.destinations import Destination


@dataclass(frozen=True)
class Policy:
    retention_days: int | None  # None keeps every backup
    keep_min: int

    def __post_init__(self) -> None:
        if self.keep_min < 1:
            raise ValueError("keep_min must be at least 1: the newest verified backup is always kept")


@dataclass(frozen=True)
class Plan:
    keep: list[Backup] = field(default_factory=list)
    delete: list[Backup] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    def describe(self) -> list[dict[str, str]]:
        """Return one row per backup, newest first: id, action and reason."""
        rows = [(b, "keep") for b in self.keep] + [(b, "delete") for b in self.delete]
        rows.sort(key=lambda row: row[0].created_at, reverse=True)
        return [{"id": b.id, "action": action, "reason": self.reasons[b.id]} for b, action in rows]


def plan(backups: list[Backup], policy: Policy, now: datetime) -> Plan:
    """Given backups, a policy and the time, return what to keep, what to delete, and why for each; each backup
    set is planned on its own."""
    result = Plan()
    by_set: dict[BackupSet | None, list[Backup]] = defaultdict(list)
    for backup in backups:
        by_set[backup.backup_set].append(backup)
    for members in by_set.values():
        _plan_set(members, policy, now, result)
    return result


def _plan_set(backups: list[Backup], policy: Policy, now: datetime, result: Plan) -> None:
    """Add the decisions for the backups of one set to `result`."""
    cutoff = now - timedelta(days=policy.retention_days) if policy.retention_days is not None else None
    verified_seen = 0
    for backup in sorted(backups, key=lambda b: (b.created_at, b.id), reverse=True):
        age_days = (now - backup.created_at).total_seconds() / 86400
        if backup.verified and verified_seen < policy.keep_min:
            verified_seen += 1
            result.keep.append(backup)
            result.reasons[backup.id] = f"one of the newest {policy.keep_min} verified backups (BACKUP_KEEP_MIN)"
            continue
        if cutoff is None:
            result.keep.append(backup)
            result.reasons[backup.id] = "no age limit is set"
        elif backup.created_at >= cutoff:
            result.keep.append(backup)
            result.reasons[backup.id] = f"{age_days:.1f} days old, within {policy.retention_days} days"
        else:
            result.delete.append(backup)
            state = "verified" if backup.verified else "never verified"
            result.reasons[backup.id] = (
                f"{age_days:.1f} days old, older than {policy.retention_days} days ({state}), "
                f"and the {verified_seen} newest verified backups are kept"
            )


def apply(destination: Destination, result: Plan, cancel: threading.Event | None = None) -> list[str]:
    """Delete what the plan says to delete; return the ids deleted."""
    deleted = []
    for backup in result.delete:
        delete_backup(destination, backup, cancel)
        deleted.append(backup.id)
    return deleted
