"""Counting and deleting old rows, in small batches, each its own short transaction.

A row is deleted when it is old AND the backup the purge follows holds it, with every row its delete would take
along (see jobs.purge.held): rows written or changed after the snapshot stay, whatever their time.

A batch (see jobs.purge.batch): read the next `batch_size` keys of such rows after the last batch, in key order,
in a read transaction (in WAL mode it never blocks the app's writers, however long the scan); then, in a write
transaction, delete the rows with those keys that still match the whole condition (a row changed in between
stays). Only the delete holds the write lock, for the few milliseconds it takes. PostgreSQL deletes in
REPEATABLE READ: a row that a cascade would remove but that committed after the delete's own snapshot makes it
fail with a serialization error instead of going unchecked; the batch is then rolled back and tried again.
Between batches a SQLite purge pauses as long as its last batch held the lock, so writers waiting in SQLite's
busy handler get their turn; `cancel` is looked at before every batch.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
import structlog

from jobs.errors import Cancelled
from jobs.manifest import utc_iso
from jobs.purge import database
from jobs.purge.batch import batch_limit, by_ctid, chosen_rows, next_batch
from jobs.purge.cascaded import add, cascade_counts, count_cascaded, removals, settle
from jobs.purge.held import Held, current_problem, held_condition
from jobs.purge.rules import OrphanRule, Rule, ThreadRule
from jobs.purge.kinds import DATE_GLOB, UNIX_MIN
from jobs.purge.schema import Cascade, Reference, RuleProblem, Target, cascades_of, orphaned, resolve

log = structlog.get_logger("jobs.purge")

BATCH_SIZE = 1000
MAX_OFFSET = timedelta(hours=14)  # the widest UTC offset ISO 8601 text can carry
LOCK_ATTEMPTS = 15  # SQLite: BEGIN IMMEDIATE waits BUSY_TIMEOUT_S each time, then we look at `cancel` and retry
MAX_PAUSE_S = 0.5
SERIALIZATION_ATTEMPTS = 5  # PostgreSQL: a batch refused because rows changed under it is tried again this often
STOPPING = "stopped: the worker is stopping"
NOT_STARTED = "not started: the worker is stopping"


@dataclass
class RuleResult:
    """What one rule deleted (or, in a dry run, would delete)."""

    rule: str
    cutoff: str | None = None  # ISO 8601 UTC: rows older than this go
    deleted: int = 0
    batches: int = 0
    cascades: list[str] = field(default_factory=list)  # foreign keys that follow the deletes (CASCADE, SET NULL)
    error: str | None = None
    would_delete: int | None = None  # dry run only: old rows now, an upper bound of what a purge deletes
    kept: int = 0  # old rows the backup does not hold (written or changed after its snapshot), left for a later purge
    cascaded: dict[str, int] = field(default_factory=dict)  # rows removed with them by ON DELETE CASCADE, per table
    would_cascade: dict[str, int] | None = None  # dry run only: the same for the old rows now (an upper bound)
    rows: dict[str, int] | None = None  # a thread rule (langgraph=AGE): rows deleted per table; `deleted` is threads
    table: str | None = None  # the rule's table, `[schema.]table` as the rule names it

    @property
    def removed(self) -> int:
        """Return every row that went: the rule's own and those its cascades removed."""
        if self.rows is not None:
            return sum(self.rows.values())
        return self.deleted + sum(self.cascaded.values())

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON-able fields for the outcome event and the catalog (`kept` only when rows were kept)."""
        fields: dict[str, Any] = {"rule": self.rule, "table": self.table, "deleted": self.deleted,
                                  "batches": self.batches,
                                  "cutoff": self.cutoff, "cascades": list(self.cascades), "error": self.error}
        if self.would_delete is not None:
            fields["would_delete"] = self.would_delete
        if self.kept:
            fields["kept"] = self.kept
        if self.cascaded:
            fields["cascaded"] = dict(self.cascaded)
        if self.would_cascade:
            fields["would_cascade"] = dict(self.would_cascade)
        if self.rows is not None:
            fields["rows"] = dict(self.rows)
        return fields


def rule_table(rule: Rule) -> str | None:
    """Return the rule's table as the outcome names it: `[schema.]table`."""
    if isinstance(rule, ThreadRule):
        return None  # a thread rule deletes from several tables (see RuleResult.rows)
    return f"{rule.schema}.{rule.table}" if rule.schema else rule.table


