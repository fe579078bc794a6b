"""RESTORE_ON_START=if-missing with SQLite, as a user runs it: `python -m worker run [--exec APP]` after the volume
or the database file was lost, with the bucket on moto's S3 server over HTTP.

The README's old recipe (start the worker, then `restore --from-s3 --latest`) restored an EMPTY database: the
worker's catch-up backup of the new empty file became the newest copy in the bucket. These tests hold the worker
to restoring before the catch-up backup and before the app starts."""

import json
from pathlib import Path
import shlex
import shutil
import sqlite3
import sys
import time

import pytest

from tests.conftest import REDIS_ADDRESS, run_worker
from tests.e2e.started import Started, started_workers
from tests.notify.conftest import receiver  # noqa: F401
from tests.s3.conftest import (ACCESS_KEY, REGION, SECRET, aws_env, boto_session, bucket, client_for,  # noqa: F401
                               free_port, moto_endpoint, s3_client, s3_endpoint, s3_server)

APP = Path(__file__).resolve().parent / "count_app.py"
PREFIX = "svc"


def s3_env(endpoint: str, bucket_name: str) -> dict[str, str]:
    return {"S3_BUCKET": bucket_name, "S3_PREFIX": PREFIX, "S3_ENDPOINT_URL": endpoint, "S3_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


def app_command(tmp_path: Path, db: Path) -> str:
    return shlex.join([sys.executable, str(APP), "--record", str(tmp_path / "app.jsonl"), "--db", str(db)])


def app_records(tmp_path: Path) -> list[dict]:
    path = tmp_path / "app.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_app(tmp_path: Path, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = app_records(tmp_path)
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"the app did not start within {timeout} s")


def rows(db: Path, table: str = "messages") -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def add_rows(db: Path, count: int) -> None:
    with sqlite3.connect(db) as connection:
        connection.executemany("INSERT INTO messages (body) VALUES (?)", [(f"later {i}",) for i in range(count)])


def lose(db: Path) -> None:
    """The database file is gone, with whatever SQLite kept beside it."""
    for path in (db, *(db.with_name(db.name + suffix) for suffix in ("-wal", "-shm", "-journal"))):
        path.unlink(missing_ok=True)


def backup(env: dict[str, str], cwd: Path) -> str:
    done = run_worker(["backup", "--json"], env, cwd=cwd)
    assert done.code == 0, done.stderr
    return json.loads(done.stdout)["artifact"].removesuffix(".zst")


def plain(lines: list[str] | str) -> list[str]:
    text = "".join(lines) if isinstance(lines, list) else lines
    return [line for line in text.splitlines() if line.strip() and not line.startswith("{")]


started = pytest.fixture(started_workers, name="started")


def start(started: list[Started], args: list[str], env: dict[str, str], cwd: Path) -> Started:
    worker = Started(args, env, cwd)
    started.append(worker)
    return worker


def test_volume_lost_the_bucket_s_newest_backup_is_restored_before_the_app_starts_and_the_catch_up_holds_the_data(
        tmp_path: Path, worker_env, moto_endpoint, bucket, started) -> None:
    db = Path(worker_env["BACKUP_SOURCE"].removeprefix("sqlite:///"))
    env = {**worker_env, **s3_env(moto_endpoint, bucket)}
    backup(env, tmp_path)
    time.sleep(1.1)  # artifact names carry the second
    add_rows(db, 234)
    newest = backup(env, tmp_path)  # 1234 rows
    shutil.rmtree(tmp_path / "backups")  # the volume is lost: database and backups
    lose(db)

    worker = start(started, ["run", "--exec", app_command(tmp_path, db)], {**env, "RESTORE_ON_START": "if-missing"}, tmp_path)
    assert wait_app(tmp_path) ["rows"] == 1234  # the app saw the restored data when it started
    restored = worker.wait_for("restore.on_start")
    assert restored["backup"] == newest and restored["location"] == "s3" and restored["set"] == "app"
    names = worker.names()
    assert names.index("restore.on_start") < names.index("app.started") < names.index("worker.started")
    catch_up = worker.wait_for("job.succeeded", job="backup")
    assert worker.stop() == 0

    listed = run_worker(["list", "--remote", "--json"], env, cwd=tmp_path)
    in_bucket = [row for row in json.loads(listed.stdout) if row["location"] in ("s3", "both")]
    assert in_bucket[0]["id"] == catch_up["artifact"].removesuffix(".zst") != newest  # the catch-up is the newest
    copy = tmp_path / "newest-in-bucket.db"
    fetched = run_worker(["restore", in_bucket[0]["id"], "--from-s3", "--to", str(copy), "--yes"], env, cwd=tmp_path)
    assert fetched.code == 0, fetched.stderr
    assert rows(copy) == 1234  # not an empty database


