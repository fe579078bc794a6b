"""Which rows a verified backup holds: the one place table retention asks before it deletes a row. A row goes only
when the backup the purge follows holds it as it is now; rows written or changed after the snapshot stay,
whatever their time (an offline client syncing old events, a backfill, a clock-skewed writer).

PostgreSQL: pg_dump reads a snapshot the worker exported (see jobs.engines.postgres), recorded in the manifest's
`holds`: `pg_snapshot` (`xmin:xmax:xip,…` as pg_current_snapshot() shows it) and `pg_running` (the transaction
ids that held a transaction lock right after the snapshot was taken: running transactions AND their
subtransactions). A row version is held when the transaction that wrote it (the row's `xmin`) had ended before
the snapshot, so that if it committed, the row is in the dump:
- xmin precedes the snapshot's xmin: every such transaction had ended;
- or xmin lies between the snapshot's xmin and `horizon`, and is neither in the in-progress list nor running.
  The in-progress list names top-level transactions only: a subtransaction's own xid is not in it while its
  parent runs, so "not listed" alone does not prove "ended" (pg_visible_in_snapshot has the same caveat). A
  subtransaction holds its xid's lock until its parent ends, so the running list names it, as long as that parent
  still ran when the locks were read; `horizon` is the first listed transaction that had ended by then (its
  subtransactions come after it), else the snapshot's xmax.
Everything else stays until a later backup holds it. An UPDATE gives a row a new xmin, so a row changed after
the snapshot stays too. Row xmins are 32 bits and wrap around: they are compared circularly, and any doubt (an
xid 2^31 away, a row frozen longer ago than that) keeps the row; xmin 1 and 2 (bootstrap, frozen before 9.4) are
older than any snapshot.

SQLite: the raw snapshot file the backup was made from, kept on the volume until the purge ends and ATTACHed
read-only as HELD_SCHEMA. A row is held when the snapshot has a row with the same key (rowid, or the primary key
of a WITHOUT ROWID table) whose every column holds the same value of the same type, compared byte for byte
(collation BINARY: 'A' is not 'a'). A rowid reused after a delete, an UPDATE, a table or a column added after the
snapshot: not held, kept.

Cascades: a parent row goes only if every row its delete would remove (ON DELETE CASCADE, followed down to
schema.MAX_DEPTH levels) or change (SET NULL, SET DEFAULT: that row would lose its link, and no backup would
have it) is held too; where the depth limit cuts the walk, a row that has any such rows below is kept.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from jobs.cycle import Cycle
from jobs.engines import HOLDS, pg_connect
from jobs.engines.postgres import PG_RUNNING, PG_SNAPSHOT
from jobs.purge.schema import Cascade, Target

XIDS = 1 << 32  # row xmins are 32-bit transaction ids
HALF = 1 << 31  # PostgreSQL compares xids circularly: an xid precedes the next 2^31 - 1 ids
FROZEN = (1, 2)  # BootstrapTransactionId, FrozenTransactionId (frozen before 9.4): older than every snapshot
FIRST_NORMAL = 3
MAX_UNSETTLED = 10_000  # more ids running than this at the snapshot: only ids before its xmin count as ended
WRAP_LIMIT = HALF - (1 << 24)  # transactions since the snapshot beyond which its xids are no longer judged
MIN_SERVER = 90400  # 9.4: freezing keeps a row's xmin (older servers write 2, which would hide a newer row)
HELD_SCHEMA = "held-backup"  # the attached snapshot; never a rule's schema (rules name plain identifiers)


@dataclass(frozen=True)
class PgSnapshot:
    """A PostgreSQL snapshot as pg_current_snapshot() shows it (64-bit ids: epoch and xid), with the 32-bit ids
    that held a transaction lock right after it was taken (`running`)."""

    xmin: int
    xmax: int
    xip: tuple[int, ...] = ()
    running: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str, running: Any = ()) -> "PgSnapshot":
        """Given `xmin:xmax:xip,…` (pg_current_snapshot()::text) and the running ids, return the snapshot. Raise
        ValueError if it is not one."""
        parts = str(text).strip().split(":")
        try:
            if len(parts) != 3:
                raise ValueError
            xmin, xmax = int(parts[0]), int(parts[1])
            xip = tuple(int(xid) for xid in parts[2].split(",") if xid)
            locked = tuple(int(xid) for xid in running)
        except (TypeError, ValueError):
            raise ValueError(f"{text!r} is not a PostgreSQL snapshot (xmin:xmax:xip,…)") from None
        if not FIRST_NORMAL <= xmin <= xmax or any(not xmin <= xid < xmax for xid in xip) \
                or any(not 0 <= xid < XIDS for xid in locked):
            raise ValueError(f"{text!r} is not a PostgreSQL snapshot: its ids are out of order")
        return cls(xmin, xmax, xip, locked)

    def __str__(self) -> str:
        return f"{self.xmin}:{self.xmax}:{','.join(map(str, self.xip))}"

    def settled(self) -> tuple[int, frozenset[int]]:
        """Return (`horizon`, `unsettled`): a 64-bit xid from xmin up to `horizon` had ended before the snapshot
        unless it is in `unsettled` (listed in progress, or running when the locks were read)."""
        running = {_widen(xid, self.xmax) for xid in self.running}
        ended = [xid for xid in self.xip if xid not in running]
        horizon = min([*ended, self.xmax])
        unsettled = frozenset(xid for xid in (*self.xip, *running) if self.xmin <= xid < horizon)
        if len(unsettled) > MAX_UNSETTLED:
            return self.xmin, frozenset()
        return horizon, unsettled


def _widen(xid: int, near: int) -> int:
    """Return the 64-bit id of the 32-bit `xid` at or before the 64-bit `near` (ids after `near` land 2^32 early,
    where nothing here looks)."""
    return near - (near - xid) % XIDS


@dataclass(frozen=True)
class Held:
    """What the verified backup a purge follows holds, as the purge can check it row by row."""

    backup: str  # the backup's id, for messages
    pg_snapshot: PgSnapshot | None = None  # PostgreSQL: the dump's snapshot
    sqlite_file: Path | None = None  # SQLite: the raw snapshot the backup was made from, still on the volume


def held_from_cycle(cycle: Cycle, kept_snapshot: Path | None) -> Held:
    """Given the backup cycle a purge follows and where that cycle kept its raw snapshot (SQLite), return what
    that backup holds. Raise ValueError if the recorded snapshot cannot be read."""
    holds = cycle.holds or {}
    recorded = holds.get(PG_SNAPSHOT)
    kept = kept_snapshot if kept_snapshot is not None and kept_snapshot.is_file() else None
    return Held(backup=cycle.backup or cycle.artifact,
                pg_snapshot=PgSnapshot.parse(recorded, holds.get(PG_RUNNING, ())) if recorded else None,
                sqlite_file=kept)


def missing(held: Held, dialect: str) -> str | None:
    """Return why `held` cannot tell which rows of a `dialect` ("sqlite", "postgresql") database the backup holds,
    or None when it can."""
    if dialect == "sqlite" and held.sqlite_file is None:
        return (f"the snapshot of the backup {held.backup} is no longer on the volume, so it cannot be told which "
                "rows that backup holds; nothing was deleted, the next backup's purge tries again")
    if dialect == "postgresql" and held.pg_snapshot is None:
        return (f"the backup {held.backup} records no PostgreSQL snapshot ({HOLDS}.{PG_SNAPSHOT}), so it cannot be "
                "told which rows it holds; nothing was deleted, the next backup's purge tries again")
    return None


def current_problem(connection: Connection, held: Held) -> str | None:
    """Given a purge connection, return why `held` cannot tell which of its rows the backup holds now (no
    snapshot, too many transactions since it, another server), or None."""
    dialect = connection.dialect.name
    problem = missing(held, dialect)
    if problem is not None or dialect != "postgresql":
        return problem
    assert held.pg_snapshot is not None
    version = connection.connection.driver_connection.info.server_version
    now = connection.exec_driver_sql(f"SELECT {pg_connect.snapshot_function(version)}::text").scalar_one()
    connection.commit()
    return pg_horizon_problem(held.pg_snapshot, PgSnapshot.parse(now), version)


# --- PostgreSQL: transaction ids ----------------------------------------------------------------------------------

def xid_precedes(xid: int, other: int) -> bool:
    """Given two 32-bit transaction ids, return whether `xid` is certainly older than `other`, compared circularly
    as PostgreSQL does (less than 2^31 ids before it). Exactly 2^31 apart is in doubt: False."""
    return 0 < (other - xid) % XIDS < HALF


def pg_row_held(snapshot: PgSnapshot, xmin: int) -> bool:
    """Given the dump's snapshot and a row's xmin (32 bits, as the system column holds it), return whether the dump
    certainly holds that row version (see the module docstring). The SQL twin is `pg_xid_held`."""
    if xmin in FROZEN:
        return True
    if not FIRST_NORMAL <= xmin < XIDS:
        return False
    base = snapshot.xmin % XIDS
    if xid_precedes(xmin, base):
        return True
    horizon, unsettled = snapshot.settled()
    return (xmin - base) % XIDS < horizon - snapshot.xmin and xmin not in {xid % XIDS for xid in unsettled}


def pg_xid_held(xmin: sa.ColumnElement[Any], snapshot: PgSnapshot) -> sa.ColumnElement[bool]:
    """Return the SQL condition of `pg_row_held` for `xmin`, a bigint expression of a row's 32-bit xmin."""
    base = snapshot.xmin % XIDS
    horizon, unsettled = snapshot.settled()
    before = (sa.literal(base + XIDS, sa.BigInteger) - xmin) % XIDS  # how far xmin lies before the snapshot's xmin
    after = (xmin + (XIDS - base)) % XIDS  # how far it lies after it
    ended = sa.or_(sa.and_(before > 0, before < HALF),
                   sa.and_(after < horizon - snapshot.xmin, xmin.not_in(sorted(xid % XIDS for xid in unsettled))))
    return sa.or_(xmin.in_(FROZEN), sa.and_(xmin >= FIRST_NORMAL, xmin < XIDS, ended))


