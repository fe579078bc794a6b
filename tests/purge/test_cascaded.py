"""Rows removed by ON DELETE CASCADE are counted per table, on Ralph's schema (events, sessions, spec_runs that
cascade from sessions, metric_buckets in milliseconds), on real SQLite and PostgreSQL: in each rule's result,
the purge's fields, the dry run, and through `python -m worker`: the outcome event, `history` (text and --json),
`status` (text and --json) and the webhook with NOTIFY_ON=all."""

from datetime import datetime, timedelta, timezone
import json
from pathlib import Path
import sqlite3
import threading

import psycopg
import pytest

from jobs.purge import dry_run, parse_retention_rules, purge, purge_fields
from tests.conftest import run_worker
from tests.notify import conftest as notify
from tests.purge.conftest import NOW, hold, make_sqlite, pg_execute

receiver = notify.receiver  # the webhook receiver fixture, found here by its name

RULES = ("events.created_at=30d;sessions.started_at=30d;spec_runs.created_at=30d;"
         "metric_buckets.bucket_start:ms=30d")
SQLITE_SCHEMA = """
CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, kind TEXT);
CREATE TABLE sessions (id INTEGER PRIMARY KEY, started_at TEXT NOT NULL);
CREATE TABLE spec_runs (id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
                        created_at TEXT NOT NULL);
CREATE INDEX spec_runs_session ON spec_runs (session_id);
CREATE TABLE metric_buckets (id INTEGER PRIMARY KEY, bucket_start INTEGER NOT NULL, value REAL);
"""
PG_SCHEMA = """
CREATE TABLE events (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL, kind text);
CREATE TABLE sessions (id bigserial PRIMARY KEY, started_at timestamptz NOT NULL);
CREATE TABLE spec_runs (id bigserial PRIMARY KEY, session_id bigint NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
                        created_at timestamptz NOT NULL);
CREATE INDEX spec_runs_session ON spec_runs (session_id);
CREATE TABLE metric_buckets (id bigserial PRIMARY KEY, bucket_start bigint NOT NULL, value double precision);
"""
DAYS = 60
RUNS_PER_SESSION = 7


def ralph_rows(now: datetime) -> dict[str, list[tuple]]:
    """One event, one session (with RUNS_PER_SESSION spec_runs a few minutes into it) and one metric bucket per
    day over DAYS days, at noon-ish so no row is near the 30-day cutoff."""
    days = [now - timedelta(days=day, hours=5) for day in range(DAYS)]
    return {
        "events": [(moment, "tick") for moment in days],
        "sessions": [(index + 1, moment) for index, moment in enumerate(days)],
        "spec_runs": [(index + 1, moment + timedelta(minutes=run)) for index, moment in enumerate(days)
                      for run in range(RUNS_PER_SESSION)],
        "metric_buckets": [(int(moment.timestamp() * 1000), 1.5) for moment in days],
    }


def old_counts() -> dict[str, int]:
    """Rows older than 30 days per table: days 30..59 (day 30 is 30 days and 5 hours old)."""
    old_days = DAYS - 30
    return {"events": old_days, "sessions": old_days, "spec_runs": old_days * RUNS_PER_SESSION,
            "metric_buckets": old_days}


def fill_sqlite(path: Path, now: datetime) -> None:
    rows = ralph_rows(now)
    text = "%Y-%m-%d %H:%M:%S"
    db = make_sqlite(path, SQLITE_SCHEMA)
    db.executemany("INSERT INTO events (created_at, kind) VALUES (?, ?)", [(m.strftime(text), k) for m, k in rows["events"]])
    db.executemany("INSERT INTO sessions (id, started_at) VALUES (?, ?)",
                   [(i, m.strftime(text)) for i, m in rows["sessions"]])
    db.executemany("INSERT INTO spec_runs (session_id, created_at) VALUES (?, ?)",
                   [(i, m.strftime(text)) for i, m in rows["spec_runs"]])
    db.executemany("INSERT INTO metric_buckets (bucket_start, value) VALUES (?, ?)", rows["metric_buckets"])
    db.close()


def fill_postgres(url: str, now: datetime) -> None:
    rows = ralph_rows(now)
    pg_execute(url, PG_SCHEMA)
    with psycopg.connect(url) as connection:
        cursor = connection.cursor()
        cursor.executemany("INSERT INTO events (created_at, kind) VALUES (%s, %s)", rows["events"])
        cursor.executemany("INSERT INTO sessions (id, started_at) VALUES (%s, %s)", rows["sessions"])
        cursor.executemany("INSERT INTO spec_runs (session_id, created_at) VALUES (%s, %s)", rows["spec_runs"])
        cursor.executemany("INSERT INTO metric_buckets (bucket_start, value) VALUES (%s, %s)", rows["metric_buckets"])