def test_database_file_deleted_is_restored_from_the_volume_without_a_download(
        tmp_path: Path, worker_env, moto_endpoint, bucket, started) -> None:
    db = Path(worker_env["BACKUP_SOURCE"].removeprefix("sqlite:///"))
    env = {**worker_env, **s3_env(moto_endpoint, bucket)}
    newest = backup(env, tmp_path)
    lose(db)

    worker = start(started, ["run"], {**env, "RESTORE_ON_START": "if-missing"}, tmp_path)
    restored = worker.wait_for("restore.on_start")
    assert restored["backup"] == newest and restored["location"] == "local"
    worker.wait_for("worker.started")
    assert worker.stop() == 0
    assert rows(db) == 1000
    assert db.stat().st_mode & 0o777 == 0o600
    assert not list(db.parent.glob(".tmp-*"))  # no scratch left beside the database


def test_a_zero_byte_database_file_counts_as_missing_and_is_replaced(tmp_path: Path, worker_env, started) -> None:
    db = Path(worker_env["BACKUP_SOURCE"].removeprefix("sqlite:///"))
    backup(worker_env, tmp_path)
    lose(db)
    db.touch()  # what an app that opened the missing path leaves: SQLite creates the file with 0 bytes

    worker = start(started, ["run"], {**worker_env, "RESTORE_ON_START": "if-missing"}, tmp_path)
    worker.wait_for("restore.on_start")
    worker.wait_for("worker.started")
    assert worker.stop() == 0
    assert rows(db) == 1000


def empty_schema(db: Path) -> None:
    """What an app that creates its schema at start leaves in a new database: its tables, no row."""
    lose(db)
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, body TEXT NOT NULL, payload BLOB)")


def test_tables_without_a_row_are_restored_over_with_a_safety_copy_when_the_newest_backup_holds_rows(
        tmp_path: Path, worker_env, started) -> None:
    db = Path(worker_env["BACKUP_SOURCE"].removeprefix("sqlite:///"))
    newest = backup(worker_env, tmp_path)
    empty_schema(db)  # the volume was lost and the app, started before the worker, created its tables

    worker = start(started, ["run", "--exec", app_command(tmp_path, db)], {**worker_env, "RESTORE_ON_START": "if-missing"},
                   tmp_path)
    assert wait_app(tmp_path)["rows"] == 1000
    restored = worker.wait_for("restore.on_start")
    assert restored["backup"] == newest and "has tables but no row" in restored["reason"]
    assert Path(restored["safety_copy"]).name.startswith("app.db.pre-restore-")
    assert restored["safety_copy"] in (tmp_path / "backups" / ".safety-copies.json").read_text()  # recorded: pruned later
    worker.wait_for("worker.started")
    assert worker.stop() == 0
    assert rows(db) == 1000 and rows(Path(restored["safety_copy"])) == 0
    assert run_worker(["backup"], worker_env, cwd=tmp_path).code == 0  # the next backup holds the data again


