"""`history [--json] [--since DURATION] [--job NAME]`: every recorded run, newest first, from the catalog."""

from collections.abc import Callable
from datetime import datetime, timezone
import json
from typing import Any

from jobs.durations import parse_duration
from jobs.manifest import utc_iso
from worker.catalog import Catalog, catalog_time
from worker.context import EXIT_OK, Context, UsageError
from jobs.purge import removed_text
from worker.purge import history_fields
from worker.text import human_size

KEYS = ("job", "run_id", "started_at", "finished_at", "outcome", "stage", "reason", "duration_s", "size",
        "raw_size", "artifact")


def cmd_history(ctx: Context, as_json: bool, since: str | None, job: str | None) -> int:
    try:
        moment = parse_since(since)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return show(ctx.catalog, as_json, moment, job)


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """Given `--since` like `36h` or `7d`, return the UTC moment it names. Raise ValueError naming the option."""
    if not text:
        return None
    try:
        return (now or datetime.now(timezone.utc)) - parse_duration(text)
    except ValueError as error:
        raise ValueError(f"--since: {error}") from None


def runs(catalog: Catalog, since: datetime | None = None, job: str | None = None) -> list[dict[str, Any]]:
    """Return the recorded runs newest first, as objects with KEYS (times in ISO 8601 UTC), and `purge` for a
    run that deleted rows by RETENTION_RULES (see worker.purge.history_fields)."""
    rows = []
    for row in catalog.history(since=since, job=job):
        rows.append({key: (catalog_time(row.get(key)) if key in ("started_at", "finished_at") else row.get(key))
                     for key in KEYS})
        if (purged := history_fields(row)) is not None:  # table retention: rows per rule and per table
            rows[-1]["purge"] = purged
    return rows


def render(rows: list[dict[str, Any]]) -> list[str]:
    """Return the lines of the table `history` prints for people."""
    if not rows:
        return []
    lines = [f"{'STARTED (UTC)':<21} {'JOB':<8} {'OUTCOME':<9} {'DURATION':>9} {'SIZE':>10} {'RAW':>10}  {'RUN':<12}  DETAIL"]
    for row in rows:
        duration = f"{row['duration_s']:.1f} s" if row["duration_s"] is not None else "-"
        if row["outcome"] in ("failed", "skipped"):
            detail = (f"{row['stage']}: " if row["stage"] else "") + (row["reason"] or "")
        else:
            detail = row["artifact"] or ""
        if row.get("purge") and row["job"] == "purge":
            detail = removed_text(row["purge"]) or detail
        lines.append(f"{row['started_at'] or '-':<21} {row['job']:<8} {row['outcome']:<9} {duration:>9} "
                     f"{human_size(row['size']):>10} {human_size(row['raw_size']):>10}  {row['run_id']:<12}  {detail}")
    return lines


def show(catalog: Catalog, as_json: bool, since: datetime | None = None, job: str | None = None,
         say: Callable[[str], None] = print) -> int:
    """Print the history (a JSON array with `as_json`, else a table); return EXIT_OK."""
    rows = runs(catalog, since, job)
    if as_json:
        say(json.dumps(rows, indent=2))
        return EXIT_OK
    if catalog.engine is None:
        say("no run history: the catalog cannot be opened (see the warning above; check CATALOG_URL)")
    elif not rows:
        say("no recorded runs" + (f" of {job}" if job else "") + (f" since {utc_iso(since)}" if since else ""))
    for line in render(rows):
        say(line)
    return EXIT_OK