@pytest.fixture(params=["sqlite", "postgres"])
def ralph(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        fill_sqlite(tmp_path / "ralph.db", NOW)
        return f"sqlite:///{tmp_path / 'ralph.db'}"
    url = request.getfixturevalue("pg_url")
    fill_postgres(url, NOW)
    return url


def test_spec_runs_that_went_with_their_sessions_are_counted_per_table_not_zero(ralph: str) -> None:
    rules = parse_retention_rules(RULES)
    old = old_counts()
    counted = {result.rule.split(".")[0]: result for result in dry_run(ralph, rules, NOW)}
    assert counted["sessions"].would_delete == old["sessions"]
    assert counted["sessions"].would_cascade == {"spec_runs": old["spec_runs"]}

    results = purge(ralph, rules, NOW, threading.Event(), held=hold(ralph), batch_size=7)

    by_table = {result.table: result for result in results}
    assert all(result.error is None for result in results), [result.error for result in results]
    assert by_table["sessions"].deleted == old["sessions"]
    assert by_table["sessions"].cascaded == {"spec_runs": old["spec_runs"]}
    assert by_table["spec_runs"].deleted == 0  # they went with their sessions, and are counted there
    assert by_table["metric_buckets"].deleted == old["metric_buckets"]
    fields = purge_fields(results)
    assert fields["purged_tables"] == old
    assert fields["purged_rows"] == sum(old.values())
    assert fields["purge"][1]["cascaded"] == {"spec_runs": old["spec_runs"]}
    assert "cascaded" not in fields["purge"][0]


def test_a_cascade_count_covers_only_what_went_when_some_children_are_not_in_the_backup(tmp_path: Path) -> None:
    path = tmp_path / "ralph.db"
    fill_sqlite(path, NOW)
    url = f"sqlite:///{path}"
    held = hold(url)
    with sqlite3.connect(path) as db:  # after the backup: a new run in the oldest session keeps that session
        db.execute("INSERT INTO spec_runs (session_id, created_at) VALUES (?, '2026-01-01 00:00:00')", (DAYS,))

    [result] = purge(url, parse_retention_rules("sessions.started_at=30d"), NOW, threading.Event(), held=held)

    old = old_counts()
    assert result.deleted == old["sessions"] - 1 and result.kept == 1
    assert result.cascaded == {"spec_runs": old["spec_runs"] - RUNS_PER_SESSION}
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM spec_runs WHERE session_id = ?", (DAYS,)).fetchone() == (8,)


def test_the_cli_reports_cascaded_rows_in_the_outcome_history_status_and_webhook(
        tmp_path: Path, worker_env: dict[str, str], receiver: notify.Receiver) -> None:
    path = tmp_path / "ralph.db"
    fill_sqlite(path, datetime.now(timezone.utc))
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{path}", "RETENTION_RULES": RULES, "NOTIFY_ON": "all",
           "NOTIFY_WEBHOOK_URL": f"{receiver.url}/hook"}
    old = old_counts()
    cascaded = f"sessions.started_at=30d deleted {old['sessions']}, with spec_runs {old['spec_runs']} by cascade"

    dry = run_worker(["prune", "--dry-run"], env, cwd=tmp_path)
    assert dry.code == 0, dry.stderr
    assert (f"table sessions.started_at=30d: would delete {old['sessions']} rows older than" in dry.stdout
            and f"(removing {old['spec_runs']} rows of spec_runs with them)" in dry.stdout)

    backup = run_worker(["backup", "--json"], env, cwd=tmp_path)

    assert backup.code == 0, backup.stderr
    outcome = json.loads(backup.stdout)
    assert outcome["purged_tables"] == old and outcome["purged_rows"] == sum(old.values())
    purge_event = next(event for event in backup.events if event.get("job") == "purge"
                       and event["event"] == "job.succeeded")
    assert purge_event["purged_tables"]["spec_runs"] == old["spec_runs"]

    history = json.loads(run_worker(["history", "--json", "--job", "purge"], env, cwd=tmp_path).stdout)
    assert history[0]["purge"]["purged_tables"] == old
    assert history[0]["purge"]["purge"][1]["cascaded"] == {"spec_runs": old["spec_runs"]}
    text = run_worker(["history", "--job", "purge"], env, cwd=tmp_path).stdout
    assert f"{sum(old.values())} rows: " in text and cascaded in text

    status = json.loads(run_worker(["status", "--json"], env, cwd=tmp_path).stdout)["last_purge"]
    assert status["tables"] == old and status["rules"][1]["cascaded"] == {"spec_runs": old["spec_runs"]}
    line = run_worker(["status"], env, cwd=tmp_path).stdout
    assert f"sessions.started_at=30d: {old['sessions']} (+ spec_runs {old['spec_runs']} by cascade)" in line
    assert f"spec_runs {old['spec_runs']}" in line and "spec_runs.created_at=30d: 0" in line

    hooks = [request.json() for request in receiver.wait_for(2)]
    [told] = [hook for hook in hooks if hook["job"] == "purge"]
    assert cascaded in told["text"] and told["purged_tables"] == old
