"""Counting and deleting old rows, in small batches, each its own short transaction.

A batch: read the next `batch_size` keys (rowid or primary key) of old rows after the last batch, in key order,
in a read transaction (in WAL mode it never blocks the app's writers, however long the scan); then, in a write
transaction, delete the rows with those keys that are still old (the cutoff condition is repeated, so a row
changed in between stays). Only the delete holds the write lock, for the few milliseconds it takes. Between
batches a SQLite purge pauses as long as its last batch held the lock, so writers waiting in SQLite's busy
handler get their turn; `cancel` is looked at before every batch.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
import sqlite3
import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
import structlog

from jobs.artifacts import utc_iso
from jobs.errors import Cancelled
from jobs.purge import database
from jobs.purge.rules import PurgeRule
from jobs.purge.schema import DATE_GLOB, Reference, RuleProblem, Target, resolve

log = structlog.get_logger("jobs.purge")

BATCH_SIZE = 1000
MAX_OFFSET = timedelta(hours=14)  # the widest UTC offset ISO 8601 text can carry
LOCK_ATTEMPTS = 15  # SQLite: BEGIN IMMEDIATE waits BUSY_TIMEOUT_S each time, then we look at `cancel` and retry
MAX_PAUSE_S = 0.5
DENSE = 8  # a batch's key range may hold this many times the rows chosen before its keys are listed instead
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
    would_delete: int | None = None  # dry run only

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON-able fields for the outcome event and the catalog."""
        fields: dict[str, Any] = {"rule": self.rule, "deleted": self.deleted, "batches": self.batches,
                                  "cutoff": self.cutoff, "cascades": list(self.cascades), "error": self.error}
        if self.would_delete is not None:
            fields["would_delete"] = self.would_delete
        return fields


