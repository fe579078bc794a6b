"""Table retention as a user runs it: `python -m worker backup / prune --dry-run / status / config / run` with
RETENTION_RULES on real SQLite files (rows spanning 60 days, written relative to the real clock)."""

from datetime import datetime, timedelta, timezone
import json
import os
from pathlib import Path
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import boto3
import pytest

from tests.conftest import run_worker
from tests.s3.conftest import ACCESS_KEY, SECRET, moto_endpoint, seaweedfs_endpoint
from tests.purge.conftest import make_sqlite

S3_SERVERS = {"moto": moto_endpoint, "seaweedfs": seaweedfs_endpoint}  # session fixtures, imported to be found here

RULE = "events.created_at=30d"
HOURS = 60 * 24  # one row per hour over 60 days, half past: 720 rows are older than 30 days, 720 newer
FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%fZ")


def events_db(path: Path, extra_old: int = 0) -> tuple[int, int]:
    """Create the app's database: an events table with a row every hour over 60 days (at half past, so no row is
    within 30 minutes of the cutoff), plus `extra_old` rows 40 days old. Return (all rows, rows older than 30d)."""
    now = datetime.now(timezone.utc)
    db = make_sqlite(path, "CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, body TEXT);"
                           "CREATE INDEX events_created_at ON events (created_at);")
    rows = [((now - timedelta(hours=hour + 0.5)).strftime(FORMATS[hour % 2]), f"event {hour}") for hour in range(HOURS)]
    old_moment = (now - timedelta(days=40)).strftime(FORMATS[0])
    rows += [(old_moment, f"bulk {index}") for index in range(extra_old)]
    db.execute("BEGIN")
    db.executemany("INSERT INTO events (created_at, body) VALUES (?, ?)", rows)
    db.execute("COMMIT")
    db.close()
    return len(rows), HOURS // 2 + extra_old


def count(path: Path, table: str = "events") -> int:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def catalog_runs(backup_dir: Path, job: str) -> list[dict]:
    """The catalog's rows of `job`, newest first, with their details decoded."""
    with sqlite3.connect(backup_dir / "catalog.db") as db:
        db.row_factory = sqlite3.Row
        rows = [dict(row) for row in db.execute("SELECT * FROM runs WHERE job = ? ORDER BY started_at DESC", (job,))]
    for row in rows:
        row["details"] = json.loads(row["details"] or "{}")
    return rows


@pytest.fixture
def app(tmp_path: Path, worker_env: dict[str, str]) -> dict:
    path = tmp_path / "events.db"
    total, old = events_db(path)
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{path}", "RETENTION_RULES": RULE}
    return {"path": path, "total": total, "old": old, "env": env, "dir": Path(env["BACKUP_DIR"]), "cwd": tmp_path}


def cli(app: dict, *args: str, **env: str):
    return run_worker(list(args), {**app["env"], **env}, cwd=app["cwd"])


def test_backup_deletes_rows_older_than_the_rule_keeps_newer_and_the_backup_just_made_holds_them_all(app: dict) -> None:
    result = cli(app, "backup", "--json")
    assert result.code == 0, result.stderr
    outcome = json.loads(result.stdout)

    assert count(app["path"]) == app["total"] - app["old"]
    assert outcome["purged_rows"] == app["old"] and outcome["purge_failed"] == []
    assert [(rule["rule"], rule["deleted"], rule["error"]) for rule in outcome["purge"]] == [(RULE, app["old"], None)]
    with sqlite3.connect(app["path"]) as db:
        oldest = db.execute("SELECT min(datetime(created_at)) FROM events").fetchone()[0]
    assert oldest > (datetime.now(timezone.utc) - timedelta(days=30, minutes=5)).strftime("%Y-%m-%d %H:%M:%S")

    restored = app["cwd"] / "restored.db"
    back = cli(app, "restore", outcome["backup"], "--to", str(restored), "--yes")
    assert back.code == 0, back.stderr
    assert count(restored) == app["total"]


def test_rows_deleted_per_rule_are_in_the_backups_outcome_event_the_catalog_and_status(app: dict) -> None:
    result = cli(app, "backup")
    assert result.code == 0, result.stderr
    event = result.event("job.succeeded")
    assert event["job"] == "backup" and event["purged_rows"] == app["old"]
    assert event["purge"][0]["rule"] == RULE and event["purge"][0]["deleted"] == app["old"]

    (backup_row,) = catalog_runs(app["dir"], "backup")
    (purge_row,) = catalog_runs(app["dir"], "purge")
    assert backup_row["details"]["purge"][0]["deleted"] == app["old"]
    assert backup_row["details"]["purge_run_id"] == purge_row["run_id"]
    assert purge_row["outcome"] == "succeeded" and purge_row["details"]["purged_rows"] == app["old"]
    assert purge_row["details"]["backup"] == event["backup"]

    status = cli(app, "status", "--json")
    last = json.loads(status.stdout)["last_purge"]
    assert last["outcome"] == "succeeded" and last["purged_rows"] == app["old"]
    assert last["rules"] == [{"rule": RULE, "deleted": app["old"], "error": None}]
    text = cli(app, "status").stdout
    assert f"table retention: {app['old']} rows deleted by the last purge" in text and f"{RULE}: {app['old']}" in text


