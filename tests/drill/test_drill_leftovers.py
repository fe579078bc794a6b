"""Scratch databases a killed drill left behind (SIGKILL, a lost machine): the next drill of the set drops those
that are its own (named and marked by the drill), over an hour old and unused, and only warns of the others: a
database someone else named like one, one still in use, one young enough to belong to a drill still starting."""

import json
import os
from pathlib import Path
import signal
import threading
import time

from psycopg import sql
import pytest

from jobs.drill.postgres import comment_for, scratch_database
from jobs.engines.pg_connect import parse_url
from tests.conftest import run_worker
from tests.drill.conftest import scratch_databases
from tests.drill.test_drill_stop import drill_until
from tests.postgres.conftest import admin, url_for

OLD = "20200101000000"


def rename(database: str, to: str) -> None:
    """Rename a database once the sessions of a killed drill have left it."""
    deadline = time.monotonic() + 30
    with admin() as connection:
        while True:
            try:
                connection.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(database), sql.Identifier(to)))
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def leftover_events(stderr: str) -> list[dict]:
    return [event for event in map(json.loads, (line for line in stderr.splitlines() if line.startswith("{")))
            if event["event"].startswith("drill.scratch_leftover")]


def test_a_scratch_database_a_killed_drill_left_is_dropped_by_the_next_drill_once_it_is_an_hour_old(
        tmp_path: Path, worker_env, make_db) -> None:
    app = make_db("killed", populated=True, events=150_000)
    env = {**worker_env, "BACKUP_SOURCE": url_for(app)}
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    process, created, _ = drill_until(env, tmp_path, "drill.scratch_created")
    os.kill(process.pid, signal.SIGKILL)  # no chance to drop anything
    process.communicate(timeout=30)
    assert scratch_databases(app) == [created["database"]]
    young = run_worker(["drill"], env, cwd=tmp_path)  # the leftover is minutes old: it may be another drill's
    assert young.code == 0, young.stderr
    assert scratch_databases(app) == [created["database"]]
    assert [event["kept_because"] for event in leftover_events(young.stderr)] == [
        "it is under 1 h old or dated ahead of the server's clock (another drill of this set may be using it)"]
    rename(created["database"], f"{app}_drill_{OLD}")  # as it would be named had it been left a while ago
    result = run_worker(["drill"], env, cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert scratch_databases(app) == []
    assert [(event["event"], event["database"]) for event in leftover_events(result.stderr)] == [
        ("drill.scratch_leftover_dropped", f"{app}_drill_{OLD}")]


@pytest.mark.parametrize("case", ["not marked", "in use", "marked by someone else", "an older worker's mark"])
def test_a_database_named_like_a_leftover_that_is_not_the_drills_own_or_is_in_use_is_left_alone(
        case: str, tmp_path: Path, worker_env, make_db) -> None:
    app = make_db("kept", populated=True, events=10)
    env = {**worker_env, "BACKUP_SOURCE": url_for(app)}
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    other = f"{app}_drill_{OLD}"
    with admin() as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(other)))
        comment = {"not marked": None, "in use": comment_for(app), "marked by someone else": "the analytics team's copy",
                   "an older worker's mark": "backup-worker restore drill scratch database; dropped when its drill ends"}[case]
        if comment is not None:
            connection.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(other), sql.Literal(comment)))
    holder = admin(dbname=other) if case == "in use" else None
    try:
        result = run_worker(["drill"], env, cwd=tmp_path)
        assert result.code == 0, result.stderr
        assert scratch_databases(app) == [other]
        [event] = leftover_events(result.stderr)
        assert event["event"] == "drill.scratch_leftover" and event["database"] == other
        if case == "in use":
            assert event["kept_because"].startswith("it could not be dropped: ") and "being accessed by other users" in event["kept_because"]
        else:
            assert event["kept_because"].startswith("it does not carry the drill's mark")
    finally:
        if holder is not None:
            holder.close()
        with admin() as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(other)))


def test_two_drills_started_in_the_same_second_each_get_a_scratch_database_of_their_own(make_db) -> None:
    """The name's stamp has one-second steps: a drill started in the second another one's scratch database (or one
    a killed drill left) was named after takes the name of the next second, not an "already exists" failure."""
    app = make_db("twice")
    server = parse_url(url_for(app))
    with scratch_database(server, threading.Event()) as first, scratch_database(server, threading.Event()) as second:
        assert first.dbname != second.dbname
        assert sorted(scratch_databases(app)) == sorted([first.dbname, second.dbname])
    assert scratch_databases(app) == []
