"""LangGraph threads (`langgraph=AGE`) with a real LangGraph app on the SQLite saver and on the Postgres saver
(local server): old threads go entirely, every remaining thread still loads through LangGraph and takes a new
step, deleted threads are in the backup the purge followed, a thread that changes after the backup stays, a large
thread goes in several transactions oldest first and still loads when the purge stops half-way, and tables that
are not a LangGraph store are refused at start."""

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
import json
from pathlib import Path
import sqlite3
import time
from typing import Any

import pytest

from jobs.purge import ThreadRule, check_rules, dry_run, parse_retention_rules, purge_fields
from jobs.purge.langgraph import uuid6_floor, uuid6_time
from tests.conftest import run_worker
from tests.purge.conftest import hold, pg_execute
from tests.purge.langgraph_app import (AGE, CHECKPOINTS, RULE, SqliteSaver, app, config, messages, next_second,
                                       postgres_store, purge_stopped_after_first_step, purge_threads, scalar,
                                       sqlite_store, talk, thread_ids)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    if request.param == "sqlite":
        with sqlite_store(tmp_path) as found:
            yield found
    else:
        with postgres_store(request.getfixturevalue("pg_url")) as found:
            yield found


def test_uuid6_ids_carry_their_time_and_the_floor_sorts_below_every_later_id() -> None:
    moment = datetime(2026, 11, 22, 2, 0, 0, 123456, tzinfo=timezone.utc)
    floor = uuid6_floor(moment)
    assert uuid6_time(floor) == moment and floor[14] == "6"
    assert uuid6_floor(moment - timedelta(microseconds=1)) < floor < uuid6_floor(moment + timedelta(microseconds=1))


@pytest.mark.parametrize("text, expected", [
    ("langgraph=90d", ThreadRule(timedelta(days=90))),
    ("LangGraph:agents=30d", ThreadRule(timedelta(days=30), schema="agents")),
])
def test_a_thread_rule_is_read_and_written_back(text: str, expected: ThreadRule) -> None:
    [rule] = parse_retention_rules(text)
    assert rule == expected and parse_retention_rules(rule.describe()) == [rule]


@pytest.mark.parametrize("text, fragment", [
    ("langgraph:a.b=90d", "'a.b' is not a plain schema name"),
    ("langgraph=0d", "has an age of zero"),
    ("langgraph=90d;langgraph=30d", "names the same column"),
])
def test_a_bad_thread_rule_is_named(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_retention_rules(text)


def test_old_threads_go_entirely_and_the_rest_still_load_and_take_a_new_step(store: tuple) -> None:
    url, saver = store
    graph = app(saver)
    for thread in ("old-a", "old-b", "old-c"):
        talk(graph, thread, 3)
    cutoff = next_second()
    for thread in ("new-a", "new-b"):
        talk(graph, thread, 2)
    rules = parse_retention_rules(RULE)
    assert check_rules(url, rules) == []
    assert dry_run(url, rules, cutoff + AGE)[0].would_delete == 3
    held = hold(url)

    [result] = purge_threads(url, cutoff, held=held)

    assert result.error is None and result.deleted == 3 and result.cutoff == cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert thread_ids(url) == {"new-a", "new-b"}
    for thread in ("old-a", "old-b", "old-c"):
        assert messages(graph, thread) == []
    for thread in ("new-a", "new-b"):
        assert messages(graph, thread) == [text for turn in range(2)
                                           for text in (f"{thread} says {turn}", f"reply to {thread} says {turn}")]
        graph.invoke({"messages": ["again"]}, config(thread))
        assert messages(graph, thread)[-2:] == ["again", "reply to again"]
    fields = purge_fields([result])
    assert set(result.rows) == ({"checkpoints", "writes"} if url.startswith("sqlite") else
                                {"checkpoints", "checkpoint_blobs", "checkpoint_writes"})
    assert fields["purged_rows"] == sum(result.rows.values()) > 3 and fields["purged_tables"] == result.rows
    if url.startswith("postgres"):
        assert pg_execute(url, "SELECT count(*) FROM checkpoint_migrations")[0][0] > 0
    else:  # every deleted thread is in the backup the purge followed: its snapshot still loads them
        snapshot = sqlite3.connect(held.sqlite_file, check_same_thread=False)
        assert messages(app(SqliteSaver(snapshot)), "old-a")[-1] == "reply to old-a says 2"


def test_a_thread_that_changes_after_the_backup_stays(store: tuple) -> None:
    url, saver = store
    graph = app(saver)
    for thread in ("quiet", "resumed", "written"):
        talk(graph, thread, 2)
    cutoff = next_second()
    held = hold(url)
    talk(graph, "resumed", 1)  # a new checkpoint after the backup: the thread is no longer old
    state = graph.get_state(config("written"))  # new writes on an old checkpoint: rows the backup lacks
    saver.put_writes(state.config, [("messages", ["late"])], task_id="late-task")

    [result] = purge_threads(url, cutoff, held=held)

    assert result.error is None and result.deleted == 1 and result.kept == 1
    assert thread_ids(url) == {"resumed", "written"}
    assert len(messages(graph, "resumed")) == 6 and len(messages(graph, "written")) == 4


def test_a_large_thread_goes_in_several_transactions_and_still_loads_when_stopped_half_way(tmp_path: Path) -> None:
    with sqlite_store(tmp_path) as (url, saver):
        graph = app(saver)
        talk(graph, "long", 40)  # about 120 checkpoints
        cutoff = next_second()
        total = scalar(url, CHECKPOINTS)

        stopped = purge_stopped_after_first_step(url, cutoff, batch_size=30)

        [rule] = stopped.fields["purge"]
        assert rule["deleted"] == 0 and rule["batches"] >= 1 and 0 < rule["rows"]["checkpoints"] < total
        assert len(messages(graph, "long")) == 80  # the newest checkpoints are left, and load
        with sqlite3.connect(tmp_path / "rose.db") as db:
            oldest_left = db.execute("SELECT min(checkpoint_id) FROM checkpoints").fetchone()[0]
            assert db.execute("SELECT count(*) FROM writes WHERE checkpoint_id < ?", (oldest_left,)).fetchone() == (0,)

        [rest] = purge_threads(url, cutoff, batch_size=30)
        assert rest.deleted == 1 and rest.batches >= 2 and thread_ids(url) == set()


def test_tables_that_are_not_a_langgraph_store_are_refused_at_start(tmp_path: Path, pg_url: str) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE checkpoints (thread_id TEXT, checkpoint_ns TEXT, checkpoint_id TEXT, checkpoint BLOB)")
        db.execute("CREATE TABLE writes (thread_id TEXT, checkpoint_ns TEXT, checkpoint_id TEXT, task_id TEXT, idx INT)")
        db.execute("INSERT INTO checkpoints VALUES ('t', '', '42', x'00')")
    [problem] = check_rules(f"sqlite:///{path}", parse_retention_rules(RULE))
    assert problem.startswith(f"{RULE}: checkpoint id '42' is not a UUIDv6"), problem

    with sqlite3.connect(tmp_path / "none.db") as db:
        db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY)")
    [problem] = check_rules(f"sqlite:///{tmp_path / 'none.db'}", parse_retention_rules(RULE))
    assert "the database has no table checkpoints" in problem

    pg_execute(pg_url, "CREATE TABLE checkpoints (thread_id text, checkpoint_ns text, checkpoint_id text, "
                       "checkpoint text); CREATE TABLE checkpoint_blobs (thread_id text);"
                       "CREATE TABLE checkpoint_writes (thread_id text)")
    [problem] = check_rules(pg_url, parse_retention_rules(RULE))
    assert "has no column checkpoint_ns, so it is not langgraph-checkpoint-postgres's" in problem


