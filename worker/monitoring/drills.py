"""The last restore drill of each backup set (issue 22), read from the catalog: what `status`, `/healthz` and
`/metrics` show of drills, and what makes a worker unhealthy (`drill_failed`) when its last drill failed.

A drill run records one row per set in its `sources` field (worker/actions/drill.py); the newest run that drilled
a set decides that set's state, found by a query of that set's own (the runs whose details name it), however many
drills of other sets came since. Runs a dead process left (`interrupted`) and runs that stopped before any set are
not drills of a set.
"""

from dataclasses import dataclass
from datetime import datetime, timezone
import json
from typing import Any

from worker.catalog import Catalog, catalog_time

JOB = "drill"
LOOKBACK = 50  # drill runs read to find the drilled sets when no configured sets are named


@dataclass(frozen=True)
class SetDrill:
    """One set's last drill: its outcome, when it ended, the backup drilled and, when it failed, where and why."""

    name: str
    outcome: str
    finished_at: datetime | None
    backup: str | None
    stage: str | None
    reason: str | None
    compared: str | None

    @property
    def failed(self) -> bool:
        return self.outcome == "failed"

    def age_s(self, now: datetime) -> float | None:
        return (now - self.finished_at).total_seconds() if self.finished_at else None

    def sentence(self) -> str:
        """Return why this set's last drill makes the worker unhealthy, in one clause."""
        return f"the last drill of {self.name} ({self.backup or 'no backup'}) failed at {self.stage}: {self.reason}"

    def describe(self, now: datetime) -> dict[str, Any]:
        age = self.age_s(now)
        return {"outcome": self.outcome, "finished_at": catalog_time(self.finished_at), "backup": self.backup,
                "age_s": int(age) if age is not None else None, "stage": self.stage, "reason": self.reason,
                "compared": self.compared}


def _aware(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=timezone.utc) if moment is not None and moment.tzinfo is None else moment


def _sources(row: dict[str, Any]) -> dict[str, Any]:
    """Return what a drill run's catalog row records per set (its details' `sources`), {} when unreadable."""
    try:
        details = json.loads(row.get("details") or "{}")
    except ValueError:
        return {}
    rows = details.get("sources") if isinstance(details, dict) else None
    return rows if isinstance(rows, dict) else {}


def _set_drill(row: dict[str, Any], name: str) -> SetDrill | None:
    """Return the drill of the set `name` that the catalog row of a drill run records, or None."""
    if row.get("outcome") not in ("succeeded", "failed"):
        return None
    item = _sources(row).get(name)
    if not isinstance(item, dict) or item.get("outcome") not in ("succeeded", "failed"):
        return None
    return SetDrill(name, item["outcome"], _aware(row.get("finished_at")), item.get("backup"), item.get("stage"),
                    item.get("reason"), item.get("compared"))


def last_drill(catalog: Catalog, name: str) -> SetDrill | None:
    """Return the last drill of the set `name`: the newest drill run whose details record a drill of it."""
    for row in catalog.history(job=JOB, mentioning=json.dumps(name)):
        found = _set_drill(row, name)
        if found is not None:
            return found
    return None


def last_drills(catalog: Catalog, sets: list[str] | None = None) -> dict[str, SetDrill]:
    """Return the last drill of each set in `sets`, each found by its own query; without `sets`, of the sets the
    newest drill runs drilled."""
    if not sets:
        sets = list(dict.fromkeys(name for row in catalog.history(job=JOB, limit=LOOKBACK) for name in map(str, _sources(row))))
    found = {name: last_drill(catalog, name) for name in sets}
    return {name: drill for name, drill in found.items() if drill is not None}
