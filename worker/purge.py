"""Table retention (RETENTION_RULES) in the worker: the check at start, the purge right after a fully successful
backup cycle, `prune --dry-run`'s row counts and `status`'s last purge.

The purge is its own job `purge` (start and outcome events, a catalog row, notified like any job), run inside the
backup run that allowed it, under the same backup lock; its per-rule counts are also copied into the backup's
outcome fields. A rule that fails makes the `purge` run fail (logged at error level, notified) but never the
backup: that backup is good, and it holds every row. The rules apply to the main source (BACKUP_SOURCE), opened
once, as the backup opens it; the purge deletes only rows that cycle's backup holds (its SQLite snapshot is kept
on the volume for that until the purge ends, see backup.backup_one).
"""

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
import json
from pathlib import Path
from typing import Any

import structlog

from jobs.cycle import Cycle
from jobs.engines import Source
from jobs.errors import Cancelled, JobError, SourceError
from jobs.manifest import utc_iso
from jobs.purge import (Rule, dry_run, held_from_cycle, inspect_rules, purge, purge_fields, reclaim_space,
                        should_purge, summary_of)
from worker.context import Context, UsageError
from worker.output import say
from worker.catalog import Catalog
from worker.runs import run_job

log = structlog.get_logger("worker.purge")

# What a backup's outcome carries about its purge, with `purge_run_id`, and `purge_skipped` / `purge_error` when
# it did not run, or not whole.
PURGE_FIELDS = ("purge", "purged_rows", "purged_tables", "purge_failed", "space")


def rules_for(ctx: Context, source: Source) -> tuple[Rule, ...]:
    """Return the rules that apply to `source`: RETENTION_RULES for the main source (BACKUP_SOURCE, the first
    configured), none for others (rules for further sources are not supported yet)."""
    main = ctx.config.sources[0].name if ctx.config.sources else None
    return ctx.config.retention_rules if source.name() == main else ()


def rule_problems(ctx: Context) -> list[str]:
    """Return one problem per rule that does not fit the main source's database (no such table or column, a type
    we cannot read as a time). A database that cannot be reached now, or that has no user tables at all yet (new,
    before its migrations or a restore), only warns: the worker must run so that alerts and one-off commands
    work, and every purge checks each rule again."""
    if not ctx.config.retention_rules or not ctx.config.sources:
        return []
    source = ctx.source()  # the main source, opened as the backup opens it
    try:
        check = inspect_rules(source, rules_for(ctx, source))
    except SourceError as error:
        log.warning("purge.check_deferred", reason=str(error), detail="the rules are checked again before every purge")
        return []
    except ValueError as error:
        return [f"RETENTION_RULES: {error}"]
    if check.waiting:
        log.warning("purge.waiting", reason=check.waiting)
    return [f"RETENTION_RULES: {problem}" for problem in check.problems]


def waiting(source: Source, rules: Sequence[Rule]) -> str | None:
    """Return why the purge after this backup waits (the database has no user tables yet), else None. A database
    that cannot be checked now is left to the purge, which fails loudly if it still cannot reach it."""
    try:
        return inspect_rules(source, rules).waiting
    except (SourceError, ValueError):
        return None


def require_rules_fit(ctx: Context) -> None:
    """Raise UsageError (exit 2) listing every rule that does not fit the database; nothing is deleted then."""
    problems = rule_problems(ctx)
    if problems:
        plural = "s" if len(problems) > 1 else ""
        raise UsageError(f"invalid configuration ({len(problems)} problem{plural}):\n  " + "\n  ".join(problems))


def purge_after_backup(ctx: Context, source: Source, rules: Sequence[Rule], cycle: Cycle,
                       kept: Path | None) -> dict[str, Any]:
    """Given a backup cycle of `source` that returned (it fully succeeded) and where that cycle kept its raw
    snapshot, delete the rows the rules make old that this backup holds, as the job `purge`, if `should_purge`
    allows it (with S3 configured, only once this cycle uploaded the backup, also under `backup --no-upload`)
    and the database has user tables (a new one without any: `purge_skipped` says the purge waits). Return the
    purge's fields, to join the cycle's."""
    allowed, why = should_purge(cycle, remote=ctx.config.s3 is not None)
    if allowed and (pending := waiting(source, rules)):
        allowed, why = False, pending
        log.warning("purge.waiting", reason=why)
    if not allowed:
        log.warning("purge.skipped", reason=why)
        return {"purge_skipped": why}
    log.info("purge.allowed", reason=why)
    outcome = run_job("purge", ctx.catalog, lambda: _purge_job(ctx, source, rules, cycle, kept))
    merged = {**{key: outcome.fields[key] for key in PURGE_FIELDS if key in outcome.fields},
              "purge_run_id": outcome.run_id}
    if not outcome.ok:
        merged["purge_error"] = outcome.reason
    return merged


