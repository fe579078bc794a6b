"""Which rows a backup holds (jobs.purge.held), as tables of cases: PostgreSQL transaction ids compared circularly
against the dump's snapshot (in-progress lists, subtransactions, wraparound), the same condition evaluated by the
server, and SQLite rows compared with the snapshot file value by value."""

from pathlib import Path
import sqlite3

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg

from jobs.purge.database import engine_for
from jobs.purge.held import (FROZEN, HALF, MAX_UNSETTLED, WRAP_LIMIT, XIDS, Held, PgSnapshot, held_condition,
                             pg_horizon_problem, pg_row_held, pg_xid_held, xid_precedes)
from jobs.purge.rules import parse_retention_rules
from jobs.purge.schema import cascades_of, resolve
from tests.purge.conftest import PG_HOST, PG_PORT, PG_USER

EPOCH = 1 << 32  # a snapshot in the second epoch: its 64-bit ids are 2^32 + the 32-bit xid


@pytest.mark.parametrize("xid, other, precedes", [
    (1000, 1001, True),
    (1001, 1000, False),
    (1000, 1000, False),
    (1000, 1000 + HALF - 1, True),  # the farthest an id can be before another
    (1000, 1000 + HALF, False),  # exactly half the circle away: in doubt
    (1000 + HALF + 1, 1000, True),  # "after" in numbers, but before once the counter wrapped
    (XIDS - 10, 5, True),  # just before the wrap is older than just after it
    (5, XIDS - 10, False),
    (EPOCH + 7, 9, True),  # 64-bit ids compare by their low 32 bits
])
def test_xid_precedes_compares_32_bit_ids_circularly(xid: int, other: int, precedes: bool) -> None:
    assert xid_precedes(xid, other) is precedes


@pytest.mark.parametrize("text, running, expected", [
    ("100:105:100,102", [], PgSnapshot(100, 105, (100, 102))),
    ("100:100:", [100], PgSnapshot(100, 100, (), (100,))),
    (f"{EPOCH + 3}:{EPOCH + 9}:{EPOCH + 4}", ["4", 5], PgSnapshot(EPOCH + 3, EPOCH + 9, (EPOCH + 4,), (4, 5))),
])
def test_a_snapshot_is_read_from_pg_current_snapshot_text(text: str, running: list, expected: PgSnapshot) -> None:
    assert PgSnapshot.parse(text, running) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text, running", [
    ("", []), ("100:105", []), ("a:b:", []), ("105:100:", []), ("100:105:99", []), ("100:105:105", []),
    ("2:5:", []), ("100:105:", [-1]), ("100:105:", [XIDS]), ("100:105:", ["x"]),
])
def test_anything_else_is_not_a_snapshot(text: str, running: list) -> None:
    with pytest.raises(ValueError, match="is not a PostgreSQL snapshot"):
        PgSnapshot.parse(text, running)


SNAP = PgSnapshot(100, 110, (100, 104), (100, 101, 104, 107, 112))  # 101 and 107: subtransactions; 112: newer
ENDED = PgSnapshot(100, 110, (100, 104), (100, 101))  # 104 ended between the snapshot and the lock read
WRAPPED = PgSnapshot(EPOCH + 5, EPOCH + 12, (EPOCH + 5, EPOCH + 8), (5, 8, 9))  # in the second epoch


@pytest.mark.parametrize("snapshot, horizon, unsettled", [
    (PgSnapshot(100, 100), 100, set()),
    (SNAP, 110, {100, 101, 104, 107}),
    (ENDED, 104, {100, 101}),
    (WRAPPED, EPOCH + 12, {EPOCH + 5, EPOCH + 8, EPOCH + 9}),
    (PgSnapshot(XIDS - 2, XIDS + 3, (XIDS - 2, XIDS + 1), (XIDS - 2, 1)), XIDS + 3, {XIDS - 2, XIDS + 1}),
    (PgSnapshot(100, 100 + MAX_UNSETTLED + 2, (100,), tuple(range(100, 100 + MAX_UNSETTLED + 1))), 100, set()),
])
def test_the_ids_that_ended_before_the_snapshot_lie_below_the_horizon_and_outside_the_unsettled_set(
        snapshot: PgSnapshot, horizon: int, unsettled: set[int]) -> None:
    assert snapshot.settled() == (horizon, frozenset(unsettled))


