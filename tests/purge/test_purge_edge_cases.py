"""Edge cases of table retention found by an adversarial review (issue 23): subgraph checkpoints of a stopped
thread purge, seconds among milliseconds, self-referencing cascades, an orphan's parent committed during its
batch, unindexed parent columns, counts in messages, pauses between threads, and SQLite's rollback-journal mode
with an app reader."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
import sqlite3
import threading
from typing import Any

import pytest

from jobs.purge import dry_run, parse_retention_rules, purge, purge_fields
from tests.purge.conftest import hold, make_sqlite, pg_execute
from tests.purge.langgraph_app import (AGE, app as one_node_app, app_with_subgraph, config, next_second,
                                       postgres_store, purge_stopped_after_first_step, purge_threads, scalar,
                                       sqlite_store, talk)


def paused_thread_after_a_stopped_purge(url: str, saver: Any) -> Any:
    """Run app_with_subgraph on thread `paused` up to its interrupt, purge it stopped after the first step (one
    step: as many checkpoints as the root namespace has); return the thread's state then."""
    graph = app_with_subgraph(saver)
    graph.invoke({"messages": ["hi"]}, config("paused"))
    assert graph.get_state(config("paused")).values["messages"] == ["hi", "first"]
    cutoff = next_second()
    root = scalar(url, "SELECT count(*) FROM checkpoints WHERE checkpoint_ns = ''")
    assert root < scalar(url, "SELECT count(*) FROM checkpoints")

    purge_stopped_after_first_step(url, cutoff, batch_size=root)

    return graph.get_state(config("paused"))


def test_a_thread_stopped_half_way_still_loads_when_it_has_subgraph_checkpoints(tmp_path: Path) -> None:
    """Oldest-first across every checkpoint_ns deletes the root namespace's checkpoints before a subgraph's newer
    ones: a purge stopped after its first step leaves a thread whose root state is gone (get_state is empty and
    it can no longer be resumed), which the issue forbids ("an interrupted purge leaves a thread that still
    loads"). jobs/purge/langgraph.py _step orders by checkpoint_id over the whole thread."""
    with sqlite_store(tmp_path) as (url, saver):
        state = paused_thread_after_a_stopped_purge(url, saver)
        assert state.values.get("messages") == ["hi", "first"], "the thread no longer loads after a stopped purge"
        assert state.next == ("inner",)


def test_postgres_cascade_counts_do_not_count_a_row_twice_when_the_rule_deletes_it_too(pg_url: str) -> None:
    """A self-referencing key (replies to comments, ON DELETE CASCADE): a batch that holds an old comment and its
    old reply deletes both itself (PostgreSQL runs the cascade after the statement, when the reply is already
    gone), yet count_cascaded (jobs/purge/cascaded.py) counts the reply again as removed by cascade: the outcome
    says 3 rows went where 2 did."""
    pg_execute(pg_url, "CREATE TABLE comments (id bigint PRIMARY KEY, parent_id bigint REFERENCES comments(id) "
                       "ON DELETE CASCADE, created_at timestamptz NOT NULL);"
                       "INSERT INTO comments VALUES (1, NULL, now() - interval '60 days'),"
                       " (2, 1, now() - interval '59 days'), (3, NULL, now())")
    held = hold(pg_url)

    [result] = purge(pg_url, parse_retention_rules("comments.created_at=30d"), datetime.now(timezone.utc),
                     threading.Event(), held=held)

    assert result.error is None
    assert pg_execute(pg_url, "SELECT id FROM comments") == [(3,)]
    assert purge_fields([result])["purged_rows"] == 2, (result.deleted, result.cascaded)


def test_a_recent_row_in_seconds_in_a_millisecond_column_is_not_deleted(tmp_path: Path) -> None:
    """Two writers share a table (a JavaScript client writes Date.now(), a Python job writes time.time()): the
    sample at both ends of the table sees only milliseconds, so `:ms` passes the check, and then the condition
    `at < cutoff_ms` (jobs/purge/delete.py old_rows, kind "unix") takes every number in seconds as a time in
    January 1970: a row written now is deleted. docs/table-retention.md says "Whatever the sample missed is safe
    too"; it is not, the condition has no lower bound for the unit (UNIX_MIN × scale)."""
    path = tmp_path / "app.db"
    db = make_sqlite(path, "CREATE TABLE events (id INTEGER PRIMARY KEY, at INTEGER NOT NULL, who TEXT)")
    now = datetime.now(timezone.utc)
    ms = lambda moment: int(moment.timestamp() * 1000)  # noqa: E731
    rows = [(ms(now - timedelta(days=60)), "js")] * 300          # old, in milliseconds
    rows += [(int(now.timestamp()), "python")]                     # written now, in seconds
    rows += [(ms(now - timedelta(minutes=5)), "js")] * 300        # recent, in milliseconds
    db.executemany("INSERT INTO events (at, who) VALUES (?, ?)", rows)
    db.close()
    url = f"sqlite:///{path}"

    [result] = purge(url, parse_retention_rules("events.at:ms=30d"), now, threading.Event(), held=hold(url))

    assert result.error is None
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT count(*) FROM events WHERE who = 'python'").fetchone() == (1,), \
            "a row written now (in seconds) was deleted as a millisecond time of 1970"


