"""Table retention (RETENTION_RULES): delete rows older than an age from the source database, in small batches,
and only rows the verified backup just made holds.

The gating contract: the pipeline calls `purge` for a source ONLY right after a backup cycle of that source fully
succeeded, that is its snapshot passed the engine's check and was published and, when S3 is configured, the
backup was uploaded (`should_purge` decides this from the cycle's fields). `purge` then deletes only rows that
backup holds (`Held`, see jobs.purge.held: rows written or changed after its snapshot stay, whatever their
time, and so does a parent whose cascade would take such rows along), so every row deleted is in a verified
backup, off-site when there is a bucket. Anything that failed before: nothing is deleted, and the outcome says
why. `purge` itself deletes in batches that never hold a write lock for long and stops between batches when
`cancel` is set.

Entry points:
- `parse_retention_rules(text)` reads RETENTION_RULES (ValueError naming every bad pair: a config problem): age
  rules (PurgeRule) and orphan rules (OrphanRule, run after the age rules).
- `inspect_rules(source, rules)` at start and before every purge: one problem per rule that does not fit the
  database (missing table or column, unsupported type; any problem is exit 2 at start, nothing deleted), or, in a
  database with no user tables at all (new, before its migrations or a restore), why the purge waits instead.
  `check_rules` gives the problems alone.
- `dry_run(source, rules, now)` / `count_rows(source, rule, now)` for `prune --dry-run`: old rows now, an upper
  bound of what a purge deletes (it has no backup to hold them against).
- `held_from_cycle(fields, kept)`, then `purge(source, rules, now, cancel, held=…)` after a fully successful
  cycle; `purge_fields(results)` for the outcome event and the catalog.
`source` is the engine Source the backup read (jobs.engines.open_source), or a URL that function opens: the
database is never found by a second reading of the URL.
"""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
import threading
from typing import Any

import sqlalchemy as sa

from jobs.cycle import Cycle
from jobs.errors import SourceError
from jobs.purge import database
from jobs.purge.database import SourceLike
from jobs.purge.delete import BATCH_SIZE, RuleResult, count_old, cutoff_for, run_rule, stop
from jobs.purge.held import Held, PgSnapshot, held_from_cycle
from jobs.purge.langgraph import CHECKPOINTS_PER_STEP, resolve_store, run_threads
from jobs.purge.rules import OrphanRule, PurgeRule, Rule, ThreadRule, in_purge_order, parse_retention_rules
from jobs.purge.schema import check, fits, has_user_tables, resolve
from jobs.purge.space import STEP_PAGES, Space, reclaim

__all__ = ["Held", "OrphanRule", "PgSnapshot", "PurgeRule", "Rule", "ThreadRule", "RuleResult", "RulesCheck", "check_rules",
           "count_rows", "dry_run", "held_from_cycle", "inspect_rules", "parse_retention_rules", "purge",
           "purge_fields", "reclaim_space", "removed_text", "should_purge", "summary_of"]


@dataclass(frozen=True)
class RulesCheck:
    """How the rules fit the database: `problems` (one sentence per rule that does not fit; a configuration
    error), or `waiting`: why table retention waits (the database has no user tables at all yet)."""

    problems: list[str] = field(default_factory=list)
    waiting: str | None = None


def waiting_sentence(rules: Sequence[Rule]) -> str:
    """Return why the purge waits on a database with no user tables, naming the tables the rules need."""
    tables = sorted({rule.table for rule in rules})
    named = f"table{'s' if len(tables) > 1 else ''} {', '.join(tables)} exist{'' if len(tables) > 1 else 's'}"
    return (f"the database has no tables yet (a new database before its migrations or a restore), so table retention "
            f"waits until {named}; RETENTION_RULES are checked again before every purge")


def inspect_rules(source: SourceLike, rules: Sequence[Rule], cwd: Path | None = None) -> RulesCheck:
    """Given the source database and the rules, return how they fit it (see RulesCheck): in a database with no
    user tables at all (SQLite: none but sqlite_%; PostgreSQL: none outside the system schemas) the purge waits;
    in any other, each rule that names a missing table or column, or an unsupported type, is a problem. Raise
    SourceError if the database cannot be reached, ValueError if it is not SQLite or PostgreSQL."""
    if not rules:
        return RulesCheck()
    with _database_errors("checking RETENTION_RULES"), database.engine_for(source, cwd) as engine, \
            engine.connect() as connection:
        if not has_user_tables(connection):
            return RulesCheck(waiting=waiting_sentence(rules))
        return RulesCheck(problems=_check(connection, rules))


