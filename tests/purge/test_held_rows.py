"""A purge deletes only rows the backup it follows holds, on real SQLite files and PostgreSQL databases: what the
app wrote or changed after the snapshot stays (inserts, updates, a key used again, cascading children at any
depth, SET NULL children), and a parent whose cascade would reach further than the walk looks stays too."""

from collections.abc import Callable, Iterator
from pathlib import Path
import sqlite3
import threading
import time

import psycopg
import pytest

from jobs.purge import Held, parse_retention_rules, purge
from jobs.purge.schema import MAX_DEPTH
from tests.purge.conftest import NOW, hold, pg_execute

OLD, NEW = "2020-01-01 00:00:00", "2026-11-21 00:00:00"  # NOW is 2026-11-22: a 30-day rule deletes OLD only
SCHEMA = """
CREATE TABLE events (id {key} PRIMARY KEY, created_at {time} NOT NULL, body TEXT);
CREATE TABLE notes (id {key} PRIMARY KEY, event_id {key} REFERENCES events (id) ON DELETE CASCADE);
CREATE TABLE marks (id {key} PRIMARY KEY, note_id {key} REFERENCES notes (id) ON DELETE CASCADE);
CREATE TABLE tags (id {key} PRIMARY KEY, event_id {key} REFERENCES events (id) ON DELETE SET NULL);
CREATE INDEX notes_event ON notes (event_id);
CREATE INDEX marks_note ON marks (note_id);
CREATE INDEX tags_event ON tags (event_id);
"""
Run = Callable[[str], list[tuple]]


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Run, str]]:
    """(url, run(sql) -> rows, engine) for an empty database of each engine."""
    if request.param == "sqlite":
        path = tmp_path / "app.db"
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA foreign_keys=ON")

        def run(sql: str) -> list[tuple]:
            if ";" in sql.strip().rstrip(";"):
                connection.executescript(sql)
                return []
            return connection.execute(sql).fetchall()

        yield f"sqlite:///{path}", run, "sqlite"
        connection.close()
    else:
        url = request.getfixturevalue("pg_url")
        yield url, lambda sql: pg_execute(url, sql), "postgres"


def schema(engine: str) -> str:
    return SCHEMA.format(key="INTEGER" if engine == "sqlite" else "bigint",
                         time="TEXT" if engine == "sqlite" else "timestamptz")


def ids(run: Run, table: str = "events") -> set[int]:
    return {row[0] for row in run(f"SELECT id FROM {table}")}


def purge_events(url: str, held: Held, rule: str = "events.created_at=30d"):
    [result] = purge(url, parse_retention_rules(rule), NOW, threading.Event(), held=held, batch_size=3)
    assert result.error is None, result.error
    return result


def test_rows_written_or_changed_after_the_snapshot_stay_whatever_their_time(db: tuple[str, Run, str]) -> None:
    url, run, engine = db
    run(schema(engine))
    run("INSERT INTO events VALUES " + ", ".join(f"({i}, '{OLD}', 'e{i}')" for i in range(1, 11))
        + f", (11, '{NEW}', 'e11')")
    run("INSERT INTO notes VALUES (1, 1), (2, 2)")
    run("INSERT INTO marks VALUES (1, 1)")
    run("INSERT INTO tags VALUES (1, 7)")
    held = hold(url)

    run("UPDATE events SET body = 'changed' WHERE id = 3")  # an old row changed after the snapshot
    run(f"INSERT INTO events VALUES (13, '{OLD}', 'synced late')")  # an old-dated row written after it
    run("DELETE FROM events WHERE id = 4")
    run(f"INSERT INTO events VALUES (4, '{OLD}', 'e4 again')")  # the same key used again
    run("INSERT INTO notes VALUES (3, 5)")  # a cascade child of an old row, after the snapshot
    run("INSERT INTO marks VALUES (2, 2)")  # a grandchild (through notes) of old event 2
    run("INSERT INTO tags VALUES (2, 6)")  # a SET NULL child: its link would be lost, and no backup has it

    result = purge_events(url, held)

    assert ids(run) == {2, 3, 4, 5, 6, 11, 13}
    assert result.deleted == 5 and result.kept == 6  # 1, 7, 8, 9, 10 gone (1 with its note and mark)
    assert ids(run, "notes") == {2, 3} and ids(run, "marks") == {2}
    assert run("SELECT id, event_id FROM tags ORDER BY id") == [(1, None), (2, 6)]


def test_the_next_purge_after_a_backup_that_holds_them_deletes_them(db: tuple[str, Run, str]) -> None:
    url, run, engine = db
    run(schema(engine))
    run(f"INSERT INTO events VALUES (1, '{OLD}', 'a'), (2, '{OLD}', 'b')")
    held = hold(url)
    run("INSERT INTO notes VALUES (1, 1)")
    run("UPDATE events SET body = 'changed' WHERE id = 2")
    assert purge_events(url, held).deleted == 0 and ids(run) == {1, 2}

    result = purge_events(url, hold(url))  # the next cycle's backup holds the note and the change

    assert result.deleted == 2 and result.kept == 0 and ids(run) == set() and ids(run, "notes") == set()


