"""The mechanisms of restore at start (jobs/recover.py and what it asks): when a database counts as lost, the
wait for a server that does not answer (a fake clock), which connection errors are worth waiting for, the new
file written over nothing or a 0-byte file, and RESTORE_ON_START itself."""

from pathlib import Path
import sqlite3
import threading

import pytest

from jobs import recover, restore as restoring
from jobs.engines.pg_connect import unanswered
from jobs.engines.sqlite import SqliteSource
from jobs.errors import Cancelled, SourceError, StorageError, Unreachable
from worker.config import ConfigError, load_config


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> bool:
        self.sleeps.append(seconds)
        self.now += seconds
        return False


class Server:
    """A source whose server does not answer `silent` times, then says `answer` (or raises `refuses`)."""

    kind = "pgdump"

    def __init__(self, silent: int, answer: str | None = None, refuses: SourceError | None = None,
                 clock: FakeClock | None = None, connect_s: float = 0.0) -> None:
        self.silent, self.answer, self.refuses, self.clock, self.connect_s = silent, answer, refuses, clock, connect_s
        self.asked = 0

    def target(self) -> str:
        return "postgresql://app@db.railway.internal:5432/app"

    def missing(self) -> str | None:
        self.asked += 1
        if self.clock is not None:
            self.clock.now += self.connect_s
        if self.asked <= self.silent:
            raise Unreachable("cannot connect to PostgreSQL at db.railway.internal:5432: connection refused")
        if self.refuses is not None:
            raise self.refuses
        return self.answer


def test_a_server_that_never_answers_is_asked_every_second_for_60_s_then_the_wait_fails_naming_the_limit() -> None:
    clock = FakeClock()
    server = Server(silent=10_000, clock=clock)
    waits: list[float] = []
    with pytest.raises(Unreachable) as raised:
        recover.wait_missing(server, threading.Event(), on_wait=lambda _e, waited: waits.append(waited), clock=clock,
                             sleep=clock.sleep)
    assert clock.now - 1000.0 == pytest.approx(60.0)
    assert server.asked == 61 and len(waits) == 60 and all(pause <= 1.0 for pause in clock.sleeps)
    assert "within 60 s" in str(raised.value) and "connection refused" in str(raised.value)
    assert raised.value.stage == "connect"


def test_slow_connection_attempts_count_against_the_limit() -> None:
    clock = FakeClock()
    server = Server(silent=10_000, clock=clock, connect_s=10.0)  # libpq's connect timeout, every time
    with pytest.raises(Unreachable):
        recover.wait_missing(server, threading.Event(), clock=clock, sleep=clock.sleep)
    assert server.asked <= 7 and clock.now - 1000.0 <= 60.0 + 10.0


@pytest.mark.parametrize("silent, answer", [(0, None), (0, "it has no user tables"), (3, "it has no user tables"), (59, None)])
def test_a_server_that_answers_within_the_limit_is_believed(silent: int, answer: str | None) -> None:
    clock = FakeClock()
    server = Server(silent=silent, answer=answer, clock=clock)
    assert recover.wait_missing(server, threading.Event(), clock=clock, sleep=clock.sleep) == answer
    assert server.asked == silent + 1


def test_a_server_that_refuses_us_is_not_asked_again() -> None:
    clock = FakeClock()
    server = Server(silent=0, refuses=SourceError("PostgreSQL at db:5432 refused the password of user app"), clock=clock)
    with pytest.raises(SourceError, match="refused the password"):
        recover.wait_missing(server, threading.Event(), clock=clock, sleep=clock.sleep)
    assert server.asked == 1 and clock.sleeps == []


def test_a_stop_request_ends_the_wait_at_once() -> None:
    cancel = threading.Event()
    server = Server(silent=10_000)

    def stop_while_waiting(_seconds: float) -> bool:
        cancel.set()
        return True

    with pytest.raises(Cancelled):
        recover.wait_missing(server, cancel, sleep=stop_while_waiting)
    assert server.asked == 1


@pytest.mark.parametrize("message, worth_waiting", [
    ('connection failed: connection to server at "127.0.0.1", port 5432 failed: Connection refused', True),
    ("connection failed: timeout expired", True),
    ('connection failed: could not translate host name "postgres.railway.internal" to address: Name or service not known', True),
    ("connection failed: FATAL:  the database system is starting up", True),
    ('connection failed: FATAL:  password authentication failed for user "app"', False),
    ('connection failed: FATAL:  database "app" does not exist', False),
    ('connection failed: FATAL:  role "app" does not exist', False),
    ("connection failed: FATAL:  sorry, too many clients already", False),
])
def test_which_connection_errors_mean_the_server_does_not_answer_yet(message: str, worth_waiting: bool) -> None:
    assert unanswered(message) is worth_waiting


