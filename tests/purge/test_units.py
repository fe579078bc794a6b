"""Unix time columns in milliseconds and microseconds (`TABLE.COLUMN:ms=AGE`, `:us`, `:s`) on real SQLite and
PostgreSQL: the right rows go, a unit the data contradicts is a problem naming the right rule, and `config`
exits 2 with that sentence."""

from datetime import timedelta
from pathlib import Path
import threading

import psycopg
import pytest

from jobs.purge import PurgeRule, check_rules, dry_run, parse_retention_rules, purge
from tests.conftest import run_worker
from tests.purge.conftest import NOW, hold, make_sqlite, pg_execute, spanning_moments

CUTOFF = NOW - timedelta(days=30)
SCALES = {"s": 1, "ms": 1_000, "us": 1_000_000}


@pytest.mark.parametrize("text, expected", [
    ("events.at:ms=30d", PurgeRule("events", "at", timedelta(days=30), unit="ms")),
    ("events.at : us = 7d", PurgeRule("events", "at", timedelta(days=7), unit="us")),
    ("audit.events.at:s=1h", PurgeRule("events", "at", timedelta(hours=1), schema="audit", unit="s")),
])
def test_a_unit_after_the_column_is_read_and_written_back_the_same_way(text: str, expected: PurgeRule) -> None:
    [rule] = parse_retention_rules(text)
    assert rule == expected
    assert parse_retention_rules(rule.describe()) == [rule]