def test_sqlite_cascade_counts_do_not_count_a_row_twice_when_the_rule_deletes_it_too(tmp_path: Path) -> None:
    """The same on SQLite when a reply's rowid comes before its parent's (a comment moved under a newer one): the
    DELETE removes the reply itself first (counted by SQLite), then its parent, whose cascade finds nothing; the
    count made before the DELETE still adds the reply as cascaded: 3 rows reported, 2 went."""
    path = tmp_path / "app.db"
    db = make_sqlite(path, "CREATE TABLE comments (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES comments(id) "
                           "ON DELETE CASCADE, created_at TEXT NOT NULL)")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("INSERT INTO comments VALUES (2, NULL, '2026-01-01 00:00:00'), (3, NULL, '2099-01-01 00:00:00')")
    db.execute("INSERT INTO comments VALUES (1, 2, '2026-01-02 00:00:00')")
    db.close()
    url = f"sqlite:///{path}"
    [counted] = dry_run(url, parse_retention_rules("comments.created_at=30d"), datetime(2026, 6, 1, tzinfo=timezone.utc))
    assert counted.would_delete == 2 and not counted.would_cascade, counted

    [result] = purge(url, parse_retention_rules("comments.created_at=30d"), datetime(2026, 6, 1, tzinfo=timezone.utc),
                     threading.Event(), held=hold(url))

    assert result.error is None
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT id FROM comments").fetchall() == [(3,)]
    assert purge_fields([result])["purged_rows"] == 2, (result.deleted, result.cascaded)


def test_the_stop_sentence_counts_the_rows_that_went_not_threads_and_not_without_cascades() -> None:
    """jobs/purge/delete.py stop(): "after deleting {deleted} rows" sums RuleResult.deleted, which is threads for
    a thread rule and leaves out every row removed by cascade: 2 threads of 120 rows and 10 sessions with 70
    spec_runs are reported as "after deleting 12 rows" (the outcome's reason, the log, the webhook text)."""
    from jobs.purge import RuleResult, ThreadRule
    from jobs.purge.delete import stop

    results = [RuleResult(rule="langgraph=90d", deleted=2, rows={"checkpoints": 50, "writes": 70}),
               RuleResult(rule="sessions.started_at=30d", table="sessions", deleted=10, cascaded={"spec_runs": 70})]
    rules = [ThreadRule(AGE), *parse_retention_rules("sessions.started_at=30d")]

    stopped = stop(results, rules, datetime.now(timezone.utc))

    assert "after deleting 200 rows" in str(stopped), str(stopped)


def test_history_text_of_a_thread_rule_says_threads_and_its_rows() -> None:
    """worker/purge.py history_fields drops a thread rule's `rows`, so removed_text (worker/actions/history.py
    render) no longer knows it counts threads: `history` prints "120 rows: langgraph=90d deleted 2", as if 2 of
    the 120 rows were the rule's."""
    import json

    from jobs.purge import RuleResult, removed_text
    from worker.purge import history_fields

    result = RuleResult(rule="langgraph=90d", deleted=2, rows={"checkpoints": 50, "writes": 70})
    row = {"details": json.dumps(purge_fields([result]))}

    text = removed_text(history_fields(row) or {})

    assert text is not None and "deleted 2 threads" in text, text


def test_sqlite_an_orphan_rule_on_an_unindexed_parent_column_is_named_at_start(tmp_path: Path) -> None:
    """Each batch's DELETE re-checks `NOT EXISTS (SELECT 1 FROM parent WHERE parent.col = child.col)` under the
    write lock; without an index on the parent's column SQLite scans the whole parent table for every one of the
    batch's 1000 rows (EXPLAIN QUERY PLAN: SCAN parent), so a 1M-row parent holds the app's writers for minutes.
    The issue requires batches "that never hold a write lock for long"; the docs only say the column "should be
    indexed" and nothing checks it (jobs/purge/schema.py _parent)."""
    path = tmp_path / "app.db"
    db = make_sqlite(path, "CREATE TABLE sessions (id INTEGER PRIMARY KEY, uid TEXT NOT NULL);"
                           "CREATE TABLE runs (id INTEGER PRIMARY KEY, session_uid TEXT)")
    with sqlite3.connect(path) as plan:
        steps = [row[3] for row in plan.execute(
            "EXPLAIN QUERY PLAN SELECT 1 FROM runs WHERE NOT EXISTS "
            "(SELECT 1 FROM sessions AS parent WHERE parent.uid = runs.session_uid)")]
    assert "SCAN parent" in steps
    db.close()

    from jobs.purge import check_rules
    problems = check_rules(f"sqlite:///{path}", parse_retention_rules("runs.session_uid->sessions.uid"))

    assert problems and "index" in problems[0], problems


