"""Table retention on real SQLite files: what goes, what stays, dry runs, bad rules, foreign keys, cancelling."""

from datetime import timedelta
from pathlib import Path
import random
import sqlite3
import threading
import time

import pytest

from jobs.engines import open_source
from jobs.errors import Cancelled, SourceError
from jobs.purge import check_rules, count_rows, dry_run, parse_retention_rules, purge
from jobs.purge.database import engine_for
from jobs.purge.delete import RuleResult, cutoff_for, next_batch, old_rows, purge_target
from jobs.purge.schema import resolve
from tests.purge.conftest import NOW, hold, iso_variants, make_sqlite, parse_moment, spanning_moments

CUTOFF = NOW - timedelta(days=30)
EVENTS = "CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, body TEXT);"
UNTYPED = "CREATE TABLE events (id INTEGER PRIMARY KEY, created_at, body TEXT);"  # stores values as they come


def rules(text: str) -> list:
    return parse_retention_rules(text)


def fill_events(db: sqlite3.Connection, shuffle: bool = True) -> dict[int, str]:
    """Insert one event per moment over 60 days, in every ISO spelling; ids do not follow time when shuffled."""
    texts = [iso_variants(moment, index) for index, moment in enumerate(spanning_moments())]
    if shuffle:
        random.Random(7).shuffle(texts)
    db.executemany("INSERT INTO events (created_at, body) VALUES (?, 'x')", [(text,) for text in texts])
    return dict(db.execute("SELECT id, created_at FROM events"))


def dump(path: Path) -> list[str]:
    """Every row of every table, as SQL text (the file's bytes move with WAL checkpoints; its content must not)."""
    with sqlite3.connect(path) as db:
        return list(db.iterdump())


def ids(path: Path, table: str = "events") -> set[int]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute(f"SELECT rowid FROM {table}")}