@pytest.mark.parametrize("text, fragment", [
    ("events.at:ns=30d", "'ns' is not a unit; write TABLE.COLUMN:UNIT=AGE with s, ms or us"),
    ("events.at:=30d", "'' is not a unit"),
    ("events.at:ms=30d;events.at=7d", "names the same column"),
])
def test_a_bad_unit_is_named_with_how_to_write_it(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_retention_rules(text)


def stamps(unit: str) -> list[tuple[int, bool]]:
    """(stored value, old?) for one row per moment over 60 days, in `unit`, fractions of a second kept."""
    return [(int(moment.timestamp() * SCALES[unit]), moment < CUTOFF) for moment in spanning_moments()]


@pytest.mark.parametrize("unit, declared", [("ms", "INTEGER"), ("us", "INTEGER"), ("s", "INTEGER"), ("ms", "")])
def test_sqlite_deletes_exactly_the_rows_older_than_the_rule_in_the_stated_unit(
        tmp_path: Path, unit: str, declared: str) -> None:
    path = tmp_path / "app.db"
    db = make_sqlite(path, f"CREATE TABLE events (id INTEGER PRIMARY KEY, at {declared});")
    rows = stamps(unit)
    db.executemany("INSERT INTO events (at) VALUES (?)", [(value,) for value, _ in rows])
    url, rules = f"sqlite:///{path}", parse_retention_rules(f"events.at:{unit}=30d")
    assert check_rules(url, rules) == []
    [counted] = dry_run(url, rules, NOW)
    old = sum(1 for _, is_old in rows if is_old)
    assert counted.would_delete == old and 0 < old < len(rows)

    [result] = purge(url, rules, NOW, threading.Event(), held=hold(url), batch_size=100)

    assert result.error is None and result.deleted == old and result.rule == f"events.at:{unit}=30d"
    left = sorted(value for value, in db.execute("SELECT at FROM events"))
    assert left == sorted(value for value, is_old in rows if not is_old)


@pytest.mark.parametrize("unit, value, fragment", [
    ("ms", 1_761_955_200, "holds 1761955200, which looks like seconds, not milliseconds; write events.at:s=30d"),
    ("us", 1_761_955_200_123, "which looks like milliseconds, not microseconds; write events.at:ms=30d"),
    ("s", 1_761_955_200_123_456, "which looks like microseconds, not seconds; write events.at:us=30d"),
    (None, 1_761_955_200_123, "which looks like milliseconds, not seconds; write events.at:ms=30d"),
    ("ms", 42, "which is not a Unix time in milliseconds (it would be before 1973)"),
])
def test_sqlite_a_unit_the_data_contradicts_is_a_problem_that_names_the_right_rule(
        tmp_path: Path, unit: str | None, value: int, fragment: str) -> None:
    path = tmp_path / "app.db"
    db = make_sqlite(path, "CREATE TABLE events (id INTEGER PRIMARY KEY, at INTEGER);")
    db.execute("INSERT INTO events (at) VALUES (?)", (value,))
    rule = f"events.at{':' + unit if unit else ''}=30d"

    [problem] = check_rules(f"sqlite:///{path}", parse_retention_rules(rule))

    assert problem.startswith(f"{rule}: column at ") and fragment in problem, problem
    [result] = purge(f"sqlite:///{path}", parse_retention_rules(rule), NOW, threading.Event(),
                     held=hold(f"sqlite:///{path}"))
    assert result.deleted == 0 and fragment in result.error
    assert db.execute("SELECT count(*) FROM events").fetchone() == (1,)


def test_sqlite_a_unit_on_a_text_column_says_to_drop_it(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = make_sqlite(path, "CREATE TABLE events (id INTEGER PRIMARY KEY, at TEXT);")
    db.execute("INSERT INTO events (at) VALUES ('2026-01-01 00:00:00')")
    [problem] = check_rules(f"sqlite:///{path}", parse_retention_rules("events.at:ms=30d"))
    assert "holds text ('2026-01-01 00:00:00'), not a number in milliseconds; write events.at=30d" in problem


@pytest.mark.parametrize("unit, declared", [("ms", "bigint"), ("us", "bigint"), ("s", "integer"), ("ms", "numeric")])
def test_postgres_number_columns_with_a_unit_lose_exactly_their_old_rows(pg_url: str, unit: str, declared: str) -> None:
    pg_execute(pg_url, f"CREATE TABLE events (id bigserial PRIMARY KEY, at {declared} NOT NULL)")
    rows = stamps(unit)
    with psycopg.connect(pg_url) as connection:
        connection.cursor().executemany("INSERT INTO events (at) VALUES (%s)", [(value,) for value, _ in rows])
    rules = parse_retention_rules(f"events.at:{unit}=30d")
    assert check_rules(pg_url, rules) == []

    [result] = purge(pg_url, rules, NOW, threading.Event(), held=hold(pg_url), batch_size=100)

    old = sum(1 for _, is_old in rows if is_old)
    assert result.error is None and result.deleted == old
    left = sorted(int(value) for value, in pg_execute(pg_url, "SELECT at FROM events"))
    assert left == sorted(value for value, is_old in rows if not is_old)


@pytest.mark.parametrize("rule, fragment", [
    ("events.at=30d", "column at is of type BIGINT; say the unit of the Unix time it holds, e.g. events.at:s=30d"),
    ("events.at:s=30d", "which looks like milliseconds, not seconds; write events.at:ms=30d"),
    ("events.created_at:ms=30d", "is of type TIMESTAMP, not a number; write events.created_at=30d"),
])
def test_postgres_a_missing_or_contradicted_unit_is_a_problem(pg_url: str, rule: str, fragment: str) -> None:
    pg_execute(pg_url, "CREATE TABLE events (id bigserial PRIMARY KEY, at bigint, created_at timestamptz);"
                       "INSERT INTO events (at, created_at) VALUES (1761955200123, now())")
    [problem] = check_rules(pg_url, parse_retention_rules(rule))
    assert problem.startswith(f"{rule}: ") and fragment in problem, problem


def test_config_exits_2_with_one_sentence_when_the_unit_contradicts_the_data(
        tmp_path: Path, worker_env: dict[str, str]) -> None:
    path = tmp_path / "app.db"
    make_sqlite(path, "CREATE TABLE events (id INTEGER PRIMARY KEY, at INTEGER);"
                      "INSERT INTO events (at) VALUES (1761955200);").close()
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{path}", "RETENTION_RULES": "events.at:ms=30d"}

    result = run_worker(["config"], env, cwd=tmp_path)

    assert result.code == 2
    assert "events.at:ms=30d: column at holds 1761955200, which looks like seconds, not milliseconds; write " \
           "events.at:s=30d" in result.stderr
    assert "Traceback" not in result.stderr
