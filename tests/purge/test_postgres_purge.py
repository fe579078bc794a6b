"""Table retention on real PostgreSQL databases: timestamptz, timestamp and date columns, bad rules, foreign keys
across schemas, cancelling, and a row the app keeps locked."""

from datetime import datetime, timedelta, timezone
import threading
import time

import psycopg
import pytest

from jobs.errors import Cancelled
from jobs.purge import check_rules, count_rows, database, dry_run, parse_retention_rules, purge
from tests.purge.conftest import NOW, ZONES, hold, pg_execute, spanning_moments

CUTOFF = NOW - timedelta(days=30)
EVENTS = """
CREATE TABLE events (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL, happened timestamp NOT NULL,
                     day date NOT NULL, body text, n integer);
"""


def fill(url: str, extra: str = "") -> list[datetime]:
    """Create events (and `extra`) with one row per moment over 60 days. The database's time zone is not UTC, so
    a timestamp compared the wrong way would show."""
    name = url.rsplit("/", 1)[1]
    pg_execute(url, f"ALTER DATABASE {name} SET timezone = 'America/New_York'")
    pg_execute(url, EVENTS + extra)
    moments = spanning_moments()
    with psycopg.connect(url) as connection:
        connection.cursor().executemany(
            "INSERT INTO events (created_at, happened, day, body) VALUES (%s, %s, %s, 'x')",
            [(moment.astimezone(ZONES[index % len(ZONES)]), moment.replace(tzinfo=None), moment.date())
             for index, moment in enumerate(moments)])
    return moments


def remaining(url: str) -> list[datetime]:
    """The instants left in events, in UTC (Python compares times of one zone by wall clock, even across DST)."""
    return sorted(row[0].astimezone(timezone.utc) for row in pg_execute(url, "SELECT created_at FROM events"))


@pytest.mark.parametrize(
    "column, newer",
    [
        ("created_at", lambda moment: moment >= CUTOFF),
        ("happened", lambda moment: moment >= CUTOFF),  # no time zone: read as UTC
        ("day", lambda moment: moment.date() >= CUTOFF.date()),  # a day goes once it has wholly passed
    ],
)
def test_purge_deletes_old_rows_by_timestamptz_timestamp_and_date_and_the_dry_run_counted_them(
        pg_url: str, column: str, newer) -> None:
    moments = fill(pg_url)
    kept = sorted(moment for moment in moments if newer(moment))
    rule = parse_retention_rules(f"events.{column}=30d")

    [planned] = dry_run(pg_url, rule, NOW)
    assert planned.would_delete == len(moments) - len(kept) and len(remaining(pg_url)) == len(moments)
    assert count_rows(pg_url, rule[0], NOW) == planned.would_delete
    [result] = purge(pg_url, rule, NOW, threading.Event(), batch_size=100, held=hold(pg_url))

    assert result.error is None and result.deleted == planned.would_delete and result.batches > 1
    assert remaining(pg_url) == kept


@pytest.mark.parametrize(
    "extra, rule, fragment",
    [
        ("", "evnts.created_at=30d", "the database has no table evnts in schema public; check the name"),
        ("", "events.created=30d", "table events has no column created; its columns are id, created_at, happened"),
        ("", "events.body=30d", "column body is of type TEXT; retention needs timestamp, timestamp with time zone, date, or a number with its unit"),
        ("", "events.n=30d", "column n is of type INTEGER"),
        ("CREATE VIEW recent AS SELECT * FROM events;", "recent.created_at=30d", "recent is a view"),
        ("", "archive.events.created_at=30d", "the database has no schema archive"),
    ],
)
def test_a_rule_that_does_not_fit_the_database_is_a_problem_naming_it_and_deletes_nothing(
        pg_url: str, extra: str, rule: str, fragment: str) -> None:
    moments = fill(pg_url, extra)
    problems = check_rules(pg_url, parse_retention_rules(rule))
    assert len(problems) == 1 and problems[0].startswith(f"{rule}: ") and fragment in problems[0], problems
    [result] = purge(pg_url, parse_retention_rules(rule), NOW, threading.Event(), held=hold(pg_url))
    assert result.deleted == 0 and fragment in result.error and len(remaining(pg_url)) == len(moments)


def test_schema_qualified_and_mixed_case_names_and_the_postgres_scheme_work(pg_url: str) -> None:
    pg_execute(pg_url, """
        CREATE SCHEMA audit;
        CREATE TABLE audit.logs (id serial PRIMARY KEY, at timestamptz NOT NULL);
        CREATE TABLE "UserSessions" (id serial PRIMARY KEY, "StartedAt" timestamptz NOT NULL);
        INSERT INTO audit.logs (at) VALUES ('2026-01-01T00:00:00Z'), ('2026-11-21T00:00:00Z');
        INSERT INTO "UserSessions" ("StartedAt") VALUES ('2026-01-01T00:00:00Z'), ('2026-11-21T00:00:00Z');
    """)
    url = pg_url.replace("postgresql://", "postgres://")
    rules = parse_retention_rules("audit.logs.at=30d;usersessions.startedat=30d;public.UserSessions.StartedAt=1d")
    assert check_rules(url, rules) == []
    results = purge(url, rules[:2], NOW, threading.Event(), held=hold(url))
    assert [(r.deleted, r.error) for r in results] == [(1, None), (1, None)]
    assert pg_execute(pg_url, 'SELECT count(*) FROM audit.logs UNION ALL SELECT count(*) FROM "UserSessions"') == [(1,), (1,)]