def test_postgres_an_orphan_whose_parent_is_inserted_during_the_batch_stays(pg_url: str, monkeypatch) -> None:
    """docs/table-retention.md: each batch "checks again that the parent is still missing (a parent inserted
    meanwhile keeps its rows)". On PostgreSQL the batch runs in REPEATABLE READ (database.write_transaction), and
    its snapshot is taken by the cascade count that comes before the DELETE (jobs/purge/delete.py _delete_batch):
    a parent committed between the two is invisible to the DELETE's NOT EXISTS, so the run whose session now
    exists is deleted (nothing makes that a serialization failure: no row the DELETE touches changed)."""
    import psycopg

    from jobs.purge import delete as delete_module

    pg_execute(pg_url, "CREATE TABLE sessions (id bigint PRIMARY KEY);"
                       "CREATE TABLE runs (id bigint PRIMARY KEY, session_id bigint);"
                       "CREATE TABLE notes (id bigint PRIMARY KEY, run_id bigint REFERENCES runs(id) ON DELETE CASCADE);"
                       "INSERT INTO runs VALUES (1, 42)")
    held = hold(pg_url)
    counted = delete_module.cascade_counts  # the batch's cascade counts: built inside its transaction, then run

    def count_then_the_app_inserts_the_parent(*args: Any, **kwargs: Any) -> Any:
        found = counted(*args, **kwargs)
        with psycopg.connect(pg_url, autocommit=True) as app:  # the app commits session 42 now
            app.execute("INSERT INTO sessions VALUES (42) ON CONFLICT DO NOTHING")
        return found

    monkeypatch.setattr(delete_module, "cascade_counts", count_then_the_app_inserts_the_parent)

    [result] = purge(pg_url, parse_retention_rules("runs.session_id->sessions.id"), datetime.now(timezone.utc),
                     threading.Event(), held=held)

    assert result.error is None
    assert pg_execute(pg_url, "SELECT id FROM sessions") == [(42,)]
    assert pg_execute(pg_url, "SELECT id FROM runs") == [(1,)], "a run whose session exists was deleted as an orphan"


def test_the_readme_gives_the_exact_syntax_of_thread_and_orphan_rules_and_incremental_vacuum() -> None:
    """SPEC.md (Table retention): LangGraph and orphan rules, "their exact syntax documented in the README"; issue
    23: "the README says how to switch a database to incremental auto-vacuum once (and what it costs)". The README
    only names the features in a link to docs/table-retention.md."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()

    assert "langgraph=" in readme, "the README does not give the thread rule's syntax"
    assert "->" in readme, "the README does not give the orphan rule's syntax"
    assert "auto_vacuum" in readme.lower(), "the README does not say how to switch to incremental auto-vacuum"


def test_postgres_a_thread_stopped_half_way_still_loads_when_it_has_subgraph_checkpoints(pg_url: str) -> None:
    """The same on the Postgres saver: the first step takes the root namespace's checkpoints (all older than the
    interrupted subgraph's), and the thread's root state is gone."""
    with postgres_store(pg_url) as (url, saver):
        state = paused_thread_after_a_stopped_purge(url, saver)
        assert state.values.get("messages") == ["hi", "first"], "the thread no longer loads after a stopped purge"


@contextmanager
def an_app_reader(path: Path, table: str) -> Iterator[None]:
    """The app's report query: a read transaction on `table` that ends a little later than one busy wait (3 s),
    or when the block ends."""
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute(f"SELECT count(*) FROM {table}").fetchall()  # still reading
    done = threading.Event()

    def finish_reading() -> None:
        done.wait(3)
        reader.execute("COMMIT")

    finisher = threading.Thread(target=finish_reading)
    finisher.start()
    try:
        yield
    finally:
        done.set()
        finisher.join()
        reader.close()


def test_the_release_waits_for_an_app_reader_in_rollback_journal_mode(tmp_path: Path) -> None:
    """SQLite's default journal mode (DELETE): a step's COMMIT needs the app's readers gone; while one reads, the
    COMMIT fails with "database is locked" after the busy timeout, the SQLite transaction stays open, and
    database.retry_locked runs the step again with BEGIN IMMEDIATE inside it: "cannot start a transaction within a
    transaction". reclaim_space (jobs/purge/space.py release) then gives up with the sentence "reclaiming free space
    failed: cannot start a transaction within a transaction; check that the database is reachable and
    BACKUP_SOURCE names it", false on every count, instead of waiting for the reader as a locked step should."""
    import os

    from jobs.errors import SourceError
    from jobs.purge import reclaim_space

    path = tmp_path / "app.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA auto_vacuum=INCREMENTAL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    db.execute("BEGIN")
    db.executemany("INSERT INTO t (body) VALUES (?)", [(os.urandom(1000),) for _ in range(3000)])
    db.execute("COMMIT")
    db.execute("DELETE FROM t WHERE id > 100")
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    db.close()
    with an_app_reader(path, "t"):
        try:
            space = reclaim_space(f"sqlite:///{path}", threading.Event(), step_pages=8, pause=0)
        except SourceError as error:
            pytest.fail(f"the release failed instead of waiting for the reader: {error}")

    assert space is not None and space.released_pages == free


