"""Retention: decide first (a pure function), then prove what the decision relies on, then act and log the plan.

A backup is kept when any rule keeps it, and every rule that does is named (`Plan.reasons`):
- `newest N`: the newest `keep_min` sound backups (see `jobs.selection`: a passed check, an artifact that matches
  its manifest, not dated in the future, not a safety backup, not flagged), however old (restic's `--keep-last`);
- `within Nd of newest`: the age window, `retention_days` counted back from the anchor, the newest sound backup,
  or now if that is earlier (restic's `--keep-within`); 0 turns it off; None (no window, no tier) keeps all;
- the tiers (`jobs.tiers`): the newest sound backup of each of the last N hours, days, ISO weeks, months and
  years that hold one, on the wall clock of the policy's time zone (restic's `--keep-daily` …);
- safety backups taken before a restore are outside the tiers: kept `safety_days` from their creation, the newest
  one always; the newest backup of the set and backups dated in the future are always kept (`always_kept`).

Within a backup cycle the backup just written (`fresh`) neither moves the anchor nor fills a tier's period (it is
kept as the newest backup of the set, and counts from the next cycle on), so a cycle run while the clock is a year
ahead ages nothing out and pushes no holder out. Sets are planned apart: one set's backups never fill another's
slot or period.

Before anything is deleted, `prove_slots` re-checks the SHA-256 of every backup the deletions rely on: the
`keep_min` slot holders, the tier holders of each period a deleted backup falls in, and every holder of a tier that
a deleted backup would reach were one of them damaged (`jobs.tiers.relied_on`). One found damaged loses its place
and the plan is made again (the next sound backup of its period takes it), until all are proven; one that cannot be
read now (the bucket is away) defers every deletion of that plan.
"""

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
import threading
from zoneinfo import ZoneInfo

from jobs import selection, tiers as periods
from jobs.artifacts import BackupSet
from jobs.backups import Backup, delete_backup
from jobs.destinations import Destination
from jobs.selection import Purpose
from jobs.tiers import Tiers

SAFETY_DAYS = 7  # how long safety backups are kept when no window is given


@dataclass(frozen=True)
class Policy:
    retention_days: int | None  # None keeps every backup (unless tiers are set); 0 turns the window off
    keep_min: int
    tiers: Tiers = Tiers()
    zone: ZoneInfo = ZoneInfo("UTC")  # the wall clock the tiers' periods are read on (BACKUP_TIMEZONE)
    safety_days: int = SAFETY_DAYS  # how long a safety backup taken before a restore is kept from its creation

    def __post_init__(self) -> None:
        if self.keep_min < 1:
            raise ValueError("keep_min must be at least 1: the newest verified backup is always kept")

    @property
    def prunes(self) -> bool:
        """Whether this policy ever deletes anything (an age window or a tier is set)."""
        return self.retention_days is not None or bool(self.tiers)

    def describe(self) -> str:
        """Return the policy in one line: `newest 3, within 7d of newest, daily 7, weekly 4 (Europe/Berlin)`."""
        if not self.prunes:
            return "keeps every backup (no age window and no tier is set)"
        rules = [f"newest {self.keep_min}"]
        if self.retention_days:
            rules.append(f"within {self.retention_days}d of newest")
        if self.tiers:
            rules.append(f"{self.tiers.describe()} ({self.zone.key})")
        return ", ".join(rules) + f"; safety backups {self.safety_days}d"


@dataclass(frozen=True)
class Plan:
    keep: list[Backup] = field(default_factory=list)
    delete: list[Backup] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)  # every rule that keeps a backup (none: it goes)
    notes: dict[str, str] = field(default_factory=dict)  # what else an operator should know about a backup
    slots: list[Backup] = field(default_factory=list)  # the sound backups the deletions rely on (to prove)
    tiers: dict[str, int] = field(default_factory=dict)  # how many backups each rule keeps: {"daily": 7, …}

    def why(self, ident: str) -> str:
        """Return in one line why a backup stays or goes."""
        note = self.notes.get(ident)
        kept = "; ".join(self.reasons.get(ident, []))
        if kept:
            return f"{kept} ({note})" if note else kept
        return f"nothing keeps it ({note})" if note else "nothing keeps it"

    def describe(self, location: str | None = None) -> list[dict[str, object]]:
        """Return one row per backup, newest first: {"id", "location", "keep", "reasons"}, `reasons` every rule
        that keeps it (empty for a backup that goes)."""
        rows = [(b, True) for b in self.keep] + [(b, False) for b in self.delete]
        rows.sort(key=lambda row: (row[0].created_at, row[0].id), reverse=True)
        return [{"id": b.id, "location": location, "keep": keep, "reasons": list(self.reasons.get(b.id, []))}
                for b, keep in rows]


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
    newest_first = sorted(backups, key=lambda b: (b.created_at, b.id), reverse=True)
    counted = next((b for b in newest_first if b.id != fresh and selection.problem(b, now, damaged, Purpose.FRESHNESS) is None), None)
    return min(now, counted.created_at) if counted else now