def test_prune_dry_run_shows_the_rows_each_rule_would_delete_and_deletes_nothing(app: dict) -> None:
    db = make_sqlite(app["path"], "CREATE TABLE sessions (id INTEGER PRIMARY KEY, start_time INTEGER NOT NULL);")
    db.executemany("INSERT INTO sessions (start_time) VALUES (?)", [(int(time.time()) - day * 86400 - 3600,) for day in range(60)])
    db.close()
    result = cli(app, "prune", "--dry-run", RETENTION_RULES=f"{RULE};sessions.start_time=7d")

    assert result.code == 0, result.stderr
    assert f"table {RULE}: would delete {app['old']} rows" in result.stdout
    assert "table sessions.start_time=7d: would delete 53 rows" in result.stdout
    assert result.stdout.count("(an upper bound: a purge deletes only the rows the backup it follows holds; "
                               "dry run: nothing deleted)") == 2
    assert count(app["path"]) == app["total"] and count(app["path"], "sessions") == 60
    rules = {rule["rule"]: rule["would_delete"] for rule in result.event("job.succeeded")["purge_would_delete"]}
    assert rules == {RULE: app["old"], "sessions.start_time=7d": 53}


@pytest.mark.parametrize("rules", ["events.nosuch=30d", "nosuch.created_at=30d"])
@pytest.mark.parametrize("command", [["backup"], ["prune"], ["prune", "--dry-run"], ["config"], ["run"]])
def test_an_unknown_table_or_column_is_exit_2_naming_the_rule_and_nothing_is_deleted(app: dict, command: list[str],
                                                                                      rules: str) -> None:
    result = run_worker(command, {**app["env"], "RETENTION_RULES": f"{RULE};{rules}"}, cwd=app["cwd"], timeout=60)

    assert result.code == 2, result.stdout + result.stderr
    assert "invalid configuration" in result.stderr and f"RETENTION_RULES: {rules}:" in result.stderr
    assert count(app["path"]) == app["total"]
    assert not list(app["dir"].glob("*.zst"))


def test_rules_that_cannot_be_read_or_have_no_database_to_apply_to_are_exit_2(app: dict, tmp_path: Path) -> None:
    bad = cli(app, "config", RETENTION_RULES="events.created_at")
    assert bad.code == 2 and "RETENTION_RULES: 'events.created_at' has no '='" in bad.stderr
    redis = cli(app, "config", BACKUP_SOURCE="redis://127.0.0.1:6379/0")
    assert redis.code == 2 and "table retention works on SQLite and PostgreSQL sources" in redis.stderr
    none = run_worker(["config"], {**{k: v for k, v in app["env"].items() if k != "BACKUP_SOURCE"}}, cwd=tmp_path)
    assert none.code == 2 and "RETENTION_RULES is set but BACKUP_SOURCE is not" in none.stderr
    fine = cli(app, "config")
    assert fine.code == 0 and f"RETENTION_RULES={RULE}" in fine.stdout


def test_a_database_not_created_yet_only_warns_at_start(app: dict) -> None:
    missing = app["cwd"] / "later.db"
    result = cli(app, "config", BACKUP_SOURCE=f"sqlite:///{missing}")
    assert result.code == 0, result.stderr
    assert result.event("purge.check_deferred")["level"] == "warning"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("server", S3_SERVERS)
