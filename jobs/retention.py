"""Retention: decide first (a pure function), then prove what the decision relies on, then act and log the plan.

Rules, within each backup set: the newest `keep_min` sound backups (see `jobs.selection`: a passed check, an
artifact that matches its manifest, not dated in the future) are kept however old, so the last good copies always
survive; anything within `retention_days` is kept (0 turns that window off); the rest goes. Ages are counted from
the anchor: the newest sound backup, or now if that is earlier (restic's `--keep-within`). Within a backup cycle
the backup just written does not move the anchor (`fresh`), so a cycle run while the clock is a month ahead cannot
age out a month of backups. With no age limit nothing goes. Sets are planned apart: one set's backups never count
toward another's `keep_min`.

Before anything is deleted, `prove_slots` re-checks the SHA-256 of the backups that fill the keep_min slots:
a slot is only ever filled by an intact copy, and a deletion never leaves fewer than keep_min of them. A slot
holder that cannot be read now (the bucket is away) defers every deletion of that plan.
"""

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
import threading

from jobs import selection
from jobs.artifacts import BackupSet
from jobs.backups import Backup, delete_backup
from jobs.destinations import Destination
from jobs.selection import Purpose


@dataclass(frozen=True)
class Policy:
    retention_days: int | None  # None keeps every backup; 0 turns the window off (only keep_min keeps)
    keep_min: int

    def __post_init__(self) -> None:
        if self.keep_min < 1:
            raise ValueError("keep_min must be at least 1: the newest verified backup is always kept")


@dataclass(frozen=True)
class Plan:
    keep: list[Backup] = field(default_factory=list)
    delete: list[Backup] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    slots: list[Backup] = field(default_factory=list)  # the sound backups that fill the keep_min slots

    def describe(self) -> list[dict[str, str]]:
        """Return one row per backup, newest first: id, action and reason."""
        rows = [(b, "keep") for b in self.keep] + [(b, "delete") for b in self.delete]
        rows.sort(key=lambda row: row[0].created_at, reverse=True)
        return [{"id": b.id, "action": action, "reason": self.reasons[b.id]} for b, action in rows]


def plan(backups: Sequence[Backup], policy: Policy, now: datetime, damaged: Sequence[str] = (),
         fresh: str | None = None) -> Plan:
    """Given backups, a policy, the time, the ids known damaged (SHA-256) and the id of a backup just written
    (`fresh`, which does not move the anchor), return what to keep, what to delete, and why for each; each backup
    set is planned on its own."""
    result = Plan()
    by_set: dict[BackupSet | None, list[Backup]] = defaultdict(list)
    for backup in backups:
        by_set[backup.backup_set].append(backup)
    for members in by_set.values():
        _plan_set(members, policy, now, damaged, fresh, result)
    return result


def anchor(backups: Sequence[Backup], now: datetime, damaged: Sequence[str] = (), fresh: str | None = None) -> datetime:
    """Return the time ages are counted from: the newest sound backup (other than `fresh`), or `now` if earlier.
    Sound as freshness counts it: a flagged or pre-restore backup still proves the worker ran then, so ages move
    on while the newest backups are flagged (they only fill no BACKUP_KEEP_MIN slot)."""
    counted = [b for b in selection.sound(backups, Purpose.FRESHNESS, now, damaged) if b.id != fresh]
    return min(now, counted[0].created_at) if counted else now