def sqlite_db(path: Path, rows: int = 3) -> Path:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        connection.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)])
    return path


@pytest.mark.parametrize("layout, lost", [
    ("absent", "does not exist"),
    ("zero bytes", "0 bytes"),
    ("holds data", None),
    ("schema only", None),
    ("dangling link", "does not exist"),
    ("link to data", None),
    ("link to zero bytes", "0 bytes"),
])
def test_when_a_sqlite_database_counts_as_lost(tmp_path: Path, layout: str, lost: str | None) -> None:
    db = tmp_path / "app.db"
    real = tmp_path / "volume" / "real.db"
    real.parent.mkdir()
    if layout == "zero bytes":
        db.touch()
    elif layout == "holds data":
        sqlite_db(db)
    elif layout == "schema only":
        sqlite_db(db, rows=0)
    elif layout.startswith("link"):
        db.symlink_to(real)
        if layout == "link to data":
            sqlite_db(real)
        elif layout == "link to zero bytes":
            real.touch()
    elif layout == "dangling link":
        db.symlink_to(real)
    why = SqliteSource(db).missing()
    if lost is None:
        assert why is None
    else:
        assert lost in why and str(db) in why
        if "link" in layout:
            assert str(real) in why


def test_a_new_file_is_placed_over_nothing_or_over_0_bytes_and_never_over_data(tmp_path: Path) -> None:
    def raw(name: str) -> Path:
        path = tmp_path / name
        path.write_bytes(b"SQLite format 3\x00restored")
        return path

    free = tmp_path / "free.db"
    restoring.place_new_file(raw("a"), free, empty_ok=True)
    assert free.read_bytes().endswith(b"restored")
    empty = tmp_path / "empty.db"
    empty.touch()
    restoring.place_new_file(raw("b"), empty, empty_ok=True)
    assert empty.read_bytes().endswith(b"restored")
    with pytest.raises(StorageError, match="already exists"):
        restoring.place_new_file(raw("c"), free, empty_ok=True)  # it holds data now
    other = tmp_path / "other.db"
    other.touch()
    with pytest.raises(StorageError, match="already exists"):
        restoring.place_new_file(raw("d"), other)  # `restore --to` never replaces a file, empty or not
    linked = tmp_path / "linked.db"
    linked.symlink_to(tmp_path / "empty-target.db")
    (tmp_path / "empty-target.db").touch()
    assert restoring.new_file_problem(linked, empty_ok=True) is not None  # a link is never replaced


@pytest.mark.parametrize("value, wanted", [(None, "never"), ("never", "never"), ("if-missing", "if-missing"),
                                           ("IF-MISSING", "if-missing"), (" if-missing ", "if-missing")])
def test_restore_on_start_is_never_unless_asked(tmp_path: Path, value: str | None, wanted: str) -> None:
    env = {} if value is None else {"RESTORE_ON_START": value}
    config = load_config(env, cwd=tmp_path)
    assert config.restore_on_start == wanted and config.describe()["RESTORE_ON_START"] == wanted


@pytest.mark.parametrize("value", ["always", "yes", "true", "if_missing"])
def test_any_other_restore_on_start_is_a_configuration_error_naming_the_variable(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config({"RESTORE_ON_START": value}, cwd=tmp_path)
    (problem,) = raised.value.problems
    assert problem.startswith("RESTORE_ON_START=") and "never" in problem and "if-missing" in problem


def test_a_server_recreated_at_the_same_address_restores_its_own_backups_at_start() -> None:
    from datetime import timedelta

    from tests.unit.test_guard import NOW, backup

    old = {"kind": "pgdump", "host": "postgres.railway.internal", "port": "5432", "database": "railway",
           "cluster": "7715951247765429235", "railway_environment_id": "prod"}
    last_night = backup(20, "pgdump", source=old)
    ours = {**old, "cluster": "7716000000000000001"}  # the same database service, its volume lost: initdb again
    found = recover.Found([last_night], {last_night.id: []}, [])
    mine, live = recover.own_backups(found, ours, [], timedelta(hours=26), NOW)
    assert [b.id for b in mine.backups] == [last_night.id] and live == []
    neighbour = {**old, "host": "other.railway.internal", "cluster": "1"}
    mine, live = recover.own_backups(found, neighbour, [], timedelta(hours=26), NOW)
    assert mine.backups == [] and [maker.newest.id for maker in live] == [last_night.id]
