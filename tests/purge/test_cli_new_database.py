"""RETENTION_RULES on a database with no user tables at all (a new database before its migrations or before a
restore): a warning, and the purge waits until the table exists; the worker keeps running so that alerts and
one-off commands work. In a database that has tables, a missing table stays a configuration error (exit 2)."""

import json
from pathlib import Path
import signal
import sqlite3
import subprocess
import sys

import pytest

from tests.conftest import run_worker
from tests.e2e.test_cli import read_events
from tests.purge.conftest import pg_execute
from tests.purge.test_cli_purge import RULE, count, events_db
from worker.actions.backup import backup_job
from worker.context import Context
from worker.config import load_config


def empty_sqlite(path: Path) -> Path:
    """A new SQLite database: a valid file (the app opened it and set WAL) with no table yet."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
    return path


@pytest.fixture
def new_db(tmp_path: Path, worker_env: dict[str, str]) -> dict:
    path = empty_sqlite(tmp_path / "fresh.db")
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{path}", "RETENTION_RULES": RULE}
    return {"path": path, "env": env, "cwd": tmp_path}


def test_backup_of_a_database_without_tables_succeeds_and_the_purge_waits(new_db: dict) -> None:
    config = run_worker(["config"], new_db["env"], cwd=new_db["cwd"])
    assert config.code == 0, config.stderr
    waiting = config.event("purge.waiting")
    assert waiting["level"] == "warning" and "no tables yet" in waiting["reason"] and "events" in waiting["reason"]

    result = run_worker(["backup", "--json"], new_db["env"], cwd=new_db["cwd"])
    assert result.code == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert "no tables yet" in outcome["purge_skipped"] and "purge" not in outcome
    assert "purge_run_id" not in outcome  # no purge run at all: nothing to fail, nothing deleted

    dry = run_worker(["prune", "--dry-run"], new_db["env"], cwd=new_db["cwd"])
    assert dry.code == 0, dry.stderr
    assert "table retention waits: the database has no tables yet" in dry.stdout


def test_run_keeps_running_on_a_database_without_tables(new_db: dict) -> None:
    process = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=new_db["env"], cwd=new_db["cwd"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        events = read_events(process, "job.succeeded", 30)  # the catch-up backup
        assert next(e for e in events if e["event"] == "purge.waiting")["level"] == "warning"
        assert events[-1]["job"] == "backup" and "no tables yet" in events[-1]["purge_skipped"]
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(12) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_once_the_table_exists_the_purge_runs(new_db: dict) -> None:
    path = new_db["path"]
    path.unlink()
    Path(f"{path}-wal").unlink(missing_ok=True)
    Path(f"{path}-shm").unlink(missing_ok=True)
    total, old = events_db(path)  # the migrations ran, or a restore brought the tables
    result = run_worker(["backup", "--json"], new_db["env"], cwd=new_db["cwd"])
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["purged_rows"] == old and count(path) == total - old


def test_a_missing_table_in_a_database_with_other_tables_is_still_exit_2(new_db: dict) -> None:
    with sqlite3.connect(new_db["path"]) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    result = run_worker(["backup"], new_db["env"], cwd=new_db["cwd"])
    assert result.code == 2 and "RETENTION_RULES: events.created_at=30d: the database has no table events" in result.stderr
    assert not list(Path(new_db["env"]["BACKUP_DIR"]).glob("*.zst"))


def test_a_rule_still_wrong_once_tables_appear_fails_that_purge_loudly(new_db: dict) -> None:
    """A running worker checked the rules at start, on an empty database; the migrations then created other tables
    but not the rule's: the next purge fails (notified like any failed job), the backup itself stands."""
    ctx = Context(config=load_config(new_db["env"], new_db["cwd"]), cwd=new_db["cwd"])
    with sqlite3.connect(new_db["path"]) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    outcome = backup_job(ctx, upload=False)
    assert outcome.ok and outcome.fields["artifact"]
    assert outcome.fields["purge_failed"] == [RULE] and "no table events" in outcome.fields["purge_error"]
    assert "purge_skipped" not in outcome.fields
    (purge,) = [row for row in ctx.catalog.history(job="purge")]
    assert purge["outcome"] == "failed" and "no table events" in purge["reason"]


@pytest.fixture
def pg_env(pg_url: str, worker_env: dict[str, str]) -> dict[str, str]:
    return {**worker_env, "BACKUP_SOURCE": pg_url, "RETENTION_RULES": RULE}


def test_a_postgresql_database_without_tables_backs_up_and_the_purge_waits(pg_env: dict[str, str], tmp_path: Path) -> None:
    result = run_worker(["backup", "--json"], pg_env, cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert "no tables yet" in json.loads(result.stdout)["purge_skipped"]


def test_a_postgresql_database_with_other_tables_is_still_exit_2(pg_env: dict[str, str], pg_url: str, tmp_path: Path) -> None:
    pg_execute(pg_url, "CREATE SCHEMA app; CREATE TABLE app.users (id int PRIMARY KEY)")
    result = run_worker(["backup"], pg_env, cwd=tmp_path)
    assert result.code == 2 and "the database has no table events" in result.stderr
