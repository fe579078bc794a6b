"""Orphan rules `TABLE.COLUMN->PARENT.COLUMN` on real SQLite and PostgreSQL: rows whose column matches no parent
row go (NULL stays), after the age rules of the same cycle, only rows the backup holds, in batches, stoppable,
counted by the dry run; bad rules are problems naming them; `prune --dry-run` and `backup` as a user runs them."""

from datetime import timedelta
import json
from pathlib import Path
import sqlite3
import threading

import pytest

from jobs.errors import Cancelled
from jobs.purge import OrphanRule, check_rules, dry_run, parse_retention_rules, purge
from tests.conftest import run_worker
from tests.purge.conftest import NOW, hold, make_sqlite, pg_execute

SQLITE_SCHEMA = """
CREATE TABLE sessions (id INTEGER PRIMARY KEY, started_at TEXT NOT NULL);
CREATE TABLE spec_runs (id INTEGER PRIMARY KEY, session_id INTEGER, note TEXT);
"""
PG_SCHEMA = """
CREATE TABLE sessions (id bigint PRIMARY KEY, started_at timestamptz NOT NULL);
CREATE TABLE spec_runs (id bigserial PRIMARY KEY, session_id bigint, note text, label text);
"""
ORPHAN = "spec_runs.session_id->sessions.id"


@pytest.mark.parametrize("text, expected", [
    (ORPHAN, OrphanRule("spec_runs", "session_id", "sessions", "id")),
    ("app.runs.sid -> app.sessions.id", OrphanRule("runs", "sid", "sessions", "id", schema="app", parent_schema="app")),
    ("runs.sid->core.sessions.id", OrphanRule("runs", "sid", "sessions", "id", parent_schema="core")),
])
def test_an_orphan_rule_is_read_and_written_back_the_same_way(text: str, expected: OrphanRule) -> None:
    [rule] = parse_retention_rules(text)
    assert rule == expected and parse_retention_rules(rule.describe()) == [rule]