def check_rules(source: SourceLike, rules: Sequence[Rule], cwd: Path | None = None) -> list[str]:
    """Given the source database and the rules, return one problem per rule that does not fit it (each a sentence
    that starts with the rule, e.g. `events.created_at=30d: the database has no table events; …`); [] when all
    fit, and in a database with no user tables at all, where the purge waits (see inspect_rules). Raise
    SourceError if the database cannot be reached, ValueError if it is not SQLite or PostgreSQL."""
    return inspect_rules(source, rules, cwd).problems


def count_rows(source: SourceLike, rule: PurgeRule | OrphanRule, now: datetime, cwd: Path | None = None) -> int:
    """Given an age or orphan rule and an aware `now`, return how many rows it matches now (an upper bound of what
    a purge deletes; thread rules count threads: see dry_run). Raise ValueError if the rule does not fit the
    database (see check_rules), SourceError if the database cannot be reached."""
    if isinstance(rule, ThreadRule):
        raise ValueError(f"{rule.describe()} counts threads, not rows; use dry_run")
    with _database_errors("counting old rows"), database.engine_for(source, cwd) as engine, \
            engine.connect() as connection:
        target = resolve(connection, rule)
        connection.commit()
        return count_old(connection, target, cutoff_for(rule, now))


def dry_run(source: SourceLike, rules: Sequence[Rule], now: datetime,
            cwd: Path | None = None) -> list[RuleResult]:
    """For `prune --dry-run`: return per rule `would_delete`, the rows older than its age now (an upper bound: a
    purge deletes only those the backup it follows holds), and `error` when it could not run (a problem with the
    rule, or rows referenced by a RESTRICT / NO ACTION foreign key). Nothing is deleted."""
    never = threading.Event()
    with _database_errors("counting old rows"), database.engine_for(source, cwd) as engine:
        return [_run(engine, rule, now, never, held=None, dry_run=True)[0] for rule in in_purge_order(rules)]


def purge(source: SourceLike, rules: Sequence[Rule], now: datetime, cancel: threading.Event, *, held: Held,
          batch_size: int = BATCH_SIZE, pause: float | None = None, cwd: Path | None = None) -> list[RuleResult]:
    """Delete, rule by rule, the rows older than `now - age` that the backup `held` describes holds (with every
    row their delete takes along), in batches of `batch_size` keys, each its own short transaction; return one
    RuleResult per rule (`kept`: old rows that backup does not hold). A rule that fails (see RuleResult.error)
    does not stop the others. `pause` is the sleep between batches (default: SQLite as long as the last batch
    held the lock, PostgreSQL none).

    Call only after a fully successful backup cycle of this source (see the module docstring and should_purge).
    Raise Cancelled (its `fields["purge"]` holds every rule's result so far) when `cancel` stopped it between
    batches, SourceError if the database cannot be reached.
    """
    results: list[RuleResult] = []
    if not rules:
        return results
    rules = in_purge_order(rules)  # orphans last: rows whose parent an age rule just deleted go in this cycle
    with _database_errors("table retention"), database.engine_for(source, cwd, held.sqlite_file) as engine:
        for rule in rules:
            if cancel.is_set():
                raise stop(results, rules, now)
            result, finished = _run(engine, rule, now, cancel, held=held, batch_size=batch_size, pause=pause)
            results.append(result)
            if not finished:
                raise stop(results, rules, now)
    return results


def _run(engine: sa.Engine, rule: Rule, now: datetime, cancel: threading.Event, *, held: Held | None,
         dry_run: bool = False, batch_size: int = BATCH_SIZE, pause: float | None = None) -> tuple[RuleResult, bool]:
    """Run one rule of any kind (see delete.run_rule and langgraph.run_threads)."""
    if isinstance(rule, ThreadRule):
        return run_threads(engine, rule, now, cancel, held=held, dry_run=dry_run, pause=pause,
                           step=min(CHECKPOINTS_PER_STEP, batch_size))
    return run_rule(engine, rule, now, cancel, held=held, dry_run=dry_run, batch_size=batch_size, pause=pause)


def _check(connection: sa.Connection, rules: Sequence[Rule]) -> list[str]:
    """Return one problem per rule that does not fit the database, in rule order (see schema.check; a thread rule's
    tables are checked by langgraph.resolve_store)."""
    return check(connection, rules, _fits)


def _fits(connection: sa.Connection, rule: Rule) -> None:
    """Raise RuleProblem when `rule` does not fit the database."""
    if isinstance(rule, ThreadRule):
        resolve_store(connection, rule)
    else:
        fits(connection, rule)


