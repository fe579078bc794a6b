"""Retention tiers (grandfather-father-son), as restic's `forget --keep-hourly/daily/weekly/monthly/yearly`: for
each of the last N periods that hold a sound backup, the newest sound backup of that period is kept.

Periods are read on the wall clock of the configured time zone (BACKUP_TIMEZONE): a day is a calendar day however
long (23 or 25 hours on the days clocks change), a week is an ISO week (Monday to Sunday, numbered as ISO 8601
numbers them, so 2026-12-31 falls in 2026-W53), a month a calendar month. An hour is a wall-clock hour *and* its
UTC offset: when clocks fall back, 02:00-03:00 happens twice, and those are two hours, not one. Periods without
a backup do not count (a week the worker was down uses none of the N weeks).

Only the order and the dates of the backups given are used: this module never reads a file or the clock.
"""

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from zoneinfo import ZoneInfo

from jobs.backups import Backup

TIERS = ("hourly", "daily", "weekly", "monthly", "yearly")


@dataclass(frozen=True)
class Tiers:
    """How many periods of each tier to keep (0: the tier is off)."""

    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    def __post_init__(self) -> None:
        for each in fields(self):
            if getattr(self, each.name) < 0:
                raise ValueError(f"keep {each.name} must be 0 or more")

    def active(self) -> list[tuple[str, int]]:
        """Return the tiers that keep anything, as (name, periods), shortest period first."""
        return [(name, getattr(self, name)) for name in TIERS if getattr(self, name) > 0]

    def __bool__(self) -> bool:
        return bool(self.active())

    def describe(self) -> str:
        """Return the tiers as `hourly 24, daily 7`, or "" when none is set."""
        return ", ".join(f"{name} {count}" for name, count in self.active())


def period(tier: str, local: datetime) -> tuple[int, ...]:
    """Return the key of the period of `tier` that the local (zone-aware) time `local` falls in: two times fall in
    the same period exactly when their keys are equal."""
    if tier == "hourly":
        offset = local.utcoffset()
        return local.year, local.month, local.day, local.hour, int(offset.total_seconds()) if offset else 0
    if tier == "daily":
        return local.year, local.month, local.day
    if tier == "weekly":
        return tuple(local.isocalendar())[:2]
    if tier == "monthly":
        return local.year, local.month
    if tier == "yearly":
        return (local.year,)
    raise ValueError(f"unknown retention tier {tier!r}; use one of {', '.join(TIERS)}")


def label(tier: str, local: datetime) -> str:
    """Return the period of `tier` that `local` falls in as an operator says it: `2026-12-04 13:00+01:00`
    (hourly), `2026-12-04` (daily), `2026-W49` (weekly), `2026-12` (monthly), `2026` (yearly)."""
    if tier == "weekly":
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    if tier == "hourly":
        offset = local.strftime("%z")
        return f"{local:%Y-%m-%d %H}:00{offset[:3]}:{offset[3:5]}"
    return local.strftime({"daily": "%Y-%m-%d", "monthly": "%Y-%m", "yearly": "%Y"}[tier])


@dataclass(frozen=True)
class Holder:
    """One backup a tier keeps: the newest sound backup of its period."""

    tier: str
    label: str  # the period, as `label` writes it
    key: tuple[int, ...]  # the period, as `period` keys it
    backup: Backup

    @property
    def reason(self) -> str:
        return f"{self.tier} {self.label}"


def local_time(when: datetime, zone: ZoneInfo) -> datetime:
    """Return `when` on the zone's clock; a date no zone can show (year 1 west of UTC, from an odd manifest) stays
    in UTC rather than breaking the plan."""
    try:
        return when.astimezone(zone)
    except (OverflowError, ValueError):
        return when


def clock(backups: Iterable[Backup], zone: ZoneInfo) -> dict[str, datetime]:
    """Return each backup's time on the zone's clock, by id (computed once per plan)."""
    return {backup.id: local_time(backup.created_at, zone) for backup in backups}


def holders(sound: Sequence[Backup], tiers: Tiers, local: dict[str, datetime]) -> Iterator[Holder]:
    """Given the sound backups of one set, newest first, and their `clock`, yield every backup a tier keeps, with
    its period: for each tier, the newest backup of each of the newest N periods that hold one."""
    for tier, count in tiers.active():
        yield from _tier_holders(tier, count, ((backup, local[backup.id]) for backup in sound))


def _tier_holders(tier: str, count: int, newest_first: Iterable[tuple[Backup, datetime]]) -> Iterator[Holder]:
    last: tuple[int, ...] | None = None
    kept = 0
    for backup, local in newest_first:
        if kept == count:
            return
        key = period(tier, local)
        if key != last:
            last = key
            kept += 1
            yield Holder(tier, label(tier, local), key, backup)


def relied_on(deleted: Sequence[Backup], sound: Sequence[Backup], held: Sequence[Holder],
              local: dict[str, datetime]) -> list[Backup]:
    """Given what a plan deletes (newest first), the sound backups the tiers were filled from (newest first) and
    the tiers' holders, return the holders those deletions rely on, to be proven intact before they happen:
    - the holder of every period a deleted backup falls in (it stands in for the backup deleted), and
    - every holder of a tier that a deleted backup would hold a period of if the tier were longer: were one of
      those holders damaged, the tier would reach one period further back, to that backup.
    Periods follow each other in time, so each tier is read only as far as an answer needs."""
    found: dict[str, Backup] = {}
    gone = {backup.id for backup in deleted}
    for tier in dict.fromkeys(holder.tier for holder in held):
        mine = [holder for holder in held if holder.tier == tier]
        periods = {holder.key: holder.backup for holder in mine}
        floor = min(backup.created_at for backup in periods.values())
        for backup in deleted:
            holder = periods.get(period(tier, local[backup.id]))
            if holder is not None:
                found.setdefault(holder.id, holder)
            elif backup.created_at < floor:
                break
        if _next_in_line_goes(tier, sound, periods, gone, local):
            found.update((holder.backup.id, holder.backup) for holder in mine)
    return list(found.values())


def _next_in_line_goes(tier: str, sound: Sequence[Backup], periods: dict[tuple[int, ...], Backup], gone: set[str],
                       local: dict[str, datetime]) -> bool:
    """Return whether a deleted backup is the newest sound backup of a period beyond the tier's last one."""
    last: tuple[int, ...] | None = None
    for backup in sound:
        key = period(tier, local[backup.id])
        if key == last or key in periods:
            last = key
            continue
        last = key
        if backup.id in gone:
            return True
    return False