class CountingEvent(threading.Event):
    """A cancel flag that records the pauses a purge takes between its write transactions."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        if timeout:
            self.pauses.append(timeout)
        return super().wait(timeout)


def test_a_thread_rule_pauses_between_threads_so_the_apps_writers_get_the_lock(tmp_path: Path) -> None:
    """Delete batches pause between write transactions ("so writers waiting in SQLite's busy handler get their
    turn"), and commit 30b6408 says the thread rule waits "as delete batches do"; but jobs/purge/langgraph.py
    _delete_thread pauses only between the steps of one large thread: a store of many small threads (the usual
    case: one conversation, a few checkpoints) goes as back-to-back BEGIN IMMEDIATE transactions with no pause,
    and an app writer sleeping in its busy handler can miss every gap until its busy timeout fails it."""
    with sqlite_store(tmp_path) as (url, saver):
        graph = one_node_app(saver)
        threads = [f"chat-{index}" for index in range(12)]
        for thread in threads:
            talk(graph, thread, 1)
        cutoff = next_second()
        cancel = CountingEvent()

        [result] = purge_threads(url, cutoff, cancel, pause=0.01)

        assert result.error is None and result.deleted == len(threads)
        assert len(cancel.pauses) >= len(threads) - 1, \
            f"{result.batches} write transactions, {len(cancel.pauses)} pauses between them"


def test_a_delete_batch_waits_for_an_app_reader_in_rollback_journal_mode(tmp_path: Path) -> None:
    """The same for a delete batch: its COMMIT fails while the app reads; the batch is rolled back and run again
    (not "cannot start a transaction within a transaction"), and every old row goes once the reader is done."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:  # SQLite's default journal mode (DELETE)
        db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL)")
        db.executemany("INSERT INTO events (created_at) VALUES (?)",
                       [("2026-01-01 00:00:00",)] * 50 + [("2099-01-01 00:00:00",)] * 5)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    db.close()
    url = f"sqlite:///{path}"
    held = hold(url)
    with an_app_reader(path, "events"):
        [result] = purge(url, parse_retention_rules("events.created_at=30d"), datetime(2026, 6, 1, tzinfo=timezone.utc),
                         threading.Event(), held=held)

    assert result.error is None and result.deleted == 50, result
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT count(*) FROM events").fetchone() == (5,)


def test_a_release_that_the_database_stays_locked_through_says_so(tmp_path: Path, monkeypatch) -> None:
    """When a reader outlasts every wait, the release fails with a sentence about the lock, not one that sends
    the user to check BACKUP_SOURCE."""
    import os

    from jobs.errors import SourceError
    from jobs.purge import reclaim_space, space as space_module

    monkeypatch.setattr(space_module, "LOCK_ATTEMPTS", 1)
    path = tmp_path / "app.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA auto_vacuum=INCREMENTAL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    db.executemany("INSERT INTO t (body) VALUES (?)", [(os.urandom(1000),) for _ in range(300)])
    db.execute("DELETE FROM t WHERE id > 10")
    db.close()
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchall()
    try:
        with pytest.raises(SourceError) as failed:
            reclaim_space(f"sqlite:///{path}", threading.Event(), step_pages=8, pause=0)
    finally:
        reader.close()

    message = str(failed.value)
    assert "stayed locked by another connection" in message and "BACKUP_SOURCE" not in message, message
    assert "Traceback" not in message
