"""`status`: last outcome of every job, the newest verified backup and its age (and, with S3_BUCKET, the newest
one in the bucket, which decides health), next scheduled runs."""

from datetime import datetime, timezone
import json
from typing import Any

from jobs.backups import list_backups, sets_in
from jobs.durations import format_duration
from jobs.manifest import utc_iso
from worker.actions.context import EXIT_FAILED, EXIT_OK, Context
from worker.actions.output import human_age, say
from worker.actions.purge import last_purge, status_lines as purge_status_lines
from worker.crontab import next_fire_times
from worker import preflight
from worker.freshness import SetFreshness, evaluate, list_offsite, offsite_destination, status_extras, status_lines


def _utc(moment: datetime) -> str:
    """Return a catalog time as ISO 8601 UTC; SQLite hands back naive datetimes, which we always wrote in UTC."""
    return utc_iso(moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))


def _set_row(state: SetFreshness) -> dict[str, Any]:
    """Return one set's part of the status document: its newest local and off-site backups and their ages."""
    local, there = state.describe(), state.describe_offsite()
    return {"healthy": state.fresh, "status": state.state,
            "newest_backup": local["id"] if local else None,
            "newest_backup_created_at": local["created_at"] if local else None,
            "newest_backup_age_s": local["age_s"] if local else None,
            "newest_offsite_backup": there["id"] if there else None,
            "newest_offsite_backup_created_at": there["created_at"] if there else None,
            "newest_offsite_backup_age_s": there["age_s"] if there else None,
            "offsite_error": state.offsite_error}


def status_report(ctx: Context, now: datetime | None = None) -> dict[str, Any]:
    """Return the status document: last outcome per job, the newest verified backup of the configured sets and
    its age (also per set, in `sets`), and with S3_BUCKET the newest one in the bucket and its age; next runs.
    Healthy when every configured set has a verified backup within FRESHNESS_LIMIT, in the bucket when one is
    configured (worker.freshness decides). Other sets in the backup directory or the bucket are not counted."""
    now = now or datetime.now(timezone.utc)
    scope = ctx.scope(sets_in(ctx.local, ctx.cancel))
    backups = [backup for backup_set in (scope if scope is not None else [None])
               for backup in list_backups(ctx.local, backup_set, ctx.cancel)[0]]
    bucket = offsite_destination(ctx.config)
    offsite = list_offsite(bucket, scope, ctx.cancel) if bucket is not None else None
    names = [backup_set.name for backup_set in scope] if scope is not None else []
    state = evaluate(backups, names, ctx.config.freshness_limit, now, offsite)
    per_set = {s.name: _set_row(s) for s in state.sets}
    deciding = _set_row(state.deciding) if state.deciding else _set_row(SetFreshness("", None, None, False))
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
    limit = format_duration(ctx.config.freshness_limit)
    return {
        "healthy": state.fresh,
        "freshness_limit": limit,
        **{key: value for key, value in deciding.items() if key not in ("healthy", "status")},
        "offsite": offsite is not None,  # S3_BUCKET is set: health is judged on the newest off-site copy
        "stale_reasons": {s.name: s.why_stale(limit) for s in state.sets if not s.fresh},
        "backups": len(backups),
        "future_backups": [ident for s in state.sets for ident in s.future],  # never newest, never fresh
        "backup_sets": [str(backup_set) for backup_set in scope] if scope is not None else None,
        "sets": per_set,
        "jobs": jobs,
        "next_runs": next_runs,
        "last_purge": last_purge(ctx.catalog),  # RETENTION_RULES: rows deleted per rule by the last purge
        **status_extras(ctx.config, ctx.catalog),  # last_failure, disk (worker/freshness.py)
    }


def _newest_line(row: dict[str, Any], offsite: bool, where: str) -> str:
    """Return `X (4m09s old)` for a set's newest backup, and its off-site copy when a bucket is configured."""
    local = (f"{row['newest_backup']} ({human_age(row['newest_backup_age_s'])} old)" if row["newest_backup"]
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
        for job, when in report["next_runs"].items():
            say(f"next {job}: {when}")
        for ident in report["future_backups"]:
            say(f"WARNING: {ident} is dated more than 5 minutes in the future (the clock was wrong when it was "
                "written); it is not counted as the newest or fresh backup")
        for line in status_lines(report) + purge_status_lines(report):
            say(line)
    return EXIT_OK if report["healthy"] else EXIT_FAILED
