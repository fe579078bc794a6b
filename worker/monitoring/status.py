"""The status model: one judgement of the worker's state that `status` (worker/actions/status.py), `/healthz` and
`/metrics` (worker/health.py) all render; none of them judges on its own.

It is computed once per look from the backups (on the volume and, with S3_BUCKET, in the bucket: `freshness.py`),
the catalog (each job's last run) and the backup volume (`disk.py`). Each caller supplies the backups it lists
(`status` lists them now, scoped to the configured sets; /healthz and /metrics from a short cache) and renders the
same model its own way.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from jobs.backups import Backup
from worker.catalog import Catalog, catalog_time
from worker.monitoring import disk
from worker.monitoring.drills import SetDrill
from worker.monitoring.disk import Disk
from worker.monitoring.freshness import Freshness, Offsite, SetFreshness, evaluate

if TYPE_CHECKING:
    from worker.config import Config


@dataclass(frozen=True)
class Status:
    """The worker's state at one moment: each set's freshness, each job's last run, the backup volume."""

    freshness: Freshness
    offsite: bool  # S3_BUCKET is set: health is judged on the newest off-site copy
    backups: int  # the sound backups counted on the volume
    last_runs: dict[str, dict[str, Any]]  # per job, its last catalog row
    disk: Disk
    drills: dict[str, SetDrill] = field(default_factory=dict)  # per set, its last restore drill (issue 22)

    @property
    def healthy(self) -> bool:
        """Every configured set has a verified backup within FRESHNESS_LIMIT (in the bucket, with S3_BUCKET), and
        no set's last restore drill failed."""
        return self.freshness.fresh and not self.drill_failures

    @property
    def drill_failures(self) -> list[SetDrill]:
        """The sets whose last drill failed."""
        return [drill for drill in self.drills.values() if drill.failed]

    @property
    def limit(self) -> timedelta:
        return self.freshness.limit

    @property
    def sets(self) -> list[SetFreshness]:
        return self.freshness.sets

    @property
    def deciding(self) -> SetFreshness | None:
        """The set that decides health (freshness.Freshness.deciding), or None when there is no set at all."""
        return self.freshness.deciding

    @property
    def state(self) -> str:
        """`ok`, `stale`, `offsite_unknown` (the deciding set's bucket could not be listed), or `drill_failed`
        (every set is fresh but a set's last restore drill failed)."""
        if self.healthy:
            return "ok"
        if self.freshness.fresh:
            return "drill_failed"
        return self.deciding.state if self.deciding else "stale"

    @property
    def future(self) -> list[str]:
        """The ids of backups dated in the future, of every set: never newest, never fresh."""
        return [ident for s in self.sets for ident in s.future]

    def stale_reasons(self, limit: str) -> dict[str, str | None]:
        """Return why each set that is not fresh is not (`limit` as written)."""
        return {s.name: s.why_stale(limit) for s in self.sets if not s.fresh}


def measure(config: "Config", backups: list[Backup], sets: list[str], last_runs: dict[str, dict[str, Any]],
            offsite: Offsite | None, now: datetime | None = None, drills: dict[str, SetDrill] | None = None) -> Status:
    """Given the sound backups on the volume, the configured set names (none: every set found counts), each job's
    last run, with S3_BUCKET the bucket as listed, and each set's last drill, return the status now (the volume
    is measured here)."""
    state = evaluate(backups, sets, config.freshness_limit, now, offsite)
    return Status(state, offsite is not None, len(backups), last_runs, disk.measure(config), dict(drills or {}))


def last_failure(catalog: Catalog) -> dict[str, Any] | None:
    """Return the newest failed run of any job from the catalog, or None."""
    rows = catalog.history(outcome="failed", limit=1)
    if not rows:
        return None
    row = rows[0]
    return {"job": row["job"], "run_id": row["run_id"], "started_at": catalog_time(row["started_at"]),
            "finished_at": catalog_time(row["finished_at"]), "stage": row["stage"], "reason": row["reason"]}
