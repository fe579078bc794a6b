"""`status`: last outcome of every job, the newest verified backup and its age (and, with S3_BUCKET, the newest
one in the bucket, which decides health), next scheduled runs."""

from datetime import datetime, timezone
import json
from typing import Any

from jobs.backups import list_backups, sets_in
from jobs.durations import format_duration
from worker.catalog import catalog_time
from worker.context import EXIT_FAILED, EXIT_OK, Context
from worker.output import human_age, say
from worker.purge import last_purge, status_lines as purge_status_lines
from worker.crontab import next_fire_times
from worker import preflight
from worker.monitoring import tiers
from worker.monitoring.freshness import SetFreshness, list_offsite, offsite_destination
from worker.monitoring.drills import last_drills
from worker.monitoring.status import Status, last_failure, measure


def _set_row(state: SetFreshness) -> dict[str, Any]:
    """Return one set's part of the status document: its newest local and off-site backups and their ages."""
    local, there = state.describe(), state.describe_offsite()
    return {"healthy": state.fresh, "status": state.state,
            "newest_backup": local["id"] if local else None,
            "newest_backup_created_at": local["created_at"] if local else None,
            "newest_backup_age_s": local["age_s"] if local else None,
            "newest_backup_encrypted": local["encrypted"] if local else None,
            "newest_offsite_backup": there["id"] if there else None,
            "newest_offsite_backup_created_at": there["created_at"] if there else None,
            "newest_offsite_backup_age_s": there["age_s"] if there else None,
            "offsite_error": state.offsite_error}


def status_report(ctx: Context, now: datetime | None = None) -> dict[str, Any]:
    """Return the status document: last outcome per job, the newest verified backup of the configured sets and
    its age (also per set, in `sets`), and with S3_BUCKET the newest one in the bucket and its age; next runs.
    Healthy when every configured set has a verified backup within FRESHNESS_LIMIT, in the bucket when one is
    configured (worker.monitoring.status decides). Other sets in the backup directory or the bucket are not counted."""
    now = now or datetime.now(timezone.utc)
    scope = ctx.scope(sets_in(ctx.local, ctx.cancel))
    backups = [backup for backup_set in (scope if scope is not None else [None])
               for backup in list_backups(ctx.local, backup_set, ctx.cancel)[0]]
    bucket = offsite_destination(ctx.config)
    offsite = list_offsite(bucket, scope, ctx.cancel) if bucket is not None else None
    names = [backup_set.name for backup_set in scope] if scope is not None else []
    state = measure(ctx.config, backups, names, ctx.catalog.last_runs(), offsite, now, last_drills(ctx.catalog, names or None))
    document = render(ctx, state, now, [str(backup_set) for backup_set in scope] if scope is not None else None)
    document["retention"] = tiers.report(ctx.config, backups, offsite.backups if offsite is not None else None, now)
    return document


def render(ctx: Context, state: Status, now: datetime, backup_sets: list[str] | None) -> dict[str, Any]:
    """Return the status document of a status model, with what only `status` shows: next runs, the last purge
    and the last failure."""
    per_set = {s.name: _set_row(s) for s in state.sets}
    deciding = _set_row(state.deciding) if state.deciding else _set_row(SetFreshness("", None, None, False))
    jobs = {}
    for job, row in state.last_runs.items():
        jobs[job] = {key: (catalog_time(value) if isinstance(value, datetime) else value)
                     for key, value in row.items() if key in ("run_id", "started_at", "outcome", "stage", "reason", "artifact", "duration_s")}
    local_now = now.astimezone(ctx.config.timezone)
    triggers = {"backup": ctx.config.backup_trigger}
    if ctx.config.cleanup_rules:
        triggers["cleanup"] = ctx.config.cleanup_trigger
    if ctx.config.drill_trigger is not None:
        triggers["drill"] = ctx.config.drill_trigger
    next_runs = {job: next((t.isoformat() for t in next_fire_times(trigger, local_now, 1)), None)
                 for job, trigger in triggers.items()}
    limit = format_duration(state.limit)
    return {
        "healthy": state.healthy,
        "status": state.state,  # as /healthz: ok, stale, offsite_unknown or drill_failed
        "freshness_limit": limit,
        **{key: value for key, value in deciding.items() if key not in ("healthy", "status")},
        "offsite": state.offsite,  # S3_BUCKET is set: health is judged on the newest off-site copy
        "stale_reasons": state.stale_reasons(limit),
        "backups": state.backups,
        "future_backups": state.future,  # never newest, never fresh
        "backup_sets": backup_sets,
        "sets": per_set,
        "jobs": jobs,
        "next_runs": next_runs,
        "last_purge": last_purge(ctx.catalog),  # RETENTION_RULES: rows deleted per rule by the last purge
        "last_failure": last_failure(ctx.catalog),
        "disk": state.disk.describe(),
        "drills": {name: drill.describe(now) for name, drill in sorted(state.drills.items())},  # issue 22
        "drill_failures": [drill.sentence() for drill in state.drill_failures],
    }


