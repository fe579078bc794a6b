"""How fresh the backups are, how full their volume is, and the last failure: what `status`, `/healthz`,
`/metrics` and the log share, computed from the backup directory (the truth) and the catalog (history)."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
import shutil
from typing import TYPE_CHECKING, Any

import structlog

from jobs.artifacts import ARTIFACT_NAME, utc_iso
from jobs import selection
from jobs.backups import Backup
from jobs.selection import Purpose
from worker.catalog import Catalog
from worker.runs import Outcome

if TYPE_CHECKING:
    from worker.config import Config

log = structlog.get_logger("worker.freshness")


def configured_sets(config: "Config", cwd: Path) -> list[str]:
    """Return the names of the configured backup sets, the main source's first; BACKUP_NAME alone when no source
    is configured; else []."""
    if config.sources:
        return [spec.name for spec in config.sources]
    return [config.backup_name] if config.backup_name else []


def set_of(backup: Backup) -> str:
    """Return the backup set a backup belongs to: the `<name>` of its artifact name."""
    match = ARTIFACT_NAME.match(backup.artifact)
    return match["name"] if match else ""


@dataclass(frozen=True)
class SetFreshness:
    name: str
    newest: Backup | None
    age_s: float | None
    fresh: bool
    future: tuple[str, ...] = ()  # ids of backups dated in the future: never newest, never fresh

    def describe(self) -> dict[str, Any] | None:
        if self.newest is None:
            return None
        return {"id": self.newest.id, "created_at": self.newest.manifest["created_at"], "age_s": int(self.age_s or 0),
                "size": self.newest.size}


@dataclass(frozen=True)
class Freshness:
    sets: list[SetFreshness]
    limit: timedelta

    @property
    def fresh(self) -> bool:
        """Every configured set has a verified backup younger than the limit."""
        return bool(self.sets) and all(state.fresh for state in self.sets)

    @property
    def deciding(self) -> SetFreshness | None:
        """The set that decides health: one without a backup, else the one whose newest backup is oldest."""
        if not self.sets:
            return None
        return min(self.sets, key=lambda s: (s.newest is not None, -(s.age_s or 0.0)))


def evaluate(backups: list[Backup], sets: list[str], limit: timedelta, now: datetime | None = None) -> Freshness:
    """Given the backups on the volume and the configured set names, return each set's newest sound backup (as
    `jobs.selection` decides it: backups dated in the future never count), its age and whether it is within
    `limit`. With no configured set, every set found on the volume counts."""
    now = now or datetime.now(timezone.utc)
    names = list(sets) or sorted({set_of(backup) for backup in backups})
    states = []
    for name in names:
        members = [b for b in backups if set_of(b) == name]
        newest = selection.newest(members, Purpose.FRESHNESS, now)
        age = max(0.0, (now - newest.created_at).total_seconds()) if newest else None
        ahead = tuple(b.id for b in selection.future(members, now))
        states.append(SetFreshness(name, newest, age, age is not None and age <= limit.total_seconds(), ahead))
    return Freshness(states, limit)


# --- disk -----------------------------------------------------------------------------------------------------

def disk_usage(path: Path) -> dict[str, Any]:
    """Return the use of the volume holding `path` (or its nearest existing parent): `path`, `used_percent`
    (as `df` counts it: used / (used + available)), `total_bytes` and `free_bytes`; None values if unreadable."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError:
        return {"path": str(path), "used_percent": None, "total_bytes": None, "free_bytes": None}
    usable = usage.used + usage.free
    percent = round(usage.used / usable * 100, 1) if usable else 0.0
    return {"path": str(path), "used_percent": percent, "total_bytes": usage.total, "free_bytes": usage.free}


def disk_warning(usage: dict[str, Any], warn_percent: int) -> str | None:
    """Return a sentence when the volume is fuller than `warn_percent`, else None."""
    used = usage.get("used_percent")
    if used is None or used <= warn_percent:
        return None
    return (f"the backup volume {usage['path']} is {used:.0f}% full (DISK_WARN_PERCENT={warn_percent}); "
            "free space or grow the volume before backups start failing")


def disk_listener(config: "Config") -> Callable[[str, Outcome], None]:
    """Return a run listener that logs a warning after each backup when the backup volume is too full."""

    def listener(event: str, outcome: Outcome) -> None:
        if event != "finished" or outcome.job != "backup":
            return
        usage = disk_usage(config.backup_dir)
        warning = disk_warning(usage, config.disk_warn_percent)
        if warning:
            log.warning("disk.nearly_full", path=usage["path"], used_percent=usage["used_percent"],
                        warn_percent=config.disk_warn_percent, detail=warning)

    return listener


# --- status ---------------------------------------------------------------------------------------------------

def catalog_time(moment: datetime | None) -> str | None:
    """Return a catalog time as ISO 8601 UTC; SQLite hands back naive datetimes, which we always wrote in UTC."""
    if moment is None:
        return None
    return utc_iso(moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))


def last_failure(catalog: Catalog) -> dict[str, Any] | None:
    """Return the newest failed run of any job from the catalog, or None."""
    rows = catalog.history(outcome="failed", limit=1)
    if not rows:
        return None
    row = rows[0]
    return {"job": row["job"], "run_id": row["run_id"], "started_at": catalog_time(row["started_at"]),
            "finished_at": catalog_time(row["finished_at"]), "stage": row["stage"], "reason": row["reason"]}


def status_extras(config: "Config", catalog: Catalog) -> dict[str, Any]:
    """Return what `status` adds for issue 11: `last_failure` and `disk` (with `warn_percent` and `warning`)."""
    usage = disk_usage(config.backup_dir)
    warning = disk_warning(usage, config.disk_warn_percent)
    return {
        "last_failure": last_failure(catalog),
        "disk": {"path": usage["path"], "used_percent": usage["used_percent"],
                 "warn_percent": config.disk_warn_percent, "warning": warning},
    }


def status_lines(report: dict[str, Any]) -> list[str]:
    """Return the lines `status` prints for `last_failure` and `disk`."""
    lines = []
    failure = report.get("last_failure")
    if failure:
        where = f" at {failure['stage']}" if failure.get("stage") else ""
        lines.append(f"last failure: {failure['job']} ({failure['started_at']}){where}: {failure['reason']}")
    disk = report.get("disk") or {}
    if disk.get("used_percent") is not None:
        state = f" WARNING: {disk['warning']}" if disk.get("warning") else ""
        lines.append(f"disk: {disk['path']} {disk['used_percent']:.0f}% used (warn above {disk['warn_percent']}%){state}")
    return lines