def test_with_a_bucket_rows_are_deleted_once_the_backup_that_holds_them_is_uploaded(app: dict, server: str,
                                                                                    request: pytest.FixtureRequest) -> None:
    endpoint = request.getfixturevalue(f"{server}_endpoint")  # a real server checks the key and secret's signatures
    s3 = {"S3_BUCKET": f"purge-{os.getpid()}-{time.monotonic_ns()}", "S3_ENDPOINT_URL": endpoint,
          "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "NO_PROXY": "127.0.0.1"}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=s3["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=s3["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=s3["S3_BUCKET"])
    result = run_worker(["backup", "--json"], {**app["env"], **s3}, cwd=app["cwd"])

    assert result.code == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["uploaded"] == [outcome["backup"]] and outcome["purged_rows"] == app["old"]
    assert "and uploaded" in result.event("purge.allowed")["reason"]
    assert count(app["path"]) == app["total"] - app["old"]


def test_a_failed_upload_deletes_nothing_and_the_outcome_says_why(app: dict) -> None:
    s3 = {"S3_BUCKET": "backups", "S3_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}", "AWS_ACCESS_KEY_ID": "test",
          "AWS_SECRET_ACCESS_KEY": "test-secret"}
    result = run_worker(["backup", "--json"], {**app["env"], **s3}, cwd=app["cwd"], timeout=180)

    assert result.code == 1
    outcome = json.loads(result.stdout)
    assert outcome["outcome"] == "failed" and outcome["stage"] == "upload"
    assert "the local backup" in outcome["reason"] and "purge" not in outcome
    assert count(app["path"]) == app["total"]
    assert not [event for event in result.events if event.get("job") == "purge"]


def test_a_backup_kept_local_with_a_bucket_configured_deletes_nothing_and_says_why(app: dict) -> None:
    s3 = {"S3_BUCKET": "backups", "S3_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}"}
    result = run_worker(["backup", "--no-upload", "--json"], {**app["env"], **s3}, cwd=app["cwd"])

    assert result.code == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert "was not uploaded to S3 in this cycle, so rows are not deleted" in outcome["purge_skipped"]
    assert count(app["path"]) == app["total"]


def test_a_failing_rule_fails_the_purge_run_loudly_but_not_the_backup(app: dict) -> None:
    make_sqlite(app["path"], "CREATE TABLE parents (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL);"
                             "CREATE TABLE children (id INTEGER PRIMARY KEY, "
                             "parent_id INTEGER NOT NULL REFERENCES parents (id) ON DELETE RESTRICT);"
                             "INSERT INTO parents VALUES (1, '2020-01-01 00:00:00');"
                             "INSERT INTO children VALUES (1, 1);").close()
    result = cli(app, "backup", "--json", RETENTION_RULES=f"{RULE};parents.created_at=30d")

    assert result.code == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["outcome"] == "succeeded" and outcome["purge_failed"] == ["parents.created_at=30d"]
    assert outcome["purged_rows"] == app["old"] and "1 of 2 table retention rules failed" in outcome["purge_error"]
    failed = [event for event in result.events if event.get("event") == "job.failed"]
    assert [(event["job"], event["level"], event["stage"]) for event in failed] == [("purge", "error", "purge")]
    assert count(app["path"], "parents") == 1 and count(app["path"]) == app["total"] - app["old"]
    assert catalog_runs(app["dir"], "purge")[0]["outcome"] == "failed"


def test_an_app_writer_keeps_committing_while_the_cli_purges(tmp_path: Path, worker_env: dict[str, str]) -> None:
    path = tmp_path / "busy.db"
    total, old = events_db(path, extra_old=150_000)
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{path}", "RETENTION_RULES": RULE}
    commits: list[float] = []
    errors: list[str] = []
    done = threading.Event()

    def write() -> None:
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        now = datetime.now(timezone.utc).strftime(FORMATS[0])
        while not done.is_set():
            try:
                db.execute("INSERT INTO events (created_at, body) VALUES (?, 'live')", (now,))
                commits.append(time.time())
            except sqlite3.Error as error:
                errors.append(str(error))
            time.sleep(0.005)
        db.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        result = run_worker(["backup", "--json"], env, cwd=tmp_path, timeout=300)
    finally:
        done.set()
        writer.join()

    assert result.code == 0, result.stderr
    purge = [event for event in result.events if event.get("job") == "purge"]
    began, ended = (datetime.fromisoformat(purge[0]["ts"].replace("Z", "+00:00")).timestamp(),
                    datetime.fromisoformat(purge[-1]["ts"].replace("Z", "+00:00")).timestamp())
    assert purge[-1]["event"] == "job.succeeded" and purge[-1]["purged_rows"] == old and not errors
    assert count(path) == total - old + len(commits)
    during = [moment for moment in commits if began <= moment <= ended]
    assert len(during) >= max(3, (ended - began) / 0.5), (len(during), ended - began)  # never stalled for long


def test_sigterm_during_a_purge_stops_between_batches_and_reports_what_each_rule_deleted(
        tmp_path: Path, worker_env: dict[str, str]) -> None:
    path = tmp_path / "big.db"
    total, old = events_db(path, extra_old=400_000)
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{path}", "RETENTION_RULES": RULE, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "worker", "backup", "--json"], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in process.stderr:
            lines.append(line)
            if '"job.started"' in line and '"job": "purge"' in line:
                time.sleep(0.5)
                process.send_signal(signal.SIGTERM)
                break
        stdout, rest = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    outcome = json.loads(stdout)

    assert process.returncode == 0, "".join(lines) + rest
    (rule,) = outcome["purge"]
    assert rule["error"] == "stopped: the worker is stopping" and "stopping" in outcome["purge_error"]
    assert 0 <= rule["deleted"] < old and outcome["purged_rows"] == rule["deleted"]
    assert count(path) == total - rule["deleted"]
    (purge_row,) = catalog_runs(Path(env["BACKUP_DIR"]), "purge")
    assert purge_row["outcome"] == "failed" and purge_row["stage"] == "purge"
    assert purge_row["details"]["purged_rows"] == rule["deleted"]