def _newest_line(row: dict[str, Any], offsite: bool, where: str) -> str:
    """Return `X (4m09s old)` for a set's newest backup, and its off-site copy when a bucket is configured."""
    sealed = ", encrypted" if row.get("newest_backup_encrypted") else ""
    local = (f"{row['newest_backup']} ({human_age(row['newest_backup_age_s'])} old{sealed})" if row["newest_backup"]
             else f"none in {where}")
    if not offsite:
        return local
    if row["offsite_error"]:
        there = f"unknown ({row['offsite_error']})"
    elif row["newest_offsite_backup"]:
        there = f"{row['newest_offsite_backup']} ({human_age(row['newest_offsite_backup_age_s'])} old)"
    else:
        there = "none in the bucket"
    return f"{local}; off-site: {there}"


def cmd_status(ctx: Context, as_json: bool) -> int:
    preflight.warn(ctx.config)  # on stderr: what would stop the backups (no fitting pg_dump)
    report = status_report(ctx)
    if as_json:
        say(json.dumps(report, indent=2, sort_keys=True))
    else:
        limit = report["freshness_limit"]
        where = str(ctx.config.backup_dir)
        if len(report["sets"]) > 1:
            for name, row in report["sets"].items():
                say(f"newest backup of {name}: {_newest_line(row, report['offsite'], where)}{'' if row['healthy'] else ' STALE'}")
        else:
            say(f"newest backup: {_newest_line(report, report['offsite'], where)} (limit {limit})")
        reasons = report["stale_reasons"]
        if report["healthy"]:
            say("health: ok")
        elif report["drill_failures"] and not reasons:
            say("health: DRILL FAILED: " + "; ".join(report["drill_failures"]))
        elif not reasons:
            say(f"health: STALE: no verified backup within {limit}")
        elif len(report["sets"]) > 1 and not report["offsite"]:
            say(f"health: STALE: no verified backup within {limit} of {', '.join(reasons)}")
        elif len(report["sets"]) > 1:
            say("health: STALE: " + "; ".join(f"{name}: {why}" for name, why in reasons.items()))
        else:
            say(f"health: STALE: {next(iter(reasons.values()))}")
        for job, row in sorted(report["jobs"].items()):
            detail = f" at {row['stage']}: {row['reason']}" if row.get("reason") else ""
            say(f"last {job}: {row['outcome']} ({row['started_at']}){detail}")
        for name, drill in report["drills"].items():
            detail = drill["compared"] if drill["outcome"] == "succeeded" else f"at {drill['stage']}: {drill['reason']}"
            say(f"last drill of {name}: {drill['outcome']} ({drill['finished_at']}, {drill['backup']}): {detail}")
        for job, when in report["next_runs"].items():
            say(f"next {job}: {when}")
        for ident in report["future_backups"]:
            say(f"WARNING: {ident} is dated more than 5 minutes in the future (the clock was wrong when it was "
                "written); it is not counted as the newest or fresh backup")
        for line in tiers.lines(report["retention"]) + _failure_and_disk_lines(report) + purge_status_lines(report):
            say(line)
    return EXIT_OK if report["healthy"] or report["status"] == "drill_failed" else EXIT_FAILED  # SPEC: 1 only when stale


def _failure_and_disk_lines(report: dict[str, Any]) -> list[str]:
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