@pytest.mark.parametrize("case, newest_rows, live_rows, reason", [
    ("the database holds rows", 1000, 5, "the database holds data"),
    ("tables without rows, and the newest backup records none", 0, 0, "the set's newest backup of this source records no rows"),
])
def test_a_database_with_tables_is_left_alone_unless_it_is_empty_and_the_newest_backup_holds_rows(
        tmp_path: Path, worker_env, started, case, newest_rows, live_rows, reason) -> None:
    db = Path(worker_env["BACKUP_SOURCE"].removeprefix("sqlite:///"))
    empty_schema(db)
    add_rows(db, newest_rows)
    backup(worker_env, tmp_path)
    with sqlite3.connect(db) as connection:
        connection.execute("DELETE FROM messages")
    add_rows(db, live_rows)

    worker = start(started, ["run"], {**worker_env, "RESTORE_ON_START": "if-missing"}, tmp_path)
    skipped = worker.wait_for("restore.on_start_not_needed")
    assert reason in skipped["reason"], case
    worker.wait_for("worker.started")
    assert worker.stop() == 0
    assert "restore.on_start" not in worker.names() and rows(db) == live_rows, case


def test_sqlite_leftovers_beside_a_missing_database_are_named_never_deleted_and_the_app_never_starts(
        tmp_path: Path, worker_env, started) -> None:
    db = Path(worker_env["BACKUP_SOURCE"].removeprefix("sqlite:///"))
    backup(worker_env, tmp_path)
    lose(db)
    wal = db.with_name(db.name + "-wal")
    wal.write_bytes(b"the only copy of the last commits")

    worker = start(started, ["run", "--exec", app_command(tmp_path, db)], {**worker_env, "RESTORE_ON_START": "if-missing"},
                   tmp_path)
    assert worker.finish(60) == 1
    (sentence,) = plain(worker.stderr)
    print(sentence)
    assert str(wal) in sentence and "app" in sentence
    assert wal.read_bytes() == b"the only copy of the last commits" and not db.exists()
    assert not app_records(tmp_path) and "app.started" not in worker.names()


def test_the_newest_backup_damaged_the_older_intact_one_is_restored_and_the_skipped_one_is_named(
        tmp_path: Path, worker_env, started) -> None:
    db = Path(worker_env["BACKUP_SOURCE"].removeprefix("sqlite:///"))
    older = backup(worker_env, tmp_path)
    time.sleep(1.1)  # artifact names carry the second
    add_rows(db, 50)
    newest = backup(worker_env, tmp_path)
    artifact = tmp_path / "backups" / f"{newest}.zst"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF  # bit rot: same size, another SHA-256
    artifact.write_bytes(bytes(data))
    lose(db)

    worker = start(started, ["run"], {**worker_env, "RESTORE_ON_START": "if-missing"}, tmp_path)
    restored = worker.wait_for("restore.on_start")
    assert restored["backup"] == older and restored["location"] == "local"
    skipped = worker.wait_for("restore.on_start_passed_over")
    assert newest in skipped["note"]
    assert restored["passed_over"] == [skipped["note"]]  # the notification's sentence names it too
    worker.wait_for("worker.started")
    assert worker.stop() == 0
    assert rows(db) == 1000