ROW_CASES = [
    (SNAP, 99, True),  # before the snapshot's xmin: ended
    (SNAP, 100, False),  # in progress at the snapshot
    (SNAP, 101, False),  # a subtransaction of 100: not in the in-progress list, but running
    (SNAP, 102, True), (SNAP, 103, True),  # ended before the snapshot, though after its xmin
    (SNAP, 104, False), (SNAP, 107, False), (SNAP, 108, True), (SNAP, 109, True),
    (SNAP, 110, False), (SNAP, 111, False), (SNAP, 112, False),  # from xmax on: after the snapshot
    (SNAP, 100 + HALF - (1 << 24), False),  # long after the snapshot, still within the wrap limit
    (ENDED, 102, True), (ENDED, 103, True),
    (ENDED, 105, False), (ENDED, 108, False),  # after an id that ended too late to tell its subtransactions
    (SNAP, 1, True), (SNAP, 2, True),  # bootstrap and frozen (before 9.4): older than any snapshot
    (SNAP, 0, False),  # the invalid id
    (WRAPPED, XIDS - 6, True),  # written just before the counter wrapped: before the snapshot
    (WRAPPED, 4, True), (WRAPPED, 5, False), (WRAPPED, 6, True), (WRAPPED, 8, False), (WRAPPED, 9, False),
    (WRAPPED, 11, True), (WRAPPED, 12, False),
    (WRAPPED, 5 + HALF, False),  # half the circle away: in doubt, kept
    (WRAPPED, 6 + HALF, True),  # just under half the circle before: ended
]


@pytest.mark.parametrize("snapshot, xmin, held", ROW_CASES)
def test_a_row_version_is_held_only_when_the_transaction_that_wrote_it_had_certainly_ended(
        snapshot: PgSnapshot, xmin: int, held: bool) -> None:
    assert pg_row_held(snapshot, xmin) is held


@pytest.fixture(scope="module")
def server() -> psycopg.Connection:
    with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres", autocommit=True) as db:
        yield db


@pytest.mark.parametrize("snapshot, xmin, held", ROW_CASES)
def test_the_server_evaluates_the_sql_condition_exactly_as_the_table_says(
        server: psycopg.Connection, snapshot: PgSnapshot, xmin: int, held: bool) -> None:
    condition = pg_xid_held(sa.literal(xmin, sa.BigInteger), snapshot)
    sql = sa.select(condition).compile(dialect=postgresql_psycopg.dialect(), compile_kwargs={"literal_binds": True})
    assert server.execute(str(sql), {}).fetchone()[0] is held


def test_the_frozen_ids_are_the_servers_own() -> None:
    assert FROZEN == (1, 2)  # BootstrapTransactionId, FrozenTransactionId (src/include/access/transam.h)


@pytest.mark.parametrize("backup, now, version, fragment", [
    (PgSnapshot(100, 105), PgSnapshot(200, 210), 150000, None),
    (PgSnapshot(100, 105), PgSnapshot(100, 105), 90400, None),
    (PgSnapshot(100, 105), PgSnapshot(200, 210), 90300, "needs PostgreSQL 9.4 or newer"),
    (PgSnapshot(100, 105), PgSnapshot(90, 95), 150000, "not the server the backup was taken from"),
    (PgSnapshot(100, 105), PgSnapshot(100 + WRAP_LIMIT, 100 + WRAP_LIMIT), 150000, "too many to compare"),
    (PgSnapshot(100, 105), PgSnapshot(99 + WRAP_LIMIT, 99 + WRAP_LIMIT), 150000, None),
])
def test_a_snapshot_too_far_behind_or_from_elsewhere_deletes_nothing(
        backup: PgSnapshot, now: PgSnapshot, version: int, fragment: str | None) -> None:
    problem = pg_horizon_problem(backup, now, version)
    assert (problem is None) if fragment is None else (fragment in problem and "nothing was deleted" in problem)


