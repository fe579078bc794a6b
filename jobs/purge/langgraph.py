"""LangGraph threads (`langgraph=AGE`): delete whole threads of a LangGraph checkpointer whose newest checkpoint is
older than AGE, as LangGraph's own `delete_thread` would, and only threads the verified backup holds entirely.

The stores: the SQLite saver (langgraph-checkpoint-sqlite: tables `checkpoints`, `writes`) and the Postgres saver
(langgraph-checkpoint-postgres: `checkpoints`, `checkpoint_blobs`, `checkpoint_writes`; `checkpoint_migrations`
is never touched). A thread's age comes from its checkpoints: on SQLite from the checkpoint ids, time-ordered
UUIDv6 values that carry their creation time (so "newest checkpoint older than the cutoff" is "every id sorts
below the smallest UUIDv6 of the cutoff's instant"); on PostgreSQL from `ts` in the checkpoint JSON.

A thread goes when every checkpoint of it (every namespace) is old and the backup holds every row of it in every
table (jobs.purge.held). A large thread goes in several short write transactions, oldest checkpoints first (with
their writes), each namespace's newest checkpoint (the root graph's and every subgraph's) last together with the
thread's blobs (PostgreSQL blobs are shared by checkpoints), so an interrupted purge leaves a thread whose newest
checkpoints still load and resume. Each transaction checks the thread again
first: SQLite holds the write lock for it (BEGIN IMMEDIATE); PostgreSQL locks `checkpoints` against writers
(EXCLUSIVE, readers go on) for those few milliseconds, so a checkpoint the app adds meanwhile is seen and keeps
the thread.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
import re
import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.engine import Connection, Engine
import structlog

from jobs.manifest import utc_iso
from jobs.purge import database
from jobs.purge.delete import LOCK_ATTEMPTS, MAX_PAUSE_S, RuleResult, cutoff_for, rule_outcome
from jobs.purge.held import Held, current_problem, held_condition
from jobs.purge.rules import ThreadRule
from jobs.purge.schema import RuleProblem, Target, table_target

log = structlog.get_logger("jobs.purge")

SQLITE_TABLES = ("checkpoints", "writes")
POSTGRES_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
COLUMNS = {"checkpoints": ("thread_id", "checkpoint_ns", "checkpoint_id", "checkpoint"),
           "writes": ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx"),
           "checkpoint_writes": ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx"),
           "checkpoint_blobs": ("thread_id", "checkpoint_ns", "channel", "version")}
CHECKPOINTS_PER_STEP = 100  # checkpoints (with their writes) deleted per transaction of a large thread
THREADS_PER_READ = 500
SAMPLE = 200
UUID6 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-6[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX = "[0-9a-f]"
UUID6_GLOB = f"{_HEX * 8}-{_HEX * 4}-6{_HEX * 3}-{_HEX * 4}-{_HEX * 12}"
GREGORIAN = datetime(1582, 10, 15, tzinfo=timezone.utc)  # UUID time counts 100 ns ticks from here


@dataclass(frozen=True)
class Store:
    """A LangGraph checkpointer's tables, resolved: `checkpoints` first."""

    rule: ThreadRule
    sqlite: bool
    tables: tuple[Target, ...]

    @property
    def checkpoints(self) -> Target:
        return self.tables[0]