def test_the_only_backup_damaged_in_the_bucket_exits_1_with_one_sentence_and_the_app_never_starts(
        tmp_path: Path, worker_env, moto_endpoint, bucket, s3_client, started) -> None:
    db = Path(worker_env["BACKUP_SOURCE"].removeprefix("sqlite:///"))
    env = {**worker_env, **s3_env(moto_endpoint, bucket)}
    only = backup(env, tmp_path)
    key = f"{PREFIX}/{only}.zst"
    body = bytearray(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3_client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    shutil.rmtree(tmp_path / "backups")
    lose(db)

    worker = start(started, ["run", "--exec", app_command(tmp_path, db)], {**env, "RESTORE_ON_START": "if-missing"}, tmp_path)
    assert worker.finish(90) == 1
    (sentence,) = plain(worker.stderr)
    print(sentence)
    assert only in sentence and "app" in sentence
    assert not app_records(tmp_path) and "app.started" not in worker.names()
    assert not db.exists()


def test_an_unreachable_bucket_exits_1_with_one_sentence_and_the_app_never_starts(
        tmp_path: Path, worker_env, started) -> None:
    db = Path(worker_env["BACKUP_SOURCE"].removeprefix("sqlite:///"))
    lose(db)
    shutil.rmtree(tmp_path / "backups", ignore_errors=True)
    env = {**worker_env, **s3_env(f"http://127.0.0.1:{free_port()}", "nowhere"), "RESTORE_ON_START": "if-missing"}

    worker = start(started, ["run", "--exec", app_command(tmp_path, db)], env, tmp_path)
    assert worker.finish(120) == 1
    (sentence,) = plain(worker.stderr)
    print(sentence)
    assert "bucket" in sentence or "S3" in sentence, sentence
    assert not app_records(tmp_path) and "app.started" not in worker.names()


def test_first_deploy_with_no_backup_anywhere_starts_the_app_normally(tmp_path: Path, worker_env, moto_endpoint, bucket,
                                                                      started) -> None:
    db = Path(worker_env["BACKUP_SOURCE"].removeprefix("sqlite:///"))
    lose(db)
    env = {**worker_env, **s3_env(moto_endpoint, bucket), "RESTORE_ON_START": "if-missing"}

    worker = start(started, ["run", "--exec", app_command(tmp_path, db)], env, tmp_path)
    assert wait_app(tmp_path)["db"] == "missing"
    worker.wait_for("restore.on_start_no_backup", set="app")
    worker.wait_for("worker.started")
    assert "restore.on_start" not in worker.names()
    assert worker.stop() == 0


def test_a_backup_made_by_another_railway_service_is_restored_both_named_and_the_next_backup_is_accepted(
        tmp_path: Path, worker_env, moto_endpoint, bucket, started) -> None:
    db = Path(worker_env["BACKUP_SOURCE"].removeprefix("sqlite:///"))
    env = {**worker_env, **s3_env(moto_endpoint, bucket), "RAILWAY_ENVIRONMENT_ID": "production"}
    newest = backup({**env, "RAILWAY_SERVICE_ID": "0ld5e4v1ce"}, tmp_path)
    shutil.rmtree(tmp_path / "backups")  # the project was lost; the service is created again, with a new id
    lose(db)
    time.sleep(1.1)  # the old service looks gone: its newest backup is older than FRESHNESS_LIMIT

    recreated = {**env, "RAILWAY_SERVICE_ID": "9e45e4v1ce", "RESTORE_ON_START": "if-missing", "FRESHNESS_LIMIT": "1s"}
    worker = start(started, ["run", "--exec", app_command(tmp_path, db)], recreated, tmp_path)
    assert wait_app(tmp_path)["rows"] == 1000
    restored = worker.wait_for("restore.on_start")
    assert restored["backup"] == newest
    assert "0ld5e4v1" in restored["backup_made_by"] and "9e45e4v1" in restored["restored_into"]
    worker.wait_for("backup_set.taken_over")
    caught_up = worker.wait(lambda e: e.get("event") in ("job.succeeded", "job.failed") and e.get("job") == "backup", 90,
                            "the catch-up backup's outcome")
    assert caught_up["event"] == "job.succeeded", caught_up  # not refused as another source's set
    assert worker.stop() == 0


def test_a_backup_of_another_live_source_is_never_restored_at_start_both_are_named_with_the_deliberate_path(
        tmp_path: Path, worker_env, moto_endpoint, bucket, started) -> None:
    db = Path(worker_env["BACKUP_SOURCE"].removeprefix("sqlite:///"))
    env = {**worker_env, **s3_env(moto_endpoint, bucket)}
    theirs = backup(env, tmp_path)  # a live neighbour backs up the set `app` into the same bucket and prefix
    other = tmp_path / "other" / "app.db"  # this service's database was never created (or is lost)
    neighbour = {**env, "BACKUP_SOURCE": f"sqlite:///{other}", "BACKUP_NAME": "app",
                 "BACKUP_DIR": str(tmp_path / "other-backups"), "RESTORE_ON_START": "if-missing"}

    worker = start(started, ["run", "--exec", app_command(tmp_path, other)], neighbour, tmp_path)
    assert worker.finish(90) == 1
    (sentence,) = plain(worker.stderr)
    print(sentence)
    assert theirs in sentence and str(db) in sentence and str(other) in sentence
    assert "RESTORE_ON_START=never" in sentence and f"restore {theirs} --from-s3 --yes" in sentence
    assert "BACKUP_NAME" in sentence and SECRET not in sentence
    assert not other.exists() and not app_records(tmp_path) and "restore.on_start" not in worker.names()
    assert rows(db) == 1000  # the neighbour's own database is untouched


def test_restore_on_start_never_is_the_default_and_a_bad_value_is_exit_2_naming_the_variable(worker) -> None:
    shown = worker("config")
    assert shown.code == 0 and "RESTORE_ON_START" in shown.stdout and "never" in shown.stdout
    bad = worker("config", env={"RESTORE_ON_START": "always"})
    assert bad.code == 2 and "RESTORE_ON_START" in bad.stderr


def test_a_restore_at_start_is_notified_and_pinged_and_a_redis_set_is_skipped_with_a_log_line(
        tmp_path: Path, worker_env, receiver, started) -> None:
    db = Path(worker_env["BACKUP_SOURCE"].removeprefix("sqlite:///"))
    newest = backup(worker_env, tmp_path)
    lose(db)
    env = {**worker_env, "RESTORE_ON_START": "if-missing", "NOTIFY_WEBHOOK_URL": f"{receiver.url}/hook",
           "NOTIFY_ON": "all", "HEALTHCHECK_PING_URL": f"{receiver.url}/ping", "BACKUP_SOURCE_CACHE": "redis://%s:%d/0" % REDIS_ADDRESS}

    worker = start(started, ["run"], env, tmp_path)
    worker.wait_for("restore.on_start", backup=newest)
    skipped = worker.wait_for("restore.on_start_skipped", set="cache")
    assert "README" in skipped["reason"]
    worker.wait_for("worker.started")
    hooks = [r for r in receiver.wait_for(2) if r.path == "/hook"]
    assert hooks[0].json()["job"] == "restore" and hooks[0].json()["backup_set"] == "app"
    assert hooks[0].json()["text"].startswith("restore at start of app succeeded") and newest in hooks[0].json()["text"]
    assert "/ping/log" in receiver.paths() and "/ping/start" not in receiver.paths()[:receiver.paths().index("/ping/log")]
    assert worker.stop() == 0
    history = run_worker(["history", "--json", "--job", "restore"], env, cwd=tmp_path)
    (run,) = json.loads(history.stdout)
    assert run["outcome"] == "succeeded"


def test_a_lost_volume_whose_restore_failed_once_restores_on_the_retry(
        tmp_path: Path, worker_env, moto_endpoint, bucket, s3_client, started) -> None:
    """Off Railway a lost volume loses `.install-id` too, and the first start makes a new one; when that first
    restore fails (a damaged download), the restart policy's retry must still take the set's backups as this
    source's (jobs.identity.same_recovered), as docs/recovery.md says."""
    db = Path(worker_env["BACKUP_SOURCE"].removeprefix("sqlite:///"))
    env = {**worker_env, **s3_env(moto_endpoint, bucket)}
    only = backup(env, tmp_path)
    key = f"{PREFIX}/{only}.zst"
    good = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    s3_client.put_object(Bucket=bucket, Key=key, Body=bytes(damaged))  # a transient fault
    shutil.rmtree(tmp_path / "backups")  # the volume is lost, its .install-id with it
    lose(db)

    first = start(started, ["run", "--exec", app_command(tmp_path, db)], {**env, "RESTORE_ON_START": "if-missing"}, tmp_path)
    assert first.finish(90) == 1
    assert (tmp_path / "backups" / ".install-id").exists()  # made by the first start

    s3_client.put_object(Bucket=bucket, Key=key, Body=good)  # the fault is gone; the restart policy tries again
    again = start(started, ["run", "--exec", app_command(tmp_path, db)], {**env, "RESTORE_ON_START": "if-missing"}, tmp_path)
    assert again.wait_for("restore.on_start", 90)["backup"] == only
    assert wait_app(tmp_path)["rows"] == 1000
    assert again.stop() == 0