def reclaim_space(source: SourceLike, cancel: threading.Event, cwd: Path | None = None, *,
                  step_pages: int = STEP_PAGES, pause: float | None = None) -> Space | None:
    """After a purge: report a SQLite file's free space and, with `auto_vacuum=INCREMENTAL`, release it in small
    steps (see jobs.purge.space; never a full VACUUM); None for PostgreSQL. Raise SourceError if the database
    cannot be reached."""
    with _database_errors("reclaiming free space"):
        return reclaim(source, cancel, cwd=cwd, step_pages=step_pages, pause=pause)


def purge_fields(results: Sequence[RuleResult]) -> dict[str, Any]:
    """Return the fields a backup's outcome event and catalog row carry about table retention."""
    return summary_of([result.as_dict() for result in results])


def summary_of(rules: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Given per-rule dicts (RuleResult.as_dict), return the fields a purge's outcome carries: `purge` (the
    rules), `purged_rows` (every row that went, cascades included), `purged_tables` (those rows per table: the
    rules' own and what ON DELETE CASCADE removed with them) and `purge_failed` (the rules that failed)."""
    tables: dict[str, int] = {}
    removed = 0
    for rule in rules:
        if "rows" in rule:  # a thread rule: `deleted` counts threads, `rows` the rows per table
            counts = list(rule["rows"].items())
            removed += sum(rule["rows"].values())
        else:
            own = [(rule["table"], rule.get("deleted", 0))] if rule.get("table") else []
            counts = own + list((rule.get("cascaded") or {}).items())
            removed += rule.get("deleted", 0) + sum((rule.get("cascaded") or {}).values())
        for table, count in counts:
            tables[table] = tables.get(table, 0) + count
    return {"purge": list(rules), "purged_rows": removed, "purged_tables": tables,
            "purge_failed": [rule["rule"] for rule in rules if rule.get("error")]}


def removed_text(fields: Mapping[str, Any]) -> str | None:
    """Given a purge's fields (outcome or catalog details), return what went, per rule and per table through
    cascades, e.g. `3656 rows: sessions.started_at=90d deleted 12, with spec_runs 3644 by cascade`; None when
    the fields say nothing of a purge."""
    rules = fields.get("purge")
    if not isinstance(rules, list):
        return None
    parts = []
    for rule in rules:
        part = f"{rule.get('rule')} deleted {rule.get('deleted', 0)}"
        if "rows" in rule:  # a thread rule: threads, and their rows per table
            rows = ", ".join(f"{table} {count}" for table, count in rule["rows"].items())
            part += " threads" + (f" ({rows} rows)" if rows else "")
        cascaded = rule.get("cascaded") or {}
        if cascaded:
            part += ", with " + ", ".join(f"{table} {count}" for table, count in cascaded.items()) + " by cascade"
        if rule.get("error"):
            part += f" ({rule['error']})"
        parts.append(part)
    text = f"{fields.get('purged_rows') or 0} rows" + (f": {'; '.join(parts)}" if parts else "")
    space = fields.get("space")
    if isinstance(space, dict):
        text += f"; {space.get('free_bytes', 0) / 2**20:.1f} MiB free in the file"
        if space.get("auto_vacuum") == "incremental":
            text += f", {space.get('released_bytes', 0) / 2**20:.1f} MiB given back (incremental_vacuum)"
    return text


def should_purge(cycle: Cycle | None, *, remote: bool) -> tuple[bool, str]:
    """Given the backup cycle `pipeline.run_cycle` returned for a source (None: it wrote no backup) and whether S3
    is configured, return whether table retention may run now and why (or why not). It may only when this cycle
    wrote a backup that passed its check and, with a bucket, uploaded that very backup."""
    if cycle is None or not cycle.artifact:
        return False, "this cycle wrote no backup, so rows are not deleted"
    if not cycle.verified:
        return False, f"the backup {cycle.artifact} has no passed check, so rows are not deleted"
    if remote and cycle.backup not in (cycle.uploaded or []):
        return False, f"the backup {cycle.artifact} was not uploaded to S3 in this cycle, so rows are not deleted"
    where = " and uploaded" if remote else ""
    return True, f"the backup {cycle.artifact} passed its check ({cycle.verified}){where}"


@contextmanager
def _database_errors(doing: str) -> Iterator[None]:
    """Turn a driver or connection error into a SourceError that names what we were doing."""
    try:
        yield
    except sa.exc.SQLAlchemyError as error:
        if database.is_locked(error):  # reached: another connection kept it locked through every wait
            raise SourceError(f"{doing} failed: the database stayed locked by another connection (a writer, or in "
                              "rollback-journal mode a reader) through every wait; the next purge tries again, and "
                              "WAL mode (PRAGMA journal_mode=WAL) lets readers and the purge go on together") from None
        raise SourceError(f"{doing} failed: {database.reason(error)}; check that the database is reachable and "
                          "BACKUP_SOURCE names it") from None