def _plan_set(backups: list[Backup], policy: Policy, now: datetime, damaged: Sequence[str], fresh: str | None,
              result: Plan) -> None:
    """Add the decisions for the backups of one set to `result`."""
    since = anchor(backups, now, damaged, fresh)
    window = policy.retention_days
    cutoff = since - timedelta(days=window) if window else None
    slots = selection.sound(backups, Purpose.RETENTION, now, damaged)[:policy.keep_min]
    result.slots.extend(slots)
    slot_ids = {backup.id for backup in slots}
    measured = "" if since == now else f" (counted from the newest sound backup, {since.isoformat()})"
    always = always_kept(backups, now)
    for backup in sorted(backups, key=lambda b: (b.created_at, b.id), reverse=True):
        age_days = (since - backup.created_at).total_seconds() / 86400
        if backup.id in slot_ids:
            result.keep.append(backup)
            result.reasons[backup.id] = f"one of the newest {policy.keep_min} sound backups (BACKUP_KEEP_MIN)"
            continue
        if backup.id in always:
            result.keep.append(backup)
            result.reasons[backup.id] = always[backup.id]
            continue
        unsound = selection.problem(backup, now, damaged, Purpose.RETENTION)
        if window is None:
            result.keep.append(backup)
            result.reasons[backup.id] = "no age limit is set"
        elif cutoff is not None and backup.created_at >= cutoff:
            result.keep.append(backup)
            result.reasons[backup.id] = (f"{age_days:.1f} days old{measured}, within {policy.retention_days} days"
                                         + (f"; not counted toward BACKUP_KEEP_MIN: {unsound}" if unsound else ""))
        else:
            result.delete.append(backup)
            state = f"not sound: {unsound}" if unsound else "sound"
            older = f"older than {window} days" if window else "the age window is off (0 days)"
            result.reasons[backup.id] = (f"{age_days:.1f} days old{measured}, {older} ({state}), "
                                         f"and the {len(slots)} newest sound backups are kept")


def always_kept(backups: Sequence[Backup], now: datetime) -> dict[str, str]:
    """Return the backups of one set that retention never deletes, whatever the policy, with why: the newest
    backup of the set (whatever its state: the one just written, flagged or not, stays until a newer one exists),
    the newest safety backup taken before a restore, and every backup dated in the future (the clock was wrong
    when it was written or is wrong now: nothing is decided about it until an operator looks)."""
    found: dict[str, str] = {}
    for backup in selection.future(backups, now):
        found[backup.id] = ("dated in the future: kept and never counted until the clock passes its date (check the "
                            "clock of the machine that wrote it)")
    present = sorted((b for b in backups if b.id not in found), key=lambda b: (b.created_at, b.id), reverse=True)
    if present:
        found.setdefault(present[0].id, "the newest backup of the set")
    safety = [backup for backup in present if backup.manifest.get("reason") == selection.PRE_RESTORE]
    if safety:
        found.setdefault(safety[0].id, "the newest safety backup taken before a restore")
    return found


def prove_slots(backups: Sequence[Backup], policy: Policy, now: datetime, intact: Callable[[Backup], bool | None],
                fresh: str | None = None) -> Plan:
    """Plan, and when the plan deletes anything, re-check with `intact` (a SHA-256 check, perhaps cached: True
    intact, False damaged, None could not be read now) every backup that fills a keep_min slot; a damaged one loses
    its slot and the plan is made again, until every slot holder is proven. Return that plan. A plan that deletes
    nothing reads nothing; a slot holder that could not be read keeps everything this time."""
    damaged: list[str] = []
    proven: set[str] = set()
    while True:
        result = plan(backups, policy, now, damaged, fresh)
        if not result.delete:
            return result
        unproven = [backup for backup in result.slots if backup.id not in proven]
        if not unproven:
            return result
        for backup in unproven:
            verdict = intact(backup)
            if verdict is None:
                return _deferred(result, backup)
            if verdict:
                proven.add(backup.id)
            else:
                damaged.append(backup.id)


def _deferred(result: Plan, unreadable: Backup) -> Plan:
    """Return `result` with nothing deleted: a slot holder could not be re-checked, so no deletion may rely on it."""
    why = f"kept this time: {unreadable.id}, which it relies on, could not be re-checked now"
    reasons = {**result.reasons, **{backup.id: f"{result.reasons[backup.id]}; {why}" for backup in result.delete}}
    return Plan(keep=[*result.keep, *result.delete], delete=[], reasons=reasons, slots=result.slots)


def apply(destination: Destination, result: Plan, cancel: threading.Event | None = None) -> list[str]:
    """Delete what the plan says to delete; return the ids deleted."""
    deleted = []
    for backup in result.delete:
        delete_backup(destination, backup, cancel)
        deleted.append(backup.id)
    return deleted