def _plan_set(backups: list[Backup], policy: Policy, now: datetime, damaged: Sequence[str], fresh: str | None,
              result: Plan) -> None:
    """Add the decisions for the backups of one set to `result`."""
    since = anchor(backups, now, damaged, fresh)
    judged = selection.judge(backups, Purpose.RETENTION, now, damaged)
    sound = selection.sound(backups, Purpose.RETENTION, now, damaged, judged)
    local = periods.clock(backups, policy.zone) if policy.tiers else {}
    reasons: dict[str, list[str]] = defaultdict(list)
    counts = result.tiers
    slots = sound[:policy.keep_min]
    for backup in slots:
        reasons[backup.id].append(f"newest {policy.keep_min}")
    counts["newest"] = counts.get("newest", 0) + len(slots)
    # The backup a cycle just wrote fills no period in that cycle (as it moves no anchor): one cycle run while the
    # clock is a year ahead must not push the oldest holders out; from the next cycle on it counts.
    filling = [backup for backup in sound if backup.id != fresh]
    held = list(periods.holders(filling, policy.tiers, local))
    for holder in held:
        reasons[holder.backup.id].append(holder.reason)
        counts[holder.tier] = counts.get(holder.tier, 0) + 1
    window = policy.retention_days
    cutoff = since - timedelta(days=window) if window else None
    safety_cutoff = since - timedelta(days=policy.safety_days)
    for backup in backups:
        if not policy.prunes:
            reasons[backup.id].append("no age limit is set")
        elif backup.manifest.get("reason") == selection.PRE_RESTORE:
            if backup.created_at >= safety_cutoff:
                reasons[backup.id].append(f"safety backup taken before a restore, within {policy.safety_days}d")
        elif cutoff is not None and backup.created_at >= cutoff:
            reasons[backup.id].append(f"within {window}d of newest")
            counts["within"] = counts.get("within", 0) + 1
    for backup, why in always_kept(backups, now).items():
        reasons[backup].append(why)
    measured = "" if since == now else f", counted from the newest sound backup, {since.isoformat()}"
    deleted = []
    for backup in sorted(backups, key=lambda b: (b.created_at, b.id), reverse=True):
        unsound = judged[backup.id]
        result.reasons[backup.id] = reasons.get(backup.id, [])
        if result.reasons[backup.id]:
            result.keep.append(backup)
            if unsound and backup.manifest.get("reason") != selection.PRE_RESTORE:
                result.notes[backup.id] = f"fills no slot or period: {unsound}"
            continue
        deleted.append(backup)
        age_days = (since - backup.created_at).total_seconds() / 86400
        result.notes[backup.id] = f"{age_days:.1f} days old{measured}; " + (f"not sound: {unsound}" if unsound else "sound")
    result.delete.extend(deleted)
    relied = {backup.id: backup for backup in [*slots, *periods.relied_on(deleted, filling, held, local)]}
    result.slots.extend(relied.values())


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
    intact, False damaged, None could not be read now) every backup the deletions rely on (`Plan.slots`: the
    keep_min slots, and the tier holders of the periods the deleted backups fall in); a damaged one loses its
    place and the plan is made again, until every one relied on is proven. Return that plan. A plan that deletes
    nothing reads nothing; one relied on that could not be read keeps everything this time."""
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
    why = f"kept this time: {unreadable.id}, which this plan relies on, could not be re-checked now"
    reasons = {**result.reasons, **{backup.id: [why] for backup in result.delete}}
    return Plan(keep=[*result.keep, *result.delete], delete=[], reasons=reasons, notes=result.notes, slots=result.slots,
                tiers=result.tiers)


def apply(destination: Destination, result: Plan, cancel: threading.Event | None = None) -> list[str]:
    """Delete what the plan says to delete; return the ids deleted."""
    deleted = []
    for backup in result.delete:
        delete_backup(destination, backup, cancel)
        deleted.append(backup.id)
    return deleted