def cutoff_for(rule: Rule, now: datetime) -> datetime | None:
    """Given a rule and an aware `now`, return the UTC instant (whole seconds) before which rows are old (None for
    an orphan rule, which has no age)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if isinstance(rule, OrphanRule):
        return None
    return now.astimezone(timezone.utc).replace(microsecond=0) - rule.age


def _cutoff_text(rule: Rule, now: datetime) -> str | None:
    cutoff = cutoff_for(rule, now)
    return utc_iso(cutoff) if cutoff is not None else None


def old_rows(target: Target, cutoff: datetime | None) -> sa.ColumnElement[bool]:
    """Return the condition "this row is older than `cutoff`" for the target's column (an orphan rule: "this row
    points at no parent row", see schema.orphaned).

    SQLite text: `datetime(col)` reads every ISO 8601 variant (space or T, fractions, Z or +HH:MM, converted to UTC;
    no offset means UTC) and is compared with the cutoff as `YYYY-MM-DD HH:MM:SS`. Only text that starts with a date
    counts (DATE_GLOB): datetime() also reads a time of day alone ('12:30' is 2000-01-01 12:30) and Julian days
    written as text, and such rows stay. Before it, `col < D`, where D is the day after cutoff + 14 h, keeps only
    rows that can be old whatever their offset: the same rows, but an index on the column can find them. `typeof`
    keeps a stray number or blob out (SQLite's datetime() would read a number as a Julian day). SQLite numbers are
    Unix time in the rule's unit (seconds by default), as are PostgreSQL numbers ("epoch"); in milliseconds or
    microseconds only numbers from 1973 on in that unit count (a number in seconds there stays). PostgreSQL:
    timestamptz against the instant, timestamp (no time zone) as UTC, date: days that ended before the cutoff.
    """
    column = target.column
    if target.kind == "orphan":
        assert target.parent is not None
        return orphaned(column, target.parent)
    assert cutoff is not None
    if target.kind == "text":
        bound = ((cutoff + MAX_OFFSET).date() + timedelta(days=1)).isoformat()
        return sa.and_(sa.func.typeof(column) == "text", column.op("GLOB")(DATE_GLOB), column < bound,
                       sa.func.datetime(column) < cutoff.strftime("%Y-%m-%d %H:%M:%S"))
    if target.kind == "unix":
        return sa.and_(sa.func.typeof(column).in_(["integer", "real"]), _unix_old(target, column, cutoff))
    if target.kind == "epoch":
        return _unix_old(target, column, cutoff)
    if target.kind == "timestamptz":
        return column < cutoff
    if target.kind == "timestamp":
        return column < cutoff.replace(tzinfo=None)
    return column < cutoff.date()


def _unix_old(target: Target, column: sa.ColumnClause, cutoff: datetime) -> sa.ColumnElement[bool]:
    """Return "this Unix time, in the rule's unit, is before `cutoff`". In a smaller unit than seconds the number
    must also be a time of 1973 or later in that unit: a time in seconds among milliseconds (another writer's) is
    never read as a moment of January 1970, so it stays."""
    scale = target.rule.scale
    old = column < int(cutoff.timestamp()) * scale
    return sa.and_(column >= UNIX_MIN * scale, old) if scale > 1 else old


def count_old(connection: Connection, target: Target, cutoff: datetime | None) -> int:
    """Return how many rows of the target are older than `cutoff`."""
    return count_where(connection, target, old_rows(target, cutoff))


def count_where(connection: Connection, target: Target, condition: sa.ColumnElement[bool]) -> int:
    """Return how many rows of the target match `condition`."""
    count = connection.execute(sa.select(sa.func.count()).select_from(target.table).where(condition)).scalar_one()
    connection.commit()
    return count


def referencing_rows(connection: Connection, target: Target, reference: Reference,
                     condition: sa.ColumnElement[bool]) -> int:
    """Return how many rows of the referencing table point at rows of the target that match `condition`."""
    other = sa.table(reference.table, *(sa.column(name) for name in reference.columns),
                     schema=reference.schema).alias("referencing")
    joined = sa.and_(*(other.c[mine] == target.table.c[theirs]
                       for mine, theirs in zip(reference.columns, reference.referred, strict=True)))
    query = sa.select(sa.func.count()).select_from(other.join(target.table, joined)).where(condition)
    count = connection.execute(query).scalar_one()
    connection.commit()
    return count


def blocked_by(connection: Connection, target: Target, condition: sa.ColumnElement[bool]) -> str | None:
    """Return why the rule must not run because RESTRICT / NO ACTION keys still point at rows it would delete
    (those matching `condition`), or None."""
    for reference in target.references:
        if not reference.restricts:
            continue
        count = referencing_rows(connection, target, reference, condition)
        if count:
            return (f"{count} rows of {reference.table} still reference rows this rule would delete "
                    f"({reference.describe()}); delete them first or declare the key ON DELETE CASCADE, "
                    "nothing was deleted")
    return None


def purge_target(connection: Connection, target: Target, cutoff: datetime | None, cancel: threading.Event,
                 result: RuleResult, *, held: Held, batch_size: int = BATCH_SIZE, pause: float | None = None) -> bool:
    """Delete, in batches, the target's rows that are older than `cutoff` and that `held` (the backup the purge
    follows) holds with every row their delete takes along, adding to `result`. Return False if `cancel` stopped
    it early.

    The rows that may go when it starts are counted first (and the old rows kept, into `result.kept`); it stops
    once it has chosen that many (rows that turn up later with an old time wait for the next purge).

    A batch refused by the database (a foreign key that appeared meanwhile, a lock held too long) is rolled back
    whole and ends the rule with `result.error`; the batches before it stay deleted and counted.
    """
    sqlite = database.is_sqlite(connection)
    batch_size = batch_limit(batch_size, len(target.key), sqlite)
    last: tuple[Any, ...] | None = None
    chosen = 0
    try:
        old = old_rows(target, cutoff)
        cascades = cascades_of(connection, target)
        condition = sa.and_(old, held_condition(connection, held, target, cascades))
        paths = removals(cascades)
        connection.commit()
        # Counting first (an index on the column makes it cheap) saves the last batch's scan of every newer row.
        expected = count_where(connection, target, condition)
        result.kept = count_where(connection, target, old) - expected
    except sa.exc.DBAPIError as error:
        connection.rollback()
        if cancel.is_set():
            return False
        result.error = f"counting the old rows failed: {database.reason(error)}"
        return True
    while chosen < expected:
        if cancel.is_set():
            return False
        batch = None
        if target.key:
            try:
                batch = next_batch(connection, target, condition, last, batch_size)
                connection.commit()
            except sa.exc.DBAPIError as error:
                connection.rollback()
                if cancel.is_set():
                    return False
                result.error = f"reading the next batch failed: {database.reason(error)}"
                return True
            if batch is None:
                return True
            where = chosen_rows(batch, condition)
        else:
            where = by_ctid(target, condition, batch_size)
        started = time.monotonic()
        deleted = _delete_batch(connection, target, where, paths, cancel, result)
        if deleted is None:
            return result.error is not None  # no error: `cancel` was set while waiting for the lock
        held_for = time.monotonic() - started
        result.deleted += deleted
        result.batches += 1
        size = batch.size if batch is not None else deleted
        last = batch.last if batch is not None else None
        chosen += size
        if size < batch_size:
            return True
        wait = pause if pause is not None else (min(held_for, MAX_PAUSE_S) if sqlite else 0.0)
        if wait > 0 and chosen < expected:
            cancel.wait(wait)
    return True


def _delete_batch(connection: Connection, target: Target, where: sa.ColumnElement[bool],
                  paths: list[tuple[Cascade, ...]], cancel: threading.Event, result: RuleResult) -> int | None:
    """Run one batch's DELETE of the target's rows matching `where` in one write transaction, counting the rows
    its cascades (`paths`, see jobs.purge.cascaded) remove, into `result.cascaded`; return how many rows it
    deleted, or None when it failed (`result.error` says why) or `cancel` was set while waiting for the write
    lock."""
    for attempt in range(1, max(LOCK_ATTEMPTS, SERIALIZATION_ATTEMPTS) + 1):
        try:
            with database.write_transaction(connection):
                deleted, cascaded = _delete_counting(connection, target, where, paths)
            add(result.cascaded, settle(target, cascaded, deleted))
            return deleted
        except sa.exc.IntegrityError as error:
            result.error = (f"a batch was refused by a foreign key ({database.reason(error)}): rows referencing "
                            f"{target.table.name} (added during the purge, or reached through a cascade) block it; "
                            f"that batch was rolled back, {result.deleted} rows were deleted before it")
            return None
        except sa.exc.DBAPIError as error:
            if cancel.is_set():
                return None
            if database.is_locked(error) and attempt < LOCK_ATTEMPTS:
                continue
            if database.is_serialization_failure(error) and attempt < SERIALIZATION_ATTEMPTS:
                # rows changed under the batch (a cascade met a row newer than its snapshot): run it again, with
                # a new snapshot in which the condition sees that row
                log.info("purge.batch_retried", rule=result.rule, reason=database.reason(error), attempt=attempt)
                continue
            if database.is_locked(error):
                result.error = (f"another connection kept the database locked (a writer, or in rollback-journal "
                                f"mode a reader) for {LOCK_ATTEMPTS * database.BUSY_TIMEOUT_S:g} s; "
                                f"{result.deleted} rows were deleted before, the next cycle continues")
            elif database.is_serialization_failure(error):
                result.error = (f"rows kept changing under a batch ({database.reason(error)}), "
                                f"{SERIALIZATION_ATTEMPTS} times; {result.deleted} rows were deleted before it, the "
                                "next cycle continues")
            else:
                result.error = f"a batch failed: {database.reason(error)}; {result.deleted} rows were deleted before it"
            return None
    return None


def _delete_counting(connection: Connection, target: Target, where: sa.ColumnElement[bool],
                     paths: list[tuple[Cascade, ...]]) -> tuple[int, dict[str, int]]:
    """Delete the target's rows matching `where` and return how many the DELETE reported, with cascade_counts'
    counts (see jobs.purge.cascaded). SQLite counts first, under the batch's write lock. PostgreSQL counts in the
    DELETE's own statement, so the batch's REPEATABLE READ snapshot is the DELETE's: a row committed before it
    (an orphan's parent, inserted by the app a moment ago) is seen by its condition."""
    delete = sa.delete(target.table).where(where)
    if not paths:
        return connection.execute(delete).rowcount, {}
    if database.is_sqlite(connection):
        cascaded = count_cascaded(connection, target, paths, where)
        return connection.execute(delete).rowcount, cascaded
    queries = cascade_counts(target, paths, where)
    gone = delete.returning(sa.literal(1)).cte("gone")
    names = list(queries)
    row = connection.execute(sa.select(sa.select(sa.func.count()).select_from(gone).scalar_subquery(),
                                       *(queries[name] for name in names))).one()
    return row[0], dict(zip(names, row[1:], strict=True))


def run_rule(engine: Engine, rule: Rule, now: datetime, cancel: threading.Event, *, held: Held | None,
             dry_run: bool = False, batch_size: int = BATCH_SIZE,
             pause: float | None = None) -> tuple[RuleResult, bool]:
    """Resolve one rule and count (dry run, `held` None: every old row, an upper bound) or delete its old rows
    that `held` holds. Return the result and whether it ran to the end (False: `cancel` stopped it). Problems
    become `result.error`; nothing here raises for them.

    A statement still running when `cancel` is set (a long scan) is interrupted; a batch interrupted that way is
    rolled back whole.
    """
    if held is None and not dry_run:
        raise ValueError("a purge deletes only rows a verified backup holds: pass what that backup holds (held)")
    cutoff = cutoff_for(rule, now)
    result = RuleResult(rule=rule.describe(), table=rule_table(rule), cutoff=_cutoff_text(rule, now))
    finished = True
    try:
        with engine.connect() as connection, database.interruptible(connection, cancel):
            database.prepare(connection)
            target = resolve(connection, rule)
            connection.commit()
            result.cascades = target.cascades
            if dry_run:
                result.would_delete = count_old(connection, target, cutoff)
                paths = removals(cascades_of(connection, target))
                result.would_cascade = settle(target, count_cascaded(connection, target, paths,
                                                                     old_rows(target, cutoff)), result.would_delete)
                connection.commit()
            result.error = blocked_by(connection, target, old_rows(target, cutoff))
            if not dry_run and result.error is None:
                assert held is not None
                result.error = current_problem(connection, held)
                if result.error is None:
                    finished = purge_target(connection, target, cutoff, cancel, result, held=held,
                                            batch_size=batch_size, pause=pause)
    except (RuleProblem, sa.exc.DBAPIError) as caught:
        return rule_outcome(rule, result, finished, cancel, dry_run, caught)
    return rule_outcome(rule, result, finished, cancel, dry_run)


def rule_outcome(rule: Rule, result: RuleResult, finished: bool, cancel: threading.Event, dry_run: bool,
           error: Exception | None = None) -> tuple[RuleResult, bool]:
    """End one rule's run (an age, orphan or thread rule alike): turn what stopped it (`error`: a RuleProblem or a
    database error; a database error while `cancel` is set is the stop, not a failure) into its result's error, say
    STOPPING when it was stopped half-way, log the outcome; return the result and whether the rule finished."""
    if isinstance(error, RuleProblem):
        result.error = str(error).removeprefix(f"{rule.describe()}: ")
    elif error is not None:
        finished = not cancel.is_set()
        result.error = None if cancel.is_set() else f"database error: {database.reason(error)}"
    if not finished and result.error is None:
        result.error = STOPPING
    (log.warning if result.error else log.info)("purge.rule", dry_run=dry_run, **result.as_dict())
    return result, finished


def stop(results: list[RuleResult], rules: Sequence[Rule], now: datetime) -> Cancelled:
    """Return the Cancelled to raise when `cancel` stopped a purge: the results so far, every rule not started."""
    for rule in rules[len(results):]:
        results.append(RuleResult(rule=rule.describe(), table=rule_table(rule), cutoff=_cutoff_text(rule, now),
                                  error=NOT_STARTED, rows={} if isinstance(rule, ThreadRule) else None))
    deleted = sum(result.removed for result in results)  # rows: a thread rule's rows, cascades included
    return Cancelled(f"the worker is stopping; table retention stopped between batches after deleting {deleted} rows",
                     stage="purge", fields={"purge": [result.as_dict() for result in results]})