@pytest.mark.parametrize("text, fragment", [
    ("spec_runs->sessions.id", "'spec_runs->sessions.id' does not name a table and a column; write "
                               "TABLE.COLUMN->PARENT.COLUMN like spec_runs.session_id->sessions.id"),
    ("spec_runs.session_id->", "needs a table and column on both sides of '->'"),
    ("spec_runs.session_id->sessions.id=30d", "mixes an orphan rule (->) and an age (=)"),
    (f"{ORPHAN};spec_runs.session_id->other.id", "names the same column"),
    ("spec runs.x->sessions.id", "'spec runs' is not a plain table or column name"),
])
def test_a_bad_orphan_rule_is_named_with_how_to_write_it(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_retention_rules(text)
    assert fragment in str(raised.value)


def test_an_orphan_and_an_age_rule_on_the_same_column_are_both_allowed() -> None:
    assert len(parse_retention_rules(f"{ORPHAN};spec_runs.session_id=30d")) == 2


def sqlite_app(path: Path) -> sqlite3.Connection:
    """Sessions 1..10 (1..4 older than 30 days); spec_runs: 3 per session 1..10, 5 pointing at sessions 11..15
    (orphans), 2 with no session (NULL)."""
    db = make_sqlite(path, SQLITE_SCHEMA)
    db.executemany("INSERT INTO sessions (id, started_at) VALUES (?, ?)",
                   [(i, (NOW - timedelta(days=40 if i <= 4 else 1)).strftime("%Y-%m-%d %H:%M:%S")) for i in range(1, 11)])
    db.executemany("INSERT INTO spec_runs (session_id, note) VALUES (?, 'run')", [(i,) for i in range(1, 11) for _ in range(3)])
    db.executemany("INSERT INTO spec_runs (session_id, note) VALUES (?, 'orphan')", [(i,) for i in range(11, 16)])
    db.executemany("INSERT INTO spec_runs (session_id, note) VALUES (NULL, 'none')", [()] * 2)
    return db


def notes(db: sqlite3.Connection) -> dict[str, int]:
    return dict(db.execute("SELECT note, count(*) FROM spec_runs GROUP BY note"))


def test_sqlite_orphans_go_in_batches_null_stays_and_the_dry_run_counted_them(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = sqlite_app(path)
    url, rules = f"sqlite:///{path}", parse_retention_rules(ORPHAN)
    assert check_rules(url, rules) == []
    [counted] = dry_run(url, rules, NOW)
    assert counted.would_delete == 5 and counted.cutoff is None

    [result] = purge(url, rules, NOW, threading.Event(), held=hold(url), batch_size=2)

    assert result.error is None and result.deleted == 5 and result.batches == 3 and result.table == "spec_runs"
    assert notes(db) == {"run": 30, "none": 2}


def test_orphans_left_by_an_age_rule_go_in_the_same_cycle_whatever_the_rules_order(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = sqlite_app(path)
    url = f"sqlite:///{path}"

    results = purge(url, parse_retention_rules(f"{ORPHAN};sessions.started_at=30d"), NOW, threading.Event(),
                    held=hold(url))

    assert [result.rule for result in results] == ["sessions.started_at=30d", ORPHAN]
    assert [result.deleted for result in results] == [4, 5 + 4 * 3]
    assert notes(db) == {"run": 18, "none": 2}
    assert db.execute("SELECT min(session_id) FROM spec_runs").fetchone() == (5,)


def test_an_orphan_written_after_the_backup_stays_until_a_backup_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = sqlite_app(path)
    url = f"sqlite:///{path}"
    held = hold(url)
    db.execute("INSERT INTO spec_runs (session_id, note) VALUES (99, 'late')")
    db.execute("UPDATE spec_runs SET note = 'changed' WHERE session_id = 11")

    [result] = purge(url, parse_retention_rules(ORPHAN), NOW, threading.Event(), held=held)

    assert result.deleted == 4 and result.kept == 2
    assert notes(db) == {"run": 30, "none": 2, "late": 1, "changed": 1}
    [again] = purge(url, parse_retention_rules(ORPHAN), NOW, threading.Event(), held=hold(url))
    assert again.deleted == 2 and notes(db) == {"run": 30, "none": 2}


def test_a_stop_request_ends_an_orphan_rule_between_batches(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = make_sqlite(path, SQLITE_SCHEMA)
    db.executemany("INSERT INTO spec_runs (session_id, note) VALUES (?, 'orphan')", [(i,) for i in range(1000)])
    cancel = threading.Event()

    def stop_after_first_batch() -> None:
        watcher = sqlite3.connect(path)
        while not cancel.is_set():
            if watcher.execute("SELECT count(*) FROM spec_runs").fetchone()[0] < 1000:
                cancel.set()
            cancel.wait(0.005)

    thread = threading.Thread(target=stop_after_first_batch)
    thread.start()
    try:
        with pytest.raises(Cancelled) as stopped:
            purge(f"sqlite:///{path}", parse_retention_rules(ORPHAN), NOW, cancel, batch_size=10, pause=0.3,
                  held=hold(f"sqlite:///{path}"))
    finally:
        cancel.set()
        thread.join()

    [rule] = stopped.value.fields["purge"]
    left = db.execute("SELECT count(*) FROM spec_runs").fetchone()[0]
    assert 0 < rule["deleted"] < 1000 and rule["deleted"] == 1000 - left and rule["deleted"] % 10 == 0
    assert rule["error"] == "stopped: the worker is stopping"


def test_postgres_orphans_go_and_null_stays(pg_url: str) -> None:
    pg_execute(pg_url, PG_SCHEMA + "INSERT INTO sessions VALUES (1, now()), (2, now());"
                       "INSERT INTO spec_runs (session_id, note) VALUES (1, 'run'), (2, 'run'), (3, 'orphan'), "
                       "(4, 'orphan'), (NULL, 'none');")
    rules = parse_retention_rules(ORPHAN)
    assert check_rules(pg_url, rules) == []
    assert dry_run(pg_url, rules, NOW)[0].would_delete == 2

    [result] = purge(pg_url, rules, NOW, threading.Event(), held=hold(pg_url), batch_size=1)

    assert result.error is None and result.deleted == 2 and result.batches == 2
    assert sorted(pg_execute(pg_url, "SELECT note FROM spec_runs")) == [("none",), ("run",), ("run",)]


@pytest.mark.parametrize("rule, fragment", [
    ("spec_runs.label->sessions.id", "spec_runs.label cannot be compared with sessions.id"),
    ("spec_runs.session_id->session.id", "the database has no table session"),
    ("spec_runs.session_id->sessions.uid", "table sessions has no column uid; its columns are id, started_at"),
    ("spec_runs.sid->sessions.id", "table spec_runs has no column sid"),
])
def test_postgres_an_orphan_rule_that_does_not_fit_is_a_problem_naming_it(pg_url: str, rule: str,
                                                                          fragment: str) -> None:
    pg_execute(pg_url, PG_SCHEMA)
    [problem] = check_rules(pg_url, parse_retention_rules(rule))
    assert problem.startswith(f"{rule}: ") and fragment in problem, problem


def test_postgres_an_orphan_rule_on_an_unindexed_parent_column_is_refused_until_it_is_indexed(pg_url: str) -> None:
    pg_execute(pg_url, PG_SCHEMA + "ALTER TABLE sessions ADD COLUMN uid text;"
                                   "CREATE INDEX sessions_later ON sessions (started_at, uid)")
    rule = "spec_runs.label->sessions.uid"

    [problem] = check_rules(pg_url, parse_retention_rules(rule))
    assert problem.startswith(f"{rule}: sessions.uid has no index") and "CREATE INDEX ON sessions (uid)" in problem

    pg_execute(pg_url, "CREATE UNIQUE INDEX sessions_uid ON sessions (uid)")
    assert check_rules(pg_url, parse_retention_rules(rule)) == []


def test_a_backup_with_an_orphan_rule_on_an_unindexed_parent_column_stops_at_start(
        tmp_path: Path, worker_env: dict[str, str]) -> None:
    path = tmp_path / "app.db"
    sqlite_app(path).close()
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{path}", "RETENTION_RULES": "spec_runs.note->sessions.started_at"}

    run = run_worker(["backup"], env, cwd=tmp_path)

    assert run.code == 2 and "Traceback" not in run.stderr
    assert "spec_runs.note->sessions.started_at: sessions.started_at has no index" in run.stderr, run.stderr
    with sqlite3.connect(path) as db:
        assert notes(db) == {"run": 30, "orphan": 5, "none": 2}


def test_prune_dry_run_and_backup_run_orphan_rules_as_a_user_runs_them(
        tmp_path: Path, worker_env: dict[str, str]) -> None:
    path = tmp_path / "app.db"
    sqlite_app(path).close()
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{path}", "RETENTION_RULES": ORPHAN}

    dry = run_worker(["prune", "--dry-run"], env, cwd=tmp_path)
    assert dry.code == 0, dry.stderr
    assert f"table {ORPHAN}: would delete 5 rows that point at no parent row" in dry.stdout

    backup = run_worker(["backup", "--json"], env, cwd=tmp_path)
    assert backup.code == 0, backup.stderr
    outcome = json.loads(backup.stdout)
    assert outcome["purged_rows"] == 5 and outcome["purge"][0]["rule"] == ORPHAN
    assert outcome["purge"][0]["cutoff"] is None
    with sqlite3.connect(path) as db:
        assert notes(db) == {"run": 30, "none": 2}