def test_prune_dry_run_and_backup_run_a_thread_rule_as_a_user_runs_them(
        tmp_path: Path, worker_env: dict[str, str]) -> None:
    with sqlite_store(tmp_path) as (url, saver):
        talk(app(saver), "rose", 2)
    env = {**worker_env, "BACKUP_SOURCE": url, "RETENTION_RULES": "langgraph=1s"}
    next_second()
    time.sleep(1)  # the thread is older than 1 s now

    dry = run_worker(["prune", "--dry-run"], env, cwd=tmp_path)
    assert dry.code == 0, dry.stderr
    assert "table langgraph=1s: would delete 1 threads whose newest checkpoint is older than" in dry.stdout

    backup = run_worker(["backup", "--json"], env, cwd=tmp_path)
    assert backup.code == 0, backup.stderr
    outcome = json.loads(backup.stdout)
    assert outcome["purge"][0]["deleted"] == 1 and outcome["purge_failed"] == []
    assert set(outcome["purged_tables"]) == {"checkpoints", "writes"} and thread_ids(url) == set()

    refused = run_worker(["config"], {**env, "RETENTION_RULES": "langgraph:other=1s"}, cwd=tmp_path)
    assert refused.code == 2 and "langgraph:other=1s: the database has no schema other" in refused.stderr


def test_postgres_a_large_thread_goes_oldest_first_and_keeps_its_blobs_until_its_last_step(pg_url: str) -> None:
    with postgres_store(pg_url) as (url, saver):
        graph = app(saver)
        talk(graph, "long", 10)  # about 30 checkpoints sharing blobs
        cutoff = next_second()
        total = scalar(url, CHECKPOINTS)
        blobs = scalar(url, "SELECT count(*) FROM checkpoint_blobs")

        stopped = purge_stopped_after_first_step(url, cutoff, batch_size=5)

        [rule] = stopped.fields["purge"]
        assert rule["deleted"] == 0 and 0 < rule["rows"]["checkpoints"] < total and "checkpoint_blobs" not in rule["rows"]
        assert pg_execute(url, "SELECT count(*) FROM checkpoint_blobs")[0][0] == blobs
        assert len(messages(graph, "long")) == 20  # the newest checkpoints are left, and load with their blobs

        [rest] = purge_threads(url, cutoff, batch_size=5)
        assert rest.deleted == 1 and rest.batches >= 2 and rest.rows["checkpoint_blobs"] == blobs
        assert thread_ids(url) == set()
