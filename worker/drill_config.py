"""The configuration of restore drills (issue 22): DRILL_SCHEDULE and DRILL_TARGET_URL, checked at start."""

from typing import Mapping
from zoneinfo import ZoneInfo

from jobs import engines
from jobs.drill.pg_target import TARGET_VARIABLE, same_database
from jobs.engines import pg_connect
from jobs.redact import mask_url
from worker.crontab import cron_trigger
from worker.sources import ConfiguredSet


def target_problem(target: str, sources: tuple[ConfiguredSet, ...]) -> str | None:
    """Return why DRILL_TARGET_URL is unusable (not a PostgreSQL URL libpq accepts, as BACKUP_SOURCE's are checked,
    or the address of a configured source database), or None."""
    if engines.scheme_of(target) not in ("postgresql", "postgres"):
        return (f"{TARGET_VARIABLE}={mask_url(target)!r} must be a PostgreSQL URL like "
                "postgresql://USER:PASSWORD@HOST:5432/DBNAME (an empty database the drill restores into)")
    try:
        conn = pg_connect.parse_url(target)
    except ValueError as error:
        return f"{TARGET_VARIABLE}: {error}"
    for each in sources:
        source = each.source.sql_database()
        if isinstance(source, pg_connect.Connection) and same_database(conn, source):
            return (f"{TARGET_VARIABLE} names the source database of {each.variable} ({source.dbname} on {source.host}), "
                    "which a drill never touches; point it at an empty database of its own, or unset it for a scratch "
                    "database")
    return None


def drill_settings(env: Mapping[str, str], timezone: ZoneInfo, sources: tuple[ConfiguredSet, ...],
                   problems: list[str]) -> dict[str, object]:
    """Given the environment, return the Config fields of restore drills (issue 22): DRILL_SCHEDULE (off when
    unset or `off`) with its trigger, and DRILL_TARGET_URL (a PostgreSQL URL that is not a source's)."""
    schedule = env.get("DRILL_SCHEDULE", "").strip()
    trigger = None
    if schedule.lower() in ("", "off"):
        schedule = ""
    else:
        try:
            trigger = cron_trigger(schedule, timezone)
        except ValueError as error:
            problems.append(f"DRILL_SCHEDULE: {error}")
    target = env.get(TARGET_VARIABLE, "").strip() or None
    if target is not None:
        target = engines.source_url(target)  # read as BACKUP_SOURCE is: `postgresql+psycopg://` is `postgresql://`
        problem = target_problem(target, sources)
        if problem:
            problems.append(problem)
            target = None
    return {"drill_schedule": schedule or None, "drill_trigger": trigger, "drill_target_url": target}