def purge_time(cycle: Cycle) -> datetime:
    """Return the time a purge after this cycle counts ages from: the cycle's `time_anchor` (see
    jobs.pipeline.time_anchor), never later than now."""
    now = datetime.now(timezone.utc)
    return now if cycle.time_anchor is None else min(now, cycle.time_anchor)


def _purge_job(ctx: Context, source: Source, rules: Sequence[Rule], cycle: Cycle,
               kept: Path | None) -> dict[str, Any]:
    """The `purge` run: delete, report per rule; raise JobError (stage purge) if a rule failed, Cancelled (with the
    counts so far) if the worker is stopping."""
    held_by = {"backup": cycle.backup}  # the backup that holds every row deleted here
    try:
        held = held_from_cycle(cycle, kept)
    except ValueError as error:
        raise JobError(f"{error}; nothing was deleted", stage="purge", fields=held_by) from None
    try:
        results = purge(source, rules, purge_time(cycle), ctx.cancel, held=held)
    except Cancelled as error:
        error.fields = {**held_by, **summary(error.fields.get("purge", []))}
        raise
    except SourceError as error:
        raise JobError(f"{error}; nothing more was deleted", stage="purge", fields=held_by) from None
    fields = {**held_by, **purge_fields(results), **_space(source, ctx)}
    failed = [result for result in results if result.error]
    if failed:
        reasons = "; ".join(f"{result.rule}: {result.error}" for result in failed)
        raise JobError(f"{len(failed)} of {len(results)} table retention rules failed ({reasons}); the other rules "
                       f"deleted {fields['purged_rows']} rows; the backup {cycle.backup} holds every row",
                       stage="purge", fields=fields)
    return fields


def _space(source: Source, ctx: Context) -> dict[str, Any]:
    """Return the purge's `space` field (SQLite: free space in the file, and what incremental_vacuum gave back;
    none for PostgreSQL). A database that cannot be reached for it only warns: the rows are deleted."""
    try:
        space = reclaim_space(source, ctx.cancel)
    except SourceError as error:
        log.warning("purge.space_unknown", reason=str(error))
        return {}
    if space is None:
        return {}
    log.info("purge.space", **space.as_dict())
    return {"space": space.as_dict()}


