"""Disk: how full the backup volume is, the warning above DISK_WARN_PERCENT (logged after each backup, shown by
`status` and `/healthz`) and the used share `/metrics` exports."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
import shutil
from typing import TYPE_CHECKING, Any

import structlog

from worker.runs import Outcome

if TYPE_CHECKING:
    from worker.config import Config

log = structlog.get_logger("worker.freshness")  # the logger name its events have always had


@dataclass(frozen=True)
class Disk:
    """The backup volume as measured once: its use (None when unreadable) and the warning it earns."""

    path: str
    used_percent: float | None
    warn_percent: int
    warning: str | None

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "used_percent": self.used_percent, "warn_percent": self.warn_percent,
                "warning": self.warning}


def measure(config: "Config") -> Disk:
    """Return the backup volume's use now and its warning (DISK_WARN_PERCENT)."""
    usage = disk_usage(config.backup_dir)
    return Disk(usage["path"], usage["used_percent"], config.disk_warn_percent,
                disk_warning(usage, config.disk_warn_percent))


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
