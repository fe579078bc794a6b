"""One batch of a purge: which rows it takes, and the DELETE that removes them, whatever the table's key.

Keyed tables (SQLite's rowid, or the primary key: integer, uuid, text, composite) go in key order: the next
`batch_size` keys after the last batch's, read in a read transaction, then deleted in a short write transaction
by a DELETE that repeats the whole condition (a row changed in between stays). Only one integer key column gives
key ranges (`key BETWEEN lo AND hi`, when the chosen keys are dense); other keys are listed, so no min() or
max() ever runs on a uuid. A PostgreSQL table without a primary key goes by ctid, which is only stable within one
statement: its batch is a single DELETE that chooses the rows and removes them.
"""

from collections.abc import Sequence
from dataclasses import dataclass
import sqlite3
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from jobs.purge.schema import Target

DENSE = 8  # a batch's key range may hold this many times the rows chosen before its keys are listed instead


@dataclass(frozen=True)
class Batch:
    """The next rows to delete: which (a key range or a list of keys), the last key, how many were chosen."""

    chosen: sa.ColumnElement[bool]
    last: tuple[Any, ...]
    size: int


def next_batch(connection: Connection, target: Target, condition: sa.ColumnElement[bool],
               last: tuple[Any, ...] | None, batch_size: int) -> Batch | None:
    """Return the next `batch_size` rows matching `condition` after key `last` (in key order), or None when there
    are no more. The target must have a key (see `delete_by_ctid` for tables without one).

    A single integer key whose chosen values are dense (the usual case: rows were inserted in time order) gives a
    range, `key BETWEEN lo AND hi`, read as one row (lo, hi, count); any other key lists the keys themselves.
    """
    if not target.key:
        raise ValueError(f"table {target.table.name} has no key to batch by; use delete_by_ctid")
    chosen = sa.select(*target.key).select_from(target.table).where(condition)
    if last is not None:
        chosen = chosen.where(after(target.key, last))
    chosen = chosen.order_by(*target.key).limit(batch_size)
    if target.integer_key:
        (key,) = target.key
        window = chosen.subquery()
        low, high, size = connection.execute(
            sa.select(sa.func.min(window.c[0]), sa.func.max(window.c[0]), sa.func.count())).one()
        if not size:
            return None
        if isinstance(low, int) and isinstance(high, int) and high - low < DENSE * size:
            return Batch(chosen=key.between(low, high), last=(high,), size=size)
    keys = [tuple(row) for row in connection.execute(chosen)]
    if not keys:
        return None
    if len(target.key) == 1:
        return Batch(chosen=target.key[0].in_([key for key, in keys]), last=keys[-1], size=len(keys))
    return Batch(chosen=sa.tuple_(*target.key).in_(keys), last=keys[-1], size=len(keys))


def delete_chosen(target: Target, batch: Batch, condition: sa.ColumnElement[bool]) -> sa.Delete:
    """Return the DELETE of a batch's rows that still match `condition`."""
    return sa.delete(target.table).where(chosen_rows(batch, condition))


def chosen_rows(batch: Batch, condition: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    """Return the WHERE of `delete_chosen`: the batch's rows that still match `condition`."""
    return sa.and_(batch.chosen, condition)


def delete_by_ctid(target: Target, condition: sa.ColumnElement[bool], batch_size: int) -> sa.Delete:
    """Return one DELETE that removes up to about `batch_size` rows matching `condition` from a PostgreSQL table
    without a key: `ctid = ANY(ARRAY(SELECT ctid … LIMIT n)) AND condition` (a TID scan; ctid is stable within the
    statement). The condition is repeated outside: a ctid names a row only within one table, and a partitioned or
    inherited table holds several, so a row of another partition with the same ctid goes only if it is itself old
    and held (then it is one the rule deletes anyway)."""
    return sa.delete(target.table).where(by_ctid(target, condition, batch_size))


def by_ctid(target: Target, condition: sa.ColumnElement[bool], batch_size: int) -> sa.ColumnElement[bool]:
    """Return the WHERE of `delete_by_ctid` (its cascades are counted with it, in the same transaction)."""
    chosen = sa.select(target.table.c.ctid).where(condition).limit(batch_size).correlate(None).scalar_subquery()
    return sa.and_(target.table.c.ctid == sa.any_(sa.func.array(chosen)), condition)


def after(key: Sequence[sa.ColumnElement[Any]], last: tuple[Any, ...]) -> sa.ColumnElement[bool]:
    """Return "the key comes after `last`" (a row comparison for composite keys)."""
    if len(key) == 1:
        return key[0] > last[0]
    return sa.tuple_(*key) > sa.tuple_(*last)


def batch_limit(batch_size: int, key_columns: int, sqlite: bool) -> int:
    """Keep a batch's IN list within SQLite's limit on bound parameters (999 before 3.32)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    columns = max(1, key_columns)
    if sqlite and sqlite3.sqlite_version_info < (3, 32, 0):
        return max(1, min(batch_size, 900 // columns - 2))
    return min(batch_size, 30_000 // columns)