def chain_schema(engine: str, levels: int) -> str:
    key = "INTEGER" if engine == "sqlite" else "bigint"
    tables = [f"CREATE TABLE events (id {key} PRIMARY KEY, created_at {'TEXT' if engine == 'sqlite' else 'timestamptz'});"]
    parent = "events"
    for level in range(1, levels + 1):
        tables.append(f"CREATE TABLE c{level} (id {key} PRIMARY KEY, up {key} REFERENCES {parent} (id) ON DELETE CASCADE);")
        parent = f"c{level}"
    return "\n".join(tables)


def test_a_parent_with_cascading_rows_deeper_than_the_walk_looks_is_kept(db: tuple[str, Run, str]) -> None:
    url, run, engine = db
    levels = MAX_DEPTH + 1
    run(chain_schema(engine, levels))
    run(f"INSERT INTO events VALUES (1, '{OLD}'), (2, '{OLD}')")
    for level in range(1, levels + 1):  # event 1: a chain MAX_DEPTH + 1 deep; event 2: MAX_DEPTH deep
        parent = 1 if level == 1 else 10 + level - 1
        run(f"INSERT INTO c{level} VALUES ({10 + level}, {parent})")
        if level <= MAX_DEPTH:
            run(f"INSERT INTO c{level} VALUES ({20 + level}, {2 if level == 1 else 20 + level - 1})")
    held = hold(url)

    result = purge_events(url, held)

    assert ids(run) == {1} and result.deleted == 1 and result.kept == 1
    assert ids(run, f"c{MAX_DEPTH}") == {10 + MAX_DEPTH}


def test_a_thread_of_replies_goes_whole_and_a_reply_written_after_the_snapshot_keeps_its_thread(
        db: tuple[str, Run, str]) -> None:
    url, run, engine = db
    key, time_type = ("INTEGER", "TEXT") if engine == "sqlite" else ("bigint", "timestamptz")
    run(f"CREATE TABLE comments (id {key} PRIMARY KEY, parent_id {key} REFERENCES comments (id) ON DELETE CASCADE, "
        f"created_at {time_type} NOT NULL); CREATE INDEX comments_parent ON comments (parent_id);")
    run(f"INSERT INTO comments VALUES (1, NULL, '{OLD}'), (2, 1, '{OLD}'), (3, 2, '{OLD}'), (4, NULL, '{OLD}'), "
        f"(5, 4, '{OLD}')")
    held = hold(url)
    run(f"INSERT INTO comments VALUES (6, 5, '{NEW}')")  # a new reply deep in thread 4

    purge_events(url, held, "comments.created_at=30d")

    assert ids(run, "comments") == {4, 5, 6}  # thread 1 gone whole; thread 4 kept: its new reply is in no backup


def test_a_sqlite_rowid_used_again_after_the_snapshot_is_not_the_row_the_backup_holds(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, body TEXT)")
    db.executemany("INSERT INTO events VALUES (?, ?, ?)", [(i, OLD, f"e{i}") for i in range(1, 6)])
    held = hold(f"sqlite:///{path}")
    db.execute("DELETE FROM events WHERE id = 5")
    new_id = db.execute("INSERT INTO events (created_at, body) VALUES (?, 'late')", (OLD,)).lastrowid
    assert new_id == 5  # SQLite gives the highest rowid again

    result = purge_events(f"sqlite:///{path}", held)

    assert result.deleted == 4 and db.execute("SELECT id, body FROM events").fetchall() == [(5, "late")]


def test_without_the_snapshot_nothing_is_deleted_and_the_rule_says_why(tmp_path: Path, pg_url: str) -> None:
    path = tmp_path / "app.db"
    sqlite3.connect(path).executescript(f"CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT);"
                                        f"INSERT INTO events VALUES (1, '{OLD}');")
    pg_execute(pg_url, f"CREATE TABLE events (id int PRIMARY KEY, created_at timestamptz); "
                       f"INSERT INTO events VALUES (1, '{OLD}')")
    for url, held, fragment in [
        (f"sqlite:///{path}", Held("b1"), "the snapshot of the backup b1 is no longer on the volume"),
        (f"sqlite:///{path}", Held("b1", sqlite_file=tmp_path / "gone"), "no longer on the volume"),
        (pg_url, Held("b2"), "the backup b2 records no PostgreSQL snapshot"),
    ]:
        if held.sqlite_file is not None:
            held = Held(held.backup)  # held_from_cycle never passes a file that is not there
        [result] = purge(url, parse_retention_rules("events.created_at=30d"), NOW, threading.Event(), held=held)
        assert result.deleted == 0 and fragment in result.error and "nothing was deleted" in result.error


def test_postgres_a_child_committed_while_its_parents_batch_is_deleted_keeps_that_parent(pg_url: str) -> None:
    run = lambda sql: pg_execute(pg_url, sql)  # noqa: E731
    run(schema("postgres"))
    run("INSERT INTO events VALUES " + ", ".join(f"({i}, '{OLD}', 'e{i}')" for i in range(1, 7)))
    held = hold(pg_url)
    app = psycopg.connect(pg_url)
    app.execute("INSERT INTO notes VALUES (1, 2)")  # not committed yet: it holds event 2 (KEY SHARE)
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(purge_events(pg_url, held)))
    worker.start()
    try:
        time.sleep(1.0)  # the first batch (events 1-3) waits for event 2
        app.commit()  # now the note exists, newer than the batch's snapshot: its cascade must not take it
    finally:
        worker.join(30)
        app.close()

    [result] = outcome
    assert ids(run) == {2} and ids(run, "notes") == {1} and result.deleted == 5