def uuid6_time(text: str) -> datetime:
    """Given a UUIDv6 as text, return the instant it was made (UTC, 100 ns ticks rounded to microseconds)."""
    digits = text.replace("-", "")
    ticks = (int(digits[:12], 16) << 12) | int(digits[13:16], 16)
    return GREGORIAN + timedelta(microseconds=ticks // 10)


def uuid6_floor(moment: datetime) -> str:
    """Return the smallest UUIDv6 text of `moment`: an id sorts below it exactly when it was made before."""
    ticks = (moment - GREGORIAN) // timedelta(microseconds=1) * 10
    digits = f"{ticks >> 12:012x}6{ticks & 0xFFF:03x}" + "0" * 16
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def resolve_store(connection: Connection, rule: ThreadRule) -> Store:
    """Return the LangGraph store the rule names. Raise RuleProblem when the tables do not look like one (missing
    tables or columns, checkpoint ids that are not UUIDv6, `ts` that is not a time), or a delete there would set
    off triggers or foreign keys."""
    sqlite = connection.dialect.name == "sqlite"
    names = SQLITE_TABLES if sqlite else POSTGRES_TABLES
    tables = tuple(table_target(connection, rule, rule.schema, name, "thread_id") for name in names)
    saver = "langgraph-checkpoint-sqlite" if sqlite else "langgraph-checkpoint-postgres"
    for target in tables:
        missing = [column for column in COLUMNS[target.table.name] if column not in target.columns]
        if missing:
            raise RuleProblem(f"{rule.describe()}: table {target.table.name} has no column {missing[0]}, so it "
                              f"is not {saver}'s; name the schema of the saver's tables (langgraph:SCHEMA=AGE)")
    store = Store(rule=rule, sqlite=sqlite, tables=tables)
    checkpoints = store.checkpoints.table
    if sqlite:
        ids = [row[0] for order in (sa.asc, sa.desc) for row in connection.execute(
            sa.select(checkpoints.c.checkpoint_id).order_by(order(checkpoints.c.checkpoint_id)).limit(SAMPLE))]
        for value in ids:
            if not isinstance(value, str) or not UUID6.fullmatch(value):
                raise RuleProblem(f"{rule.describe()}: checkpoint id {value!r} is not a UUIDv6, so the thread's age "
                                  "cannot be read from it; this needs checkpoints written by LangGraph's SQLite saver")
    else:
        declared = sa.inspect(connection).get_columns("checkpoints", schema=checkpoints.schema)
        kind = next(column["type"] for column in declared if column["name"] == "checkpoint")
        if not isinstance(kind, JSONB):
            raise RuleProblem(f"{rule.describe()}: checkpoints.checkpoint is {kind}, not jsonb, so it is not {saver}'s")
        stamp = checkpoints.c.checkpoint.op("->>")("ts")
        for (value,) in connection.execute(sa.select(stamp).limit(SAMPLE)):
            try:
                datetime.fromisoformat(str(value))
            except ValueError:
                raise RuleProblem(f"{rule.describe()}: a checkpoint's ts is {value!r}, not a time, so the thread's "
                                  "age cannot be read from it") from None
    connection.commit()
    return store


def _old(store: Store, checkpoint: sa.FromClause, cutoff: datetime) -> sa.ColumnElement[bool]:
    """Return "this checkpoint was made before `cutoff`" (a checkpoint whose time cannot be read is never old)."""
    if store.sqlite:
        ids = checkpoint.c.checkpoint_id
        return sa.and_(sa.func.typeof(ids) == "text", ids.op("GLOB")(UUID6_GLOB), ids < uuid6_floor(cutoff))
    stamp = checkpoint.c.checkpoint.op("->>")("ts")
    return sa.and_(stamp.is_not(None), sa.cast(stamp, TIMESTAMP(timezone=True)) < cutoff)


def thread_goes(connection: Connection, store: Store, thread: sa.ColumnElement[Any], cutoff: datetime,
                held: Held | None) -> sa.ColumnElement[bool]:
    """Return the condition on a thread id: the thread has checkpoints, all made before `cutoff`, and (with
    `held`) the backup holds every row of it, in every table of the store."""
    checkpoint = store.checkpoints.table.alias("newer")
    conditions = [
        sa.select(sa.literal(1)).select_from(checkpoint).where(checkpoint.c.thread_id == thread).exists(),
        ~sa.select(sa.literal(1)).select_from(checkpoint).where(
            checkpoint.c.thread_id == thread, ~_old(store, checkpoint, cutoff)).exists()]
    for target in store.tables if held is not None else ():
        lacking = ~held_condition(connection, held, target, ())
        conditions.append(~sa.select(sa.literal(1)).select_from(target.table).where(
            target.table.c.thread_id == thread, lacking).correlate_except(target.table).exists())
    return sa.and_(*conditions)


def old_threads(connection: Connection, store: Store, cutoff: datetime, held: Held | None,
                after: str | None = None, limit: int | None = None) -> sa.Select:
    """Return the query of the thread ids that go (see thread_goes), in order, after `after`."""
    ids = sa.select(store.checkpoints.table.c.thread_id.label("thread_id")).distinct()
    if after is not None:
        ids = ids.where(store.checkpoints.table.c.thread_id > after)
    threads = ids.subquery("threads")
    query = sa.select(threads.c.thread_id).where(thread_goes(connection, store, threads.c.thread_id, cutoff, held))
    query = query.order_by(threads.c.thread_id)
    return query.limit(limit) if limit else query


def run_threads(engine: Engine, rule: ThreadRule, now: datetime, cancel: threading.Event, *, held: Held | None,
                dry_run: bool = False, pause: float | None = None,
                step: int = CHECKPOINTS_PER_STEP) -> tuple[RuleResult, bool]:
    """Count (dry run: `would_delete`, threads) or delete the threads the rule makes old. Return the result
    (`deleted`: threads, `rows`: rows per table, `kept`: old threads the backup does not hold) and whether it ran
    to the end (False: `cancel` stopped it). Problems become `result.error`."""
    cutoff = cutoff_for(rule, now)
    assert cutoff is not None
    result = RuleResult(rule=rule.describe(), cutoff=utc_iso(cutoff), rows={})
    finished = True
    try:
        with engine.connect() as connection, database.interruptible(connection, cancel):
            database.prepare(connection)
            store = resolve_store(connection, rule)
            every = connection.execute(sa.select(sa.func.count()).select_from(
                old_threads(connection, store, cutoff, None).subquery())).scalar_one()
            connection.commit()
            if dry_run:
                result.would_delete = every
            elif (problem := current_problem(connection, held)) is not None:  # type: ignore[arg-type]
                result.error = problem
            else:
                finished = _delete_threads(connection, store, cutoff, cancel, result, held, pause, step)
                result.kept = max(0, every - result.deleted) if finished else 0
    except (RuleProblem, sa.exc.DBAPIError) as caught:
        return rule_outcome(rule, result, finished, cancel, dry_run, caught)
    return rule_outcome(rule, result, finished, cancel, dry_run)


@dataclass
class _Pace:
    """The pause before each write transaction of a thread rule but the first, as delete batches pause between
    theirs (jobs.purge.delete): SQLite waits as long as the last one held the write lock (at most MAX_PAUSE_S),
    so the app's writers waiting in its busy handler get their turn between threads as between steps."""

    pause: float | None
    sqlite: bool
    held_for: float | None = None  # the last transaction's time; None before the first

    def wait(self, cancel: threading.Event) -> None:
        if self.held_for is None:
            return
        wait = self.pause if self.pause is not None else (min(self.held_for, MAX_PAUSE_S) if self.sqlite else 0)
        if wait > 0:
            cancel.wait(wait)


def _delete_threads(connection: Connection, store: Store, cutoff: datetime, cancel: threading.Event,
                    result: RuleResult, held: Held | None, pause: float | None, step: int) -> bool:
    last: str | None = None
    pace = _Pace(pause=pause, sqlite=store.sqlite)
    while True:
        threads = [row[0] for row in connection.execute(
            old_threads(connection, store, cutoff, held, after=last, limit=THREADS_PER_READ))]
        connection.commit()
        for thread in threads:
            if not _delete_thread(connection, store, thread, cutoff, cancel, result, held, pace, step):
                return False
        if len(threads) < THREADS_PER_READ:
            return True
        last = threads[-1]


def _delete_thread(connection: Connection, store: Store, thread: str, cutoff: datetime, cancel: threading.Event,
                   result: RuleResult, held: Held | None, pace: _Pace, step: int) -> bool:
    """Delete one thread, oldest checkpoints first, `step` checkpoints per transaction, pausing before each (see
    _Pace); return False if `cancel` stopped it (what went stays gone: the thread's newest checkpoints are left,
    and load)."""
    while True:
        pace.wait(cancel)
        if cancel.is_set():
            return False
        started = time.monotonic()
        done = database.retry_locked(lambda: _step(connection, store, thread, cutoff, held, step), cancel,
                                     LOCK_ATTEMPTS)
        pace.held_for = time.monotonic() - started
        if done is None:
            return True  # changed since it was chosen (a new checkpoint), or gone: it stays
        counts, whole = done
        for name, count in counts.items():
            result.rows[name] = result.rows.get(name, 0) + count  # type: ignore[index]
        result.batches += 1
        if whole:
            result.deleted += 1
            return True


def _step(connection: Connection, store: Store, thread: str, cutoff: datetime, held: Held | None,
          step: int) -> tuple[dict[str, int], bool] | None:
    """In one write transaction: check the thread again, then delete its `step` oldest checkpoints with their
    writes, but never a namespace's newest checkpoint (the root's or a subgraph's), or, when only those are left
    (or the whole thread is no more than `step` checkpoints), the rest of it with its blobs. Return the rows
    deleted per table and whether the thread is gone, or None when it no longer goes."""
    checkpoints = store.checkpoints.table
    counts: dict[str, int] = {}
    with database.write_transaction(connection):
        if not store.sqlite:  # writers of checkpoints wait the few milliseconds; readers go on
            where = f'"{checkpoints.schema}".' if checkpoints.schema else ""
            connection.exec_driver_sql(f'LOCK TABLE {where}"{checkpoints.name}" IN EXCLUSIVE MODE')
        if connection.execute(sa.select(thread_goes(connection, store, sa.literal(thread), cutoff,
                                                    held))).scalar_one() is not True:
            return None
        mine = checkpoints.c.thread_id == thread
        whole = connection.execute(sa.select(sa.func.count()).select_from(
            sa.select(checkpoints.c.checkpoint_id).where(mine).limit(step + 1).subquery())).scalar_one() <= step
        older: list[Any] = []
        if not whole:  # its oldest checkpoints that are not their namespace's newest
            older = [row[0] for row in connection.execute(
                sa.select(checkpoints.c.checkpoint_id).where(mine, _superseded(checkpoints, checkpoints))
                .order_by(checkpoints.c.checkpoint_id).limit(step))]
            whole = not older  # only each namespace's newest checkpoint is left: the last step
        for target in (*store.tables[1:], store.checkpoints):
            table = target.table
            condition = table.c.thread_id == thread
            if not whole:
                if "checkpoint_id" not in target.columns:
                    continue  # blobs are shared by the thread's checkpoints: they go with the last ones
                condition = sa.and_(condition, table.c.checkpoint_id <= older[-1], _superseded(table, checkpoints))
            counts[table.name] = connection.execute(sa.delete(table).where(condition)).rowcount
    return counts, whole


def _superseded(table: sa.TableClause, checkpoints: sa.TableClause) -> sa.ColumnElement[bool]:
    """Return "this row's checkpoint is not the newest of its thread's namespace" (a row of `checkpoints` or of a
    writes table): a step that deletes only such rows leaves every namespace's newest checkpoint, with its writes,
    so the thread still loads (its root state and each subgraph's)."""
    newer = checkpoints.alias("newest")
    return sa.select(sa.literal(1)).select_from(newer).where(
        newer.c.thread_id == table.c.thread_id, newer.c.checkpoint_ns == table.c.checkpoint_ns,
        newer.c.checkpoint_id > table.c.checkpoint_id).exists()