@pytest.mark.parametrize("index", ["", "CREATE INDEX events_created_at ON events (created_at);"])
def test_purge_deletes_rows_older_than_the_rule_in_every_iso_spelling_and_keeps_the_newer_ones(
        tmp_path: Path, index: str) -> None:
    path = tmp_path / "app.db"
    stored = fill_events(make_sqlite(path, EVENTS + index))
    newer = {key for key, text in stored.items() if parse_moment(text) >= CUTOFF}
    assert 0 < len(newer) < len(stored)

    [result] = purge(f"sqlite:///{path}", rules("events.created_at=30d"), NOW, threading.Event(), batch_size=50,
                     held=hold(f"sqlite:///{path}"))

    assert ids(path) == newer
    assert result.error is None and result.deleted == len(stored) - len(newer)
    assert result.batches == -(-result.deleted // 50) and result.cutoff == "2026-10-23T02:00:00Z"
    assert result.as_dict() == {"rule": "events.created_at=30d", "table": "events", "deleted": result.deleted, "batches": result.batches,
                                "cutoff": "2026-10-23T02:00:00Z", "cascades": [], "error": None}


NOON = NOW.replace(hour=12)  # cutoff 2026-10-23 12:00 UTC: +14:00 times of old rows are already on the 24th


@pytest.mark.parametrize("now, edge", [
    (NOW, {
        "2026-10-23 01:59:59": "old", "2026-10-23 02:00:00": "new", "2026-10-23 01:59:59.999": "old",
        "2026-10-23T02:00:00.001Z": "new", "2026-10-23T15:59:59+14:00": "old", "2026-10-23T16:00:00+14:00": "new",
        "2026-10-22T11:59:59-14:00": "old", "2026-10-22T12:00:00-14:00": "new", "2026-10-22": "old",
        "2026-10-23": "old", "2026-10-24": "new",
    }),
    (NOON, {
        "2026-10-24T01:59:59+14:00": "old", "2026-10-24T02:00:00+14:00": "new", "2026-10-23T11:59:59": "old",
        "2026-10-23T12:00:00": "new", "2026-10-22T21:59:59-14:00": "old", "2026-10-22T22:00:00-14:00": "new",
    }),
])
def test_rows_a_second_either_side_of_the_cutoff_fall_on_the_right_side_whatever_the_offset(
        tmp_path: Path, now, edge: dict[str, str]) -> None:
    path = tmp_path / "app.db"
    db = make_sqlite(path, EVENTS + "CREATE INDEX events_created_at ON events (created_at);")
    db.executemany("INSERT INTO events (created_at) VALUES (?)", [(text,) for text in edge])

    purge(f"sqlite:///{path}", rules("events.created_at=30d"), now, threading.Event(), held=hold(f"sqlite:///{path}"))

    left = {row[0] for row in db.execute("SELECT created_at FROM events")}
    assert left == {text for text, side in edge.items() if side == "new"}


@pytest.mark.parametrize("declared, convert", [("INTEGER", int), ("REAL", float), ("", float), ("TIMESTAMP", int)])
def test_purge_reads_unix_seconds_in_integer_real_and_untyped_columns(tmp_path: Path, declared: str, convert) -> None:
    path = tmp_path / "app.db"
    db = make_sqlite(path, f"CREATE TABLE samples (id INTEGER PRIMARY KEY, at {declared}, v REAL);")
    moments = spanning_moments()
    db.executemany("INSERT INTO samples (at) VALUES (?)", [(convert(moment.timestamp()),) for moment in moments])
    newer = {key for key, at in db.execute("SELECT id, at FROM samples") if at >= CUTOFF.timestamp()}

    [result] = purge(f"sqlite:///{path}", rules("samples.at=30d"), NOW, threading.Event(), batch_size=100,
                     held=hold(f"sqlite:///{path}"))

    assert ids(path, "samples") == newer and result.deleted == len(moments) - len(newer) and result.error is None


def test_a_dry_run_deletes_nothing_and_counts_exactly_what_the_purge_then_deletes(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    stored = fill_events(make_sqlite(path, EVENTS + "CREATE TABLE audit (id INTEGER PRIMARY KEY, at INTEGER);"))
    old = sum(1 for text in stored.values() if parse_moment(text) < CUTOFF)
    url = f"sqlite:///{path}"
    before = dump(path)

    planned = dry_run(url, rules("events.created_at=30d;audit.at=7d"), NOW)

    assert [(p.rule, p.would_delete, p.deleted, p.error) for p in planned] == [
        ("events.created_at=30d", old, 0, None), ("audit.at=7d", 0, 0, None)]
    assert count_rows(url, rules("events.created_at=30d")[0], NOW) == old
    assert dump(path) == before and ids(path) == set(stored)
    [done] = purge(url, rules("events.created_at=30d"), NOW, threading.Event(), held=hold(url))
    assert done.deleted == old


@pytest.mark.parametrize(
    "schema, values, rule, fragment",
    [
        (EVENTS, [], "evnts.created_at=30d", "the database has no table evnts"),
        (EVENTS, [], "events.createdat=30d", "table events has no column createdat; its columns are id, created_at, body"),
        (EVENTS + "CREATE VIEW recent AS SELECT * FROM events;", [], "recent.created_at=30d", "recent is a view"),
        (EVENTS, [], "other.events.created_at=30d", "the database has no schema other"),
        (UNTYPED, ["2026-11-01 00:00:00", 1761955200], "events.created_at=30d", "mixes text and numbers"),
        (EVENTS, [1761955200], "events.created_at=30d", "'1761955200', which is not an ISO 8601 time"),
        (EVENTS, ["22/11/2026 02:00"], "events.created_at=30d", "'22/11/2026 02:00', which is not an ISO 8601 time"),
        (EVENTS, ["2026-13-45 00:00:00"], "events.created_at=30d", "which is not an ISO 8601 time"),
        (UNTYPED, [b"\x00\x01"], "events.created_at=30d", "holds binary values"),
        (UNTYPED, [1761955200123], "events.created_at=30d", "looks like milliseconds"),
        (EVENTS, ["2026-11-01 00:00:00"], "events.id=30d", "which is not a Unix time in seconds"),
        ("CREATE TABLE files (id INTEGER PRIMARY KEY, created_at BLOB);", [], "files.created_at=30d", "is declared BLOB"),
    ],
)
def test_a_rule_that_does_not_fit_the_database_is_a_problem_naming_it_and_deletes_nothing(
        tmp_path: Path, schema: str, values: list, rule: str, fragment: str) -> None:
    path = tmp_path / "app.db"
    db = make_sqlite(path, schema)
    if "events" in schema:
        db.executemany("INSERT INTO events (created_at) VALUES (?)", [(value,) for value in values])
        db.execute("INSERT INTO events (created_at) VALUES ('2020-01-01 00:00:00')") if not values else None
    before = dump(path)

    problems = check_rules(f"sqlite:///{path}", rules(rule))

    assert len(problems) == 1 and problems[0].startswith(f"{rule}: ") and fragment in problems[0], problems
    [result] = purge(f"sqlite:///{path}", rules(rule), NOW, threading.Event(), held=hold(f"sqlite:///{path}"))
    assert result.deleted == 0 and fragment in result.error
    assert dump(path) == before


def test_a_stray_value_the_sample_missed_is_never_deleted_by_a_wrong_reading(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = make_sqlite(path, UNTYPED)
    texts = ["2026-01-01 00:00:00"] * 500 + [2460000.5, "yesterday", "2026-13-01 00:00:00"] + ["2026-01-01 00:00:00"] * 500
    db.executemany("INSERT INTO events (created_at) VALUES (?)", [(text,) for text in texts])
    assert check_rules(f"sqlite:///{path}", rules("events.created_at=30d")) == []  # the sample saw only good times

    [result] = purge(f"sqlite:///{path}", rules("events.created_at=30d"), NOW, threading.Event(),
                     held=hold(f"sqlite:///{path}"))

    # SQLite's datetime() reads the number as a Julian day (year 2023); it is not text, so it is not a time here
    assert result.deleted == 1000
    assert set(db.execute("SELECT created_at FROM events")) == {(2460000.5,), ("2026-13-01 00:00:00",), ("yesterday",)}


@pytest.mark.parametrize("text, old", [
    ("2026-01-01", True), ("2026-01-01T12:30", True), ("2026-01-01 12:30:00+05:00", True), ("2026-01-01T12:30Z", True),
    ("12:30", False), ("12:30:00", False), ("00:00", False), ("23:59:59.5", False), ("12:30Z", False),
    ("T12:30", False), ("1234567.5", False), ("-0001-01-01", False), (" 2026-01-01", False), ("now", False),
    ("2026-1-01", False), ("2026-01-01x", False),
])
def test_only_text_that_starts_with_a_date_is_read_as_a_time(tmp_path: Path, text: str, old: bool) -> None:
    """SQLite's datetime() reads a time of day alone as a day in 2000, and a Julian day written as text; neither
    is a date, so neither is ever old (the values sit where the start-up check's sample does not look)."""
    path = tmp_path / "app.db"
    db = make_sqlite(path, EVENTS)
    newer = [("2026-11-21 00:00:00",)] * 300
    db.executemany("INSERT INTO events (created_at) VALUES (?)", [*newer, (text,), *newer])
    assert count_rows(f"sqlite:///{path}", rules("events.created_at=30d")[0], NOW) == int(old)


def test_rules_that_fit_have_no_problems_whatever_the_case_and_with_the_main_schema(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    fill_events(make_sqlite(path, EVENTS))
    assert check_rules(f"sqlite:///{path}", rules("Events.Created_At=30d;main.events.created_at=1d")) == []
    [result] = purge(f"sqlite:///{path}", rules("EVENTS.CREATED_AT=30d"), NOW, threading.Event(),
                     held=hold(f"sqlite:///{path}"))
    assert result.deleted > 0 and result.error is None


def test_a_missing_database_file_is_a_source_error_and_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="unable to open database file"):
        check_rules(f"sqlite:///{tmp_path / 'gone.db'}", rules("events.created_at=30d"))
    assert not (tmp_path / "gone.db").exists()


def test_a_relative_url_is_read_from_cwd_and_the_backups_own_source_is_what_the_purge_opens(tmp_path: Path) -> None:
    fill_events(make_sqlite(tmp_path / "app.db", EVENTS))
    assert count_rows("sqlite:///app.db", rules("events.created_at=30d")[0], NOW, cwd=tmp_path) > 0
    source = open_source("sqlite:///app.db", tmp_path)  # as the backup opens BACKUP_SOURCE
    [result] = purge(source, rules("events.created_at=30d"), NOW, threading.Event(), held=hold(f"sqlite:///{source.path}"))
    assert result.deleted > 0 and result.error is None


@pytest.mark.parametrize("every, shape", [(1, "BETWEEN"), (2, "BETWEEN"), (20, "IN")])
def test_batches_are_key_ranges_when_old_rows_are_dense_and_key_lists_when_they_are_scattered(
        tmp_path: Path, every: int, shape: str) -> None:
    path = tmp_path / "app.db"
    db = make_sqlite(path, EVENTS)
    times = ["2026-01-01 00:00:00" if index % every == 0 else "2026-11-21 00:00:00" for index in range(3000)]
    db.executemany("INSERT INTO events (created_at) VALUES (?)", [(text,) for text in times])
    newer = {key for key, text in db.execute("SELECT id, created_at FROM events") if text.startswith("2026-11")}
    rule = rules("events.created_at=30d")[0]
    with engine_for(f"sqlite:///{path}") as engine, engine.connect() as connection:
        target = resolve(connection, rule)
        batch = next_batch(connection, target, old_rows(target, cutoff_for(rule, NOW)), None, 50)
    assert shape in str(batch.chosen) and batch.size == 50

    [result] = purge(f"sqlite:///{path}", [rule], NOW, threading.Event(), batch_size=50,
                     held=hold(f"sqlite:///{path}"))

    assert ids(path) == newer and result.deleted == 3000 - len(newer) and result.batches == -(-result.deleted // 50)


def test_a_without_rowid_table_is_purged_by_its_composite_primary_key(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = make_sqlite(path, "CREATE TABLE readings (sensor TEXT, at TEXT, value REAL, PRIMARY KEY (sensor, at)) WITHOUT ROWID;")
    moments = spanning_moments()
    db.executemany("INSERT INTO readings VALUES (?, ?, 1.0)",
                   [(f"s{index % 3}-{index}", iso_variants(moment, index)) for index, moment in enumerate(moments)])
    newer = {row for row in db.execute("SELECT sensor, at FROM readings") if parse_moment(row[1]) >= CUTOFF}

    [result] = purge(f"sqlite:///{path}", rules("readings.at=30d"), NOW, threading.Event(), batch_size=40,
                     held=hold(f"sqlite:///{path}"))

    assert set(db.execute("SELECT sensor, at FROM readings")) == newer and result.batches > 1 and result.error is None


def test_a_column_named_rowid_does_not_hide_the_real_rowid(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = make_sqlite(path, "CREATE TABLE odd (rowid TEXT, created_at TEXT);")
    db.executemany("INSERT INTO odd VALUES ('same', ?)", [("2026-01-01 00:00:00",), ("2026-11-21 00:00:00",)])
    [result] = purge(f"sqlite:///{path}", rules("odd.created_at=30d"), NOW, threading.Event(),
                     held=hold(f"sqlite:///{path}"))
    assert result.deleted == 1 and [row[0] for row in db.execute("SELECT created_at FROM odd")] == ["2026-11-21 00:00:00"]


# --- foreign keys ----------------------------------------------------------------------------------------------

def notes_db(path: Path, action: str) -> sqlite3.Connection:
    db = make_sqlite(path, EVENTS + f"""
        CREATE TABLE notes (id INTEGER PRIMARY KEY, event_id INTEGER REFERENCES events (id) ON DELETE {action});
        CREATE TABLE metrics (id INTEGER PRIMARY KEY, at INTEGER);""")
    fill_events(db, shuffle=False)
    db.executemany("INSERT INTO metrics (at) VALUES (?)", [(int(m.timestamp()),) for m in spanning_moments()])
    return db


@pytest.mark.parametrize("action", ["RESTRICT", "NO ACTION"])
def test_old_rows_still_referenced_fail_their_rule_with_nothing_deleted_and_other_rules_still_run(
        tmp_path: Path, action: str) -> None:
    path = tmp_path / "app.db"
    db = notes_db(path, action)
    db.execute("INSERT INTO notes (event_id) VALUES (2000), (2001), (1)")  # 2000, 2001: old; 1: new
    events = ids(path)

    for_events, for_metrics = purge(f"sqlite:///{path}", rules("events.created_at=30d;metrics.at=30d"), NOW,
                                    threading.Event(), held=hold(f"sqlite:///{path}"))

    assert for_events.deleted == 0 and ids(path) == events
    assert for_events.error == (f"2 rows of notes still reference rows this rule would delete (notes.event_id ON "
                                f"DELETE {action}); delete them first or declare the key ON DELETE CASCADE, "
                                "nothing was deleted")
    assert for_metrics.deleted > 0 and for_metrics.error is None
    [planned, _] = dry_run(f"sqlite:///{path}", rules("events.created_at=30d;metrics.at=30d"), NOW)
    assert planned.would_delete > 0 and "2 rows of notes still reference" in planned.error


def test_a_restrict_key_that_only_points_at_newer_rows_does_not_stop_the_rule(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = notes_db(path, "RESTRICT")
    db.execute("INSERT INTO notes (event_id) VALUES (1), (2)")
    [result] = purge(f"sqlite:///{path}", rules("events.created_at=30d"), NOW, threading.Event(),
                     held=hold(f"sqlite:///{path}"))
    assert result.deleted > 0 and result.error is None and result.cascades == []


@pytest.mark.parametrize("action, left", [("CASCADE", [(3, 1)]), ("SET NULL", [(1, None), (2, None), (3, 1)])])
def test_cascading_keys_are_followed_and_reported(tmp_path: Path, action: str, left: list) -> None:
    path = tmp_path / "app.db"
    db = notes_db(path, action)
    db.execute("INSERT INTO notes (event_id) VALUES (2000), (2001), (1)")

    [result] = purge(f"sqlite:///{path}", rules("events.created_at=30d"), NOW, threading.Event(),
                     held=hold(f"sqlite:///{path}"))

    assert result.error is None and result.deleted > 0
    assert result.cascades == [f"notes.event_id ON DELETE {action}"]
    assert db.execute("SELECT id, event_id FROM notes ORDER BY id").fetchall() == left


def test_a_reference_that_appears_during_the_purge_rolls_back_its_whole_batch_and_ends_the_rule(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = notes_db(path, "RESTRICT")
    rule = rules("events.created_at=30d")[0]
    cutoff = cutoff_for(rule, NOW)
    old = [row[0] for row in db.execute("SELECT id FROM events ORDER BY id") if parse_moment(
        db.execute("SELECT created_at FROM events WHERE id = ?", row).fetchone()[0]) < cutoff]
    held = hold(f"sqlite:///{path}")
    with engine_for(f"sqlite:///{path}", held_file=held.sqlite_file) as engine, engine.connect() as connection:
        target = resolve(connection, rule)
        connection.commit()
        db.execute("INSERT INTO notes (event_id) VALUES (?)", (old[25],))  # in the third batch of ten
        result = RuleResult(rule=rule.describe())
        assert purge_target(connection, target, cutoff, threading.Event(), result, held=held, batch_size=10) is True

    assert result.deleted == 20 and result.batches == 2
    assert "refused by a foreign key (FOREIGN KEY constraint failed)" in result.error
    assert "20 rows were deleted before it" in result.error
    assert set(old[20:]) <= ids(path) and not set(old[:20]) & ids(path)


# --- stopping --------------------------------------------------------------------------------------------------

def test_cancel_stops_between_batches_and_reports_what_was_deleted(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = notes_db(path, "CASCADE")
    total = len(ids(path))
    cancel = threading.Event()

    def cancel_after_first_batch() -> None:
        watcher = sqlite3.connect(path)
        while not cancel.is_set():
            if watcher.execute("SELECT count(*) FROM events").fetchone()[0] < total:
                cancel.set()
            time.sleep(0.005)

    thread = threading.Thread(target=cancel_after_first_batch)
    thread.start()
    try:
        with pytest.raises(Cancelled) as stopped:
            purge(f"sqlite:///{path}", rules("events.created_at=30d;metrics.at=30d"), NOW, cancel,
                  batch_size=20, pause=0.3, held=hold(f"sqlite:///{path}"))
    finally:
        cancel.set()
        thread.join()

    events, metrics = stopped.value.fields["purge"]
    deleted = total - len(ids(path))
    assert 0 < deleted < 1000 and events["deleted"] == deleted and events["deleted"] % 20 == 0
    assert events["error"] == "stopped: the worker is stopping"
    assert metrics == {"rule": "metrics.at=30d", "table": "metrics", "deleted": 0, "batches": 0, "cutoff": "2026-10-23T02:00:00Z",
                       "cascades": [], "error": "not started: the worker is stopping"}
    assert stopped.value.stage == "purge" and f"after deleting {deleted} rows" in str(stopped.value)
    assert db.execute("SELECT count(*) FROM metrics").fetchone()[0] == len(spanning_moments())


def test_a_purge_asked_to_stop_before_it_starts_deletes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    fill_events(make_sqlite(path, EVENTS))
    before = ids(path)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        purge(f"sqlite:///{path}", rules("events.created_at=30d"), NOW, cancel, held=hold(f"sqlite:///{path}"))
    assert ids(path) == before


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.4])
def test_whenever_cancel_comes_the_reported_count_is_exactly_what_left_the_table(tmp_path: Path, delay: float) -> None:
    path = tmp_path / "app.db"
    db = make_sqlite(path, "CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, body TEXT);")
    db.execute("BEGIN")
    db.executemany("INSERT INTO events (created_at, body) VALUES (?, 'x')",
                   [("2026-01-01 00:00:00" if index % 3 else "2026-11-21 00:00:00",) for index in range(200_000)])
    db.execute("COMMIT")
    cancel = threading.Event()
    timer = threading.Timer(delay, cancel.set)
    timer.start()
    try:
        [result] = purge(f"sqlite:///{path}", rules("events.created_at=30d"), NOW, cancel, batch_size=500,
                         held=hold(f"sqlite:///{path}"))
        fields = [result.as_dict()]
    except Cancelled as stopped:
        fields = stopped.fields["purge"]
        assert fields[0]["error"] in ("stopped: the worker is stopping", "not started: the worker is stopping")
    finally:
        timer.cancel()
    assert fields[0]["deleted"] == 200_000 - len(ids(path))
