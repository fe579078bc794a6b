"""`status`: last outcome of every job, the newest verified backup and its age, next scheduled runs."""

from datetime import datetime, timedelta, timezone
import json
from typing import Any

from jobs.artifacts import utc_iso
from jobs import selection
from jobs.backups import list_backups, sets_in
from jobs.durations import format_duration
from worker.actions.context import EXIT_FAILED, EXIT_OK, Context
from worker.actions.output import human_age, say
from worker.actions.purge import last_purge, status_lines as purge_status_lines
from worker.crontab import next_fire_times
from worker import preflight
from worker.freshness import evaluate, status_extras, status_lines


def _utc(moment: datetime) -> str:
    """Return a catalog time as ISO 8601 UTC; SQLite hands back naive datetimes, which we always wrote in UTC."""
    return utc_iso(moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))


def status_report(ctx: Context, now: datetime | None = None) -> dict[str, Any]:
    """Return the status document: last outcome per job, the newest verified backup of the configured sets and
    its age (also per set, in `sets`), next runs. Healthy when every configured set has a verified backup within
    FRESHNESS_LIMIT. Other sets in the backup directory are not counted."""
    now = now or datetime.now(timezone.utc)
    scope = ctx.scope(sets_in(ctx.local, ctx.cancel))
    backups = [backup for backup_set in (scope if scope is not None else [None])
               for backup in list_backups(ctx.local, backup_set, ctx.cancel)[0]]
    newest = selection.newest(backups, selection.Purpose.FRESHNESS, now)
    age = max(now - newest.created_at, timedelta(0)) if newest else None
    future = [backup.id for backup in selection.future(backups, now)]
    fresh = age is not None and age <= ctx.config.freshness_limit
    per_set = {}
    if scope is not None:
        state = evaluate(backups, [backup_set.name for backup_set in scope], ctx.config.freshness_limit, now)
        fresh = state.fresh
        per_set = {s.name: {"healthy": s.fresh, "newest_backup": s.newest.id if s.newest else None,
                            "newest_backup_created_at": s.newest.manifest["created_at"] if s.newest else None,
                            "newest_backup_age_s": int(s.age_s) if s.age_s is not None else None} for s in state.sets}
    jobs = {}
    for job, row in ctx.catalog.last_runs().items():
        jobs[job] = {key: (_utc(value) if isinstance(value, datetime) else value)
                     for key, value in row.items() if key in ("run_id", "started_at", "outcome", "stage", "reason", "artifact", "duration_s")}
    local_now = now.astimezone(ctx.config.timezone)
    triggers = {"backup": ctx.config.backup_trigger}
    if ctx.config.cleanup_rules:
        triggers["cleanup"] = ctx.config.cleanup_trigger
    next_runs = {job: next((t.isoformat() for t in next_fire_times(trigger, local_now, 1)), None)
                 for job, trigger in triggers.items()}
    return {
        "healthy": fresh,
        "freshness_limit": format_duration(ctx.config.freshness_limit),
        "newest_backup": newest.id if newest else None,
        "newest_backup_created_at": newest.manifest["created_at"] if newest else None,
        "newest_backup_age_s": int(age.total_seconds()) if age is not None else None,
        "backups": len(backups),
        "future_backups": future,  # dated in the future (the clock was wrong): never newest, never fresh
        "backup_sets": [str(backup_set) for backup_set in scope] if scope is not None else None,
        "sets": per_set,
        "jobs": jobs,
        "next_runs": next_runs,
        "last_purge": last_purge(ctx.catalog),  # RETENTION_RULES: rows deleted per rule by the last purge
        **status_extras(ctx.config, ctx.catalog),  # last_failure, disk (worker/freshness.py)
    }


def cmd_status(ctx: Context, as_json: bool) -> int:
    preflight.warn(ctx.config)  # on stderr: what would stop the backups (no fitting pg_dump)
    report = status_report(ctx)
    if as_json:
        say(json.dumps(report, indent=2, sort_keys=True))
    else:
        limit = report["freshness_limit"]
        if len(report["sets"]) > 1:
            for name, row in report["sets"].items():
                newest = (f"{row['newest_backup']} ({human_age(row['newest_backup_age_s'])} old)" if row["newest_backup"]
                          else f"none in {ctx.config.backup_dir}")
                say(f"newest backup of {name}: {newest}{'' if row['healthy'] else ' STALE'}")
            stale = [name for name, row in report["sets"].items() if not row["healthy"]]
            say(f"health: {'ok' if not stale else 'STALE: no verified backup within ' + limit + ' of ' + ', '.join(stale)}")
        else:
            if report["newest_backup"]:
                age = human_age(report["newest_backup_age_s"])
                say(f"newest backup: {report['newest_backup']} ({age} old, limit {limit})")
            else:
                say(f"newest backup: none in {ctx.config.backup_dir}")
            say(f"health: {'ok' if report['healthy'] else 'STALE: no verified backup within ' + limit}")
        for job, row in sorted(report["jobs"].items()):
            detail = f" at {row['stage']}: {row['reason']}" if row.get("reason") else ""
            say(f"last {job}: {row['outcome']} ({row['started_at']}){detail}")
        for job, when in report["next_runs"].items():
            say(f"next {job}: {when}")
        for ident in report["future_backups"]:
            say(f"WARNING: {ident} is dated more than 5 minutes in the future (the clock was wrong when it was "
                "written); it is not counted as the newest or fresh backup")
        for line in status_lines(report) + purge_status_lines(report):
            say(line)
    return EXIT_OK if report["healthy"] else EXIT_FAILED