def pg_xmin(table: sa.FromClause) -> sa.ColumnElement[Any]:
    """Return the row's xmin (system column, type xid) of `table` as a bigint."""
    return sa.cast(sa.cast(table.c.xmin, sa.Text), sa.BigInteger)


def pg_horizon_problem(backup: PgSnapshot, now: PgSnapshot, server_version: int) -> str | None:
    """Given the dump's snapshot, a snapshot taken now and the server's version number, return why the rows the
    dump holds cannot be told apart now, or None."""
    if server_version < MIN_SERVER:
        return ("table retention needs PostgreSQL 9.4 or newer to tell the rows a backup holds (older servers "
                "overwrite a frozen row's transaction id); nothing was deleted")
    if now.xmax < backup.xmax:
        return (f"the server's transactions are behind the backup's snapshot ({now.xmax} < {backup.xmax}): this is "
                "not the server the backup was taken from, or it was restored since; nothing was deleted")
    if now.xmax - backup.xmin >= WRAP_LIMIT:
        return (f"{now.xmax - backup.xmin} transactions ran since the backup's snapshot, too many to compare row "
                "transaction ids safely; nothing was deleted, the next backup's purge tries again")
    return None


# --- both engines: the condition "held, and nothing lost through a cascade" --------------------------------------

def held_condition(connection: Connection, held: Held, target: Target,
                   cascades: tuple[Cascade, ...]) -> sa.ColumnElement[bool]:
    """Return the condition on `target.table` rows: the backup holds the row, and every row a delete of it would
    remove or change through foreign keys (`cascades`, see schema.cascades_of). Attach the SQLite snapshot to
    `connection` first (database.engine_for does).

    Each table the walk reaches gets its own NOT EXISTS over the chain of joins that leads to it (flat, not
    nested level in level: SQLite's parser has a small stack), which says: no row reachable from this parent
    through that chain is one the backup lacks (or, where the walk stopped, no row is reachable at all)."""
    sqlite = connection.dialect.name == "sqlite"
    inspector = sa.inspect(connection) if sqlite else None

    def row_held(table: sa.TableClause, key: tuple[str, ...], columns: tuple[str, ...],
                 live: sa.FromClause) -> sa.ColumnElement[bool]:
        if not sqlite:
            assert held.pg_snapshot is not None
            return pg_xid_held(pg_xmin(live), held.pg_snapshot)
        return _sqlite_row_held(inspector, table, key, columns, live)

    conditions = [row_held(target.table, tuple(part.name for part in target.key), target.columns, target.table)]

    def walk(cascade: Cascade, parent: sa.FromClause, chain: sa.FromClause | None,
             linked: sa.ColumnElement[bool] | None) -> None:
        child = cascade.table.alias()
        reference = cascade.reference
        joined = sa.and_(*(child.c[mine] == parent.c[theirs]
                           for mine, theirs in zip(reference.columns, reference.referred, strict=True)))
        # The first link ties the chain to the target's row (correlated); the others join within the chain.
        chain, linked = (child, joined) if chain is None else (chain.join(child, joined), linked)
        lost = sa.true() if cascade.below is None else ~row_held(cascade.table, cascade.key, cascade.columns, child)
        conditions.append(~sa.exists().select_from(chain).where(linked, lost))
        for below in cascade.below or ():
            walk(below, child, chain, linked)

    for cascade in cascades:
        walk(cascade, target.table, None, None)
    return sa.and_(*conditions)


def _sqlite_row_held(inspector: Any, table: sa.TableClause, key: tuple[str, ...], columns: tuple[str, ...],
                     live: sa.FromClause) -> sa.ColumnElement[bool]:
    """EXISTS a row in the attached snapshot with the same key and every column the same value of the same type;
    false when the snapshot lacks the table or one of its columns."""
    try:
        names = {column["name"] for column in inspector.get_columns(table.name, schema=HELD_SCHEMA)}
    except sa.exc.NoSuchTableError:
        return sa.false()
    if not set(columns) <= names:
        return sa.false()
    snapshot = sa.table(table.name, *(sa.column(name) for name in dict.fromkeys((*key, *columns))),
                        schema=HELD_SCHEMA).alias()
    same: list[sa.ColumnElement[bool]] = [snapshot.c[name] == live.c[name] for name in key]
    for name in columns:
        mine, theirs = live.c[name], snapshot.c[name]
        same += [sa.collate(mine, "binary").is_not_distinct_from(theirs),
                 sa.func.typeof(mine) == sa.func.typeof(theirs)]
    return sa.exists().where(*same)