def cutoff_for(rule: PurgeRule, now: datetime) -> datetime:
    """Given a rule and an aware `now`, return the UTC instant (whole seconds) before which rows are old."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(timezone.utc).replace(microsecond=0) - rule.age


def old_rows(target: Target, cutoff: datetime) -> sa.ColumnElement[bool]:
    """Return the condition "this row is older than `cutoff`" for the target's column.

    SQLite text: `datetime(col)` reads every ISO 8601 variant (space or T, fractions, Z or +HH:MM, converted to UTC;
    no offset means UTC) and is compared with the cutoff as `YYYY-MM-DD HH:MM:SS`. Only text that starts with a date
    counts (DATE_GLOB): datetime() also reads a time of day alone ('12:30' is 2000-01-01 12:30) and Julian days
    written as text, and such rows stay. Before it, `col < D`, where D is the day after cutoff + 14 h, keeps only
    rows that can be old whatever their offset: the same rows, but an index on the column can find them. `typeof`
    keeps a stray number or blob out (SQLite's datetime() would read a number as a Julian day). SQLite numbers are Unix seconds. PostgreSQL: timestamptz against the instant, timestamp
    (no time zone) as UTC, date: days that ended before the cutoff.
    """
    column = target.column
    if target.kind == "text":
        bound = ((cutoff + MAX_OFFSET).date() + timedelta(days=1)).isoformat()
        return sa.and_(sa.func.typeof(column) == "text", column.op("GLOB")(DATE_GLOB), column < bound,
                       sa.func.datetime(column) < cutoff.strftime("%Y-%m-%d %H:%M:%S"))
    if target.kind == "unix":
        return sa.and_(sa.func.typeof(column).in_(["integer", "real"]), column < int(cutoff.timestamp()))
    if target.kind == "timestamptz":
        return column < cutoff
    if target.kind == "timestamp":
        return column < cutoff.replace(tzinfo=None)
    return column < cutoff.date()


def count_old(connection: Connection, target: Target, cutoff: datetime) -> int:
    """Return how many rows of the target are older than `cutoff`."""
    query = sa.select(sa.func.count()).select_from(target.table).where(old_rows(target, cutoff))
    count = connection.execute(query).scalar_one()
    connection.commit()
    return count


def referencing_rows(connection: Connection, target: Target, reference: Reference, cutoff: datetime) -> int:
    """Return how many rows of the referencing table point at old rows of the target."""
    other = sa.table(reference.table, *(sa.column(name) for name in reference.columns),
                     schema=reference.schema).alias("referencing")
    joined = sa.and_(*(other.c[mine] == target.table.c[theirs]
                       for mine, theirs in zip(reference.columns, reference.referred, strict=True)))
    query = sa.select(sa.func.count()).select_from(other.join(target.table, joined)).where(old_rows(target, cutoff))
    count = connection.execute(query).scalar_one()
    connection.commit()
    return count


def blocked_by(connection: Connection, target: Target, cutoff: datetime) -> str | None:
    """Return why the rule must not run because RESTRICT / NO ACTION keys still point at its old rows, or None."""
    for reference in target.references:
        if not reference.restricts:
            continue
        count = referencing_rows(connection, target, reference, cutoff)
        if count:
            return (f"{count} rows of {reference.table} still reference rows this rule would delete "
                    f"({reference.describe()}); delete them first or declare the key ON DELETE CASCADE, "
                    "nothing was deleted")
    return None


@dataclass(frozen=True)
class Batch:
    """The next rows to delete: which (a key range or a list of keys), the last key, how many were chosen."""

    chosen: sa.ColumnElement[bool]
    last: tuple[Any, ...]
    size: int


def next_batch(connection: Connection, target: Target, condition: sa.ColumnElement[bool],
               last: tuple[Any, ...] | None, batch_size: int) -> Batch | None:
    """Return the next `batch_size` old rows after key `last` (in key order), or None when there are no more.

    A single integer key whose chosen values are dense (the usual case: rows were inserted in time order) gives a
    range, `key BETWEEN lo AND hi`, read as one row (lo, hi, count); otherwise the keys themselves are listed.
    """
    chosen = sa.select(*target.key).select_from(target.table).where(condition)
    if last is not None:
        chosen = chosen.where(_after(target.key, last))
    chosen = chosen.order_by(*target.key).limit(batch_size)
    if len(target.key) == 1:
        key = target.key[0]
        window = chosen.subquery()
        low, high, size = connection.execute(
            sa.select(sa.func.min(window.c[0]), sa.func.max(window.c[0]), sa.func.count())).one()
        if not size:
            return None
        if isinstance(low, int) and isinstance(high, int) and high - low < DENSE * size:
            return Batch(chosen=key.between(low, high), last=(high,), size=size)
        values = list(connection.execute(chosen).scalars())
        return Batch(chosen=key.in_(values), last=(values[-1],), size=len(values)) if values else None
    keys = [tuple(row) for row in connection.execute(chosen)]
    if not keys:
        return None
    return Batch(chosen=sa.tuple_(*target.key).in_(keys), last=keys[-1], size=len(keys))


def purge_target(connection: Connection, target: Target, cutoff: datetime, cancel: threading.Event,
                 result: RuleResult, batch_size: int = BATCH_SIZE, pause: float | None = None) -> bool:
    """Delete the target's old rows in batches, adding to `result`. Return False if `cancel` stopped it early.

    The rows old when it starts are counted first; it stops once it has chosen that many (rows that turn up
    later with an old time wait for the next purge).

    A batch refused by the database (a foreign key that appeared meanwhile, a lock held too long) is rolled back
    whole and ends the rule with `result.error`; the batches before it stay deleted and counted.
    """
    sqlite = database.is_sqlite(connection)
    batch_size = _batch_limit(batch_size, len(target.key), sqlite)
    condition = old_rows(target, cutoff)
    last: tuple[Any, ...] | None = None
    chosen = 0
    try:
        # Counting first (an index on the column makes it cheap) saves the last batch's scan of every newer row.
        expected = count_old(connection, target, cutoff)
    except sa.exc.DBAPIError as error:
        connection.rollback()
        if cancel.is_set():
            return False
        result.error = f"counting the old rows failed: {database.reason(error)}"
        return True
    while chosen < expected:
        if cancel.is_set():
            return False
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
        started = time.monotonic()
        deleted = _delete_batch(connection, target, batch.chosen, condition, cancel, result)
        if deleted is None:
            return result.error is not None  # no error: `cancel` was set while waiting for the lock
        held = time.monotonic() - started
        result.deleted += deleted
        result.batches += 1
        last = batch.last
        chosen += batch.size
        if batch.size < batch_size:
            return True
        wait = pause if pause is not None else (min(held, MAX_PAUSE_S) if sqlite else 0.0)
        if wait > 0 and chosen < expected:
            cancel.wait(wait)
    return True


def _delete_batch(connection: Connection, target: Target, chosen: sa.ColumnElement[bool],
                  condition: sa.ColumnElement[bool], cancel: threading.Event, result: RuleResult) -> int | None:
    """Delete the chosen rows that are still old in one write transaction; return how many, or None when it failed
    (`result.error` says why) or `cancel` was set while waiting for the write lock."""
    statement = sa.delete(target.table).where(chosen, condition)
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            with database.write_transaction(connection):
                return connection.execute(statement).rowcount
        except sa.exc.IntegrityError as error:
            result.error = (f"a batch was refused by a foreign key ({database.reason(error)}): rows referencing "
                            f"{target.table.name} (added during the purge, or reached through a cascade) block it; "
                            f"that batch was rolled back, {result.deleted} rows were deleted before it")
            return None
        except sa.exc.DBAPIError as error:
            if database.is_locked(error) and attempt < LOCK_ATTEMPTS and not cancel.is_set():
                continue
            if cancel.is_set():
                return None
            if database.is_locked(error):
                result.error = (f"another connection held the database's write lock for "
                                f"{LOCK_ATTEMPTS * database.BUSY_TIMEOUT_S:g} s; {result.deleted} rows were deleted "
                                "before, the next cycle continues")
            else:
                result.error = f"a batch failed: {database.reason(error)}; {result.deleted} rows were deleted before it"
            return None
    return None


def _after(key: Sequence[sa.ColumnClause], last: tuple[Any, ...]) -> sa.ColumnElement[bool]:
    if len(key) == 1:
        return key[0] > last[0]
    return sa.tuple_(*key) > sa.tuple_(*last)


def _batch_limit(batch_size: int, key_columns: int, sqlite: bool) -> int:
    """Keep a batch's IN list within SQLite's limit on bound parameters (999 before 3.32)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if sqlite and sqlite3.sqlite_version_info < (3, 32, 0):
        return max(1, min(batch_size, 900 // key_columns - 2))
    return min(batch_size, 30_000 // key_columns)


def run_rule(engine: Engine, rule: PurgeRule, now: datetime, cancel: threading.Event, *, dry_run: bool,
             batch_size: int = BATCH_SIZE, pause: float | None = None) -> tuple[RuleResult, bool]:
    """Resolve one rule and count (dry run) or delete its old rows. Return the result and whether it ran to the end
    (False: `cancel` stopped it). Problems become `result.error`; nothing here raises for them.

    A statement still running when `cancel` is set (a long scan) is interrupted; a batch interrupted that way is
    rolled back whole.
    """
    cutoff = cutoff_for(rule, now)
    result = RuleResult(rule=rule.describe(), cutoff=utc_iso(cutoff))
    finished = True
    try:
        with engine.connect() as connection, database.interruptible(connection, cancel):
            database.prepare(connection)
            target = resolve(connection, rule)
            connection.commit()
            result.cascades = target.cascades
            if dry_run:
                result.would_delete = count_old(connection, target, cutoff)
            result.error = blocked_by(connection, target, cutoff)
            if not dry_run and result.error is None:
                finished = purge_target(connection, target, cutoff, cancel, result, batch_size, pause)
    except RuleProblem as problem:
        result.error = str(problem).removeprefix(f"{rule.describe()}: ")
    except sa.exc.DBAPIError as error:
        finished = not cancel.is_set()
        result.error = None if cancel.is_set() else f"database error: {database.reason(error)}"
    if not finished and result.error is None:
        result.error = STOPPING
    (log.warning if result.error else log.info)("purge.rule", dry_run=dry_run, **result.as_dict())
    return result, finished


def stop(results: list[RuleResult], rules: Sequence[PurgeRule], now: datetime) -> Cancelled:
    """Return the Cancelled to raise when `cancel` stopped a purge: the results so far, every rule not started."""
    for rule in rules[len(results):]:
        results.append(RuleResult(rule=rule.describe(), cutoff=utc_iso(cutoff_for(rule, now)), error=NOT_STARTED))
    deleted = sum(result.deleted for result in results)
    return Cancelled(f"the worker is stopping; table retention stopped between batches after deleting {deleted} rows",
                     stage="purge", fields={"purge": [result.as_dict() for result in results]})