def summary(rules: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Given per-rule dicts (RuleResult.as_dict), return the same fields as `purge_fields`."""
    return summary_of(rules)


def dry_run_report(ctx: Context, show: Callable[[str], None] = say) -> dict[str, Any]:
    """For `prune --dry-run`: print (with `show`) the rows each rule would delete now at most (or why it cannot
    run) and return them as fields of the prune run. Nothing is deleted. The counts are an upper bound: a purge deletes only the
    old rows the backup it follows holds."""
    if not ctx.config.retention_rules or not ctx.config.sources:
        return {}
    source = ctx.source()
    pending = waiting(source, rules_for(ctx, source))
    if pending:
        show(f"table retention waits: {pending}")
        return {"purge_waiting": pending}
    results = dry_run(source, rules_for(ctx, source), datetime.now(timezone.utc))
    for result in results:
        if result.error:
            show(f"table {result.rule}: cannot run: {result.error}")
        else:
            cascades = f", cascading to {', '.join(result.cascades)}" if result.cascades else ""
            if result.would_cascade:
                cascades += " (removing " + ", ".join(f"{count} rows of {table}"
                                                      for table, count in result.would_cascade.items()) + " with them)"
            which = f"rows older than {result.cutoff}" if result.cutoff else "rows that point at no parent row"
            if result.rows is not None:  # langgraph=AGE
                which = f"threads whose newest checkpoint is older than {result.cutoff}"
            show(f"table {result.rule}: would delete {result.would_delete} {which}{cascades} "
                "(an upper bound: a purge deletes only the rows the backup it follows holds; dry run: nothing deleted)")
    return {"purge_would_delete": [result.as_dict() for result in results]}


def last_purge(catalog: Catalog) -> dict[str, Any] | None:
    """Return the newest finished `purge` run for `status`: when, its outcome, rows deleted per rule (with what
    their cascades removed, per table) and per table, or None."""
    row = catalog.last_runs().get("purge")
    if row is None:
        return None
    details = _details(row)
    started = row["started_at"]
    if isinstance(started, datetime):  # SQLite hands back naive datetimes, which we always wrote in UTC
        started = utc_iso(started if started.tzinfo else started.replace(tzinfo=timezone.utc))
    return {"run_id": row["run_id"], "started_at": started, "outcome": row["outcome"], "reason": row.get("reason"),
            "backup": details.get("backup"), "purged_rows": details.get("purged_rows"),
            "tables": details.get("purged_tables") or {}, "space": details.get("space"),
            "rules": [_rule_counts(rule) for rule in details.get("purge", [])]}


def _rule_counts(rule: Mapping[str, Any]) -> dict[str, Any]:
    """Return what `status` shows of one rule: `rule`, `deleted`, `error`, `cascaded` when rows went with it, and a
    thread rule's `rows` (its `deleted` counts threads)."""
    counts = {key: rule.get(key) for key in ("rule", "deleted", "error")}
    if rule.get("cascaded"):
        counts["cascaded"] = rule["cascaded"]
    if isinstance(rule.get("rows"), dict):
        counts["rows"] = rule["rows"]
    return counts


def _details(row: Mapping[str, Any]) -> dict[str, Any]:
    """Return a catalog row's details, decoded ({} when there are none or they cannot be read)."""
    try:
        details = json.loads(row.get("details") or "{}")
    except ValueError:
        return {}
    return details if isinstance(details, dict) else {}


def history_fields(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """Given a catalog row, return what `history` shows of its purge (`purged_rows`, `purged_tables`, and per
    rule in `purge`: `rule`, `deleted`, `cascaded`, `error`, and a thread rule's `rows`, which say its `deleted`
    counts threads), or None for a run that did not purge."""
    details = _details(row)
    if not isinstance(details.get("purge"), list):
        return None
    return {"purged_rows": details.get("purged_rows"), "purged_tables": details.get("purged_tables") or {},
            **({"space": details["space"]} if details.get("space") else {}),
            "purge": [{"rule": rule.get("rule"), "deleted": rule.get("deleted"), "cascaded": rule.get("cascaded") or {},
                       "error": rule.get("error"),
                       **({"rows": rule["rows"]} if isinstance(rule.get("rows"), dict) else {})}
                      for rule in details["purge"]]}


def status_lines(report: Mapping[str, Any]) -> list[str]:
    """Return `status`'s lines about the last purge (none if there was none)."""
    last = report.get("last_purge")
    if not last:
        return []
    rules = "; ".join(f"{rule['rule']}: {rule['deleted']}"
                      + (f" threads ({', '.join(f'{table} {count}' for table, count in rule['rows'].items())} rows)"
                         if "rows" in rule else "")
                      + (f" (+ {', '.join(f'{table} {count}' for table, count in rule['cascaded'].items())} by cascade)"
                         if rule.get("cascaded") else "")
                      + (f" ({rule['error']})" if rule.get("error") else "")
                      for rule in last["rules"])
    tables = ", ".join(f"{table} {count}" for table, count in (last.get("tables") or {}).items())
    space = last.get("space") or {}
    freed = (f"; {space.get('free_bytes', 0) / 2**20:.1f} MiB free in the file"
             + (f", {space.get('released_bytes', 0) / 2**20:.1f} MiB given back" if space.get("auto_vacuum") ==
                "incremental" else " (auto_vacuum is not INCREMENTAL, see docs/table-retention.md)")) if space else ""
    return [f"table retention: {last['purged_rows'] or 0} rows deleted by the last purge ({last['started_at']})"
            + (f": {rules}" if rules else "") + (f"; per table: {tables}" if tables else "") + freed]