# --- SQLite: the row compared with the snapshot file ----------------------------------------------------------

TABLE = "CREATE TABLE t (id INTEGER PRIMARY KEY, a, b TEXT COLLATE NOCASE, at TEXT)"
NO_ROWID = "CREATE TABLE t (k TEXT PRIMARY KEY COLLATE NOCASE, a, b TEXT, at TEXT) WITHOUT ROWID"


@pytest.mark.parametrize("schema, snapshot_row, live_row, held", [
    (TABLE, (1, 5, "x"), (1, 5, "x"), True),
    (TABLE, (1, None, None), (1, None, None), True),  # NULL is NULL
    (TABLE, (1, b"\x00\x01", "x"), (1, b"\x00\x01", "x"), True),
    (TABLE, (1, 1, "x"), (1, 1.0, "x"), False),  # an integer became a real: not the same value
    (TABLE, (1, "1", "x"), (1, 1, "x"), False),  # text became a number
    (TABLE, (1, 5, "ABC"), (1, 5, "abc"), False),  # equal under the column's NOCASE, but not byte for byte
    (TABLE, (1, None, "x"), (1, 0, "x"), False),
    (TABLE, (1, "", "x"), (1, None, "x"), False),
    (TABLE, (1, b"\x00", "x"), (1, b"\x00\x00", "x"), False),
    (TABLE, (1, 0.1 + 0.2, "x"), (1, 0.3, "x"), False),
    (TABLE, None, (1, 5, "x"), False),  # inserted after the snapshot
    (TABLE, (2, 5, "x"), (1, 5, "x"), False),  # the same values under another key
    (NO_ROWID, ("k1", 5, "x"), ("k1", 5, "x"), True),
    (NO_ROWID, ("K1", 5, "x"), ("k1", 5, "x"), False),  # the NOCASE key finds it, the bytes differ
    (NO_ROWID, ("k1", 5, "x"), ("k1", 6, "x"), False),
])
def test_a_sqlite_row_is_held_only_when_the_snapshot_has_it_with_the_same_key_and_the_same_values(
        tmp_path: Path, schema: str, snapshot_row: tuple | None, live_row: tuple, held: bool) -> None:
    snapshot, live = tmp_path / "snapshot.db", tmp_path / "live.db"
    for path, row in ((snapshot, snapshot_row), (live, live_row)):
        with sqlite3.connect(path) as db:
            db.execute(schema)
            if row is not None:
                db.execute("INSERT INTO t VALUES (?, ?, ?, '2020-01-01')", row)
    assert held_rows(live, snapshot) == (1 if held else 0)


def held_rows(live: Path, snapshot: Path, table: str = "t") -> int:
    """How many rows of `table` in `live` the snapshot file holds (held_condition, cascades included)."""
    rule = parse_retention_rules(f"{table}.at=1d")[0]
    with engine_for(f"sqlite:///{live}", held_file=snapshot) as engine, engine.connect() as connection:
        target = resolve(connection, rule)
        condition = held_condition(connection, Held("test", sqlite_file=snapshot), target,
                                   cascades_of(connection, target))
        return connection.execute(sa.select(sa.func.count()).select_from(target.table).where(condition)).scalar_one()


@pytest.mark.parametrize("snapshot_schema", [
    None,  # the table was created after the snapshot
    "CREATE TABLE t (id INTEGER PRIMARY KEY, a, at TEXT)",  # column b was added after the snapshot
])
def test_a_table_or_column_the_snapshot_lacks_holds_no_row(tmp_path: Path, snapshot_schema: str | None) -> None:
    snapshot, live = tmp_path / "snapshot.db", tmp_path / "live.db"
    with sqlite3.connect(snapshot) as db:
        db.execute(snapshot_schema or "CREATE TABLE other (id INTEGER PRIMARY KEY)")
        if snapshot_schema:
            db.execute("INSERT INTO t VALUES (1, 5, '2020-01-01')")
    with sqlite3.connect(live) as db:
        db.execute(TABLE)
        db.execute("INSERT INTO t VALUES (1, 5, NULL, '2020-01-01')")
    assert held_rows(live, snapshot) == 0