# --- foreign keys ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("action", ["RESTRICT", "NO ACTION"])
def test_old_rows_referenced_from_another_schema_fail_the_rule_with_nothing_deleted(pg_url: str, action: str) -> None:
    moments = fill(pg_url, f"""
        CREATE SCHEMA billing;
        CREATE TABLE billing.invoices (id serial PRIMARY KEY, event_id bigint REFERENCES events (id) ON DELETE {action});
    """)
    pg_execute(pg_url, "INSERT INTO billing.invoices (event_id) VALUES (2000), (1)")  # 2000 is old, 1 is new

    [result] = purge(pg_url, parse_retention_rules("events.created_at=30d"), NOW, threading.Event(),
                     held=hold(pg_url))

    assert result.deleted == 0 and len(remaining(pg_url)) == len(moments)
    assert result.error.startswith(f"1 rows of invoices still reference rows this rule would delete "
                                   f"(billing.invoices.event_id ON DELETE {action})")


def test_cascading_keys_are_followed_and_reported(pg_url: str) -> None:
    fill(pg_url, """
        CREATE TABLE notes (id serial PRIMARY KEY, event_id bigint REFERENCES events (id) ON DELETE CASCADE);
        CREATE TABLE tags (id serial PRIMARY KEY, event_id bigint REFERENCES events (id) ON DELETE SET NULL);
    """)
    pg_execute(pg_url, "INSERT INTO notes (event_id) VALUES (2000), (1); INSERT INTO tags (event_id) VALUES (2000)")

    [result] = purge(pg_url, parse_retention_rules("events.created_at=30d"), NOW, threading.Event(),
                     held=hold(pg_url))

    assert result.error is None and result.deleted > 0
    assert sorted(result.cascades) == ["notes.event_id ON DELETE CASCADE", "tags.event_id ON DELETE SET NULL"]
    assert pg_execute(pg_url, "SELECT event_id FROM notes UNION ALL SELECT event_id FROM tags") == [(1,), (None,)]


# --- the app keeps writing ---------------------------------------------------------------------------------------

def test_cancel_stops_between_batches_and_reports_what_was_deleted(pg_url: str) -> None:
    moments = fill(pg_url)
    cancel = threading.Event()

    def cancel_after_first_batch() -> None:
        while not cancel.is_set():
            if len(remaining(pg_url)) < len(moments):
                cancel.set()
            time.sleep(0.01)

    thread = threading.Thread(target=cancel_after_first_batch)
    thread.start()
    try:
        with pytest.raises(Cancelled) as stopped:
            purge(pg_url, parse_retention_rules("events.created_at=30d"), NOW, cancel, batch_size=20, pause=0.3,
                  held=hold(pg_url))
    finally:
        cancel.set()
        thread.join()

    [events] = stopped.value.fields["purge"]
    deleted = len(moments) - len(remaining(pg_url))
    assert 0 < deleted < 1000 and events["deleted"] == deleted and events["error"] == "stopped: the worker is stopping"


@pytest.mark.slow
def test_a_row_the_app_keeps_locked_ends_the_rule_after_the_lock_timeout_keeping_earlier_batches(pg_url: str) -> None:
    fill(pg_url)
    old = [row[0] for row in pg_execute(pg_url, "SELECT id FROM events WHERE created_at < %s ORDER BY id", (CUTOFF,))]
    with psycopg.connect(pg_url) as app:
        app.execute("SELECT * FROM events WHERE id = %s FOR UPDATE", (old[250],))  # in the third batch of 100
        [result] = purge(pg_url, parse_retention_rules("events.created_at=30d"), NOW, threading.Event(), batch_size=100,
                         held=hold(pg_url))
        app.rollback()

    assert result.deleted == 200 and result.batches == 2
    assert "lock timeout" in result.error and "200 rows were deleted before it" in result.error
    left = {row[0] for row in pg_execute(pg_url, "SELECT id FROM events")}
    assert set(old[200:]) <= left and not set(old[:200]) & left


def test_a_stop_request_cancels_the_running_statement_within_seconds(pg_url: str) -> None:
    """A purge statement that runs long (a scan of a large table, a wait) is cancelled on the server as soon as the
    worker is asked to stop, not when it ends: the stop within 10 s holds mid-statement too."""
    cancel = threading.Event()
    with database.engine_for(pg_url) as engine, engine.connect() as connection:
        timer = threading.Timer(0.5, cancel.set)
        timer.start()
        started = time.monotonic()
        with pytest.raises(Exception) as raised:
            with database.interruptible(connection, cancel):
                connection.exec_driver_sql("SELECT pg_sleep(30)")
        timer.cancel()
    assert time.monotonic() - started < 5
    assert "cancel" in str(raised.value).lower()
