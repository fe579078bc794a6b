"""Issue 18: an empty SQLite database never becomes the newest backup of a set that holds data, and a backup that
shrank is taken but marked. Through `python -m worker` as a user runs it, with moto's S3 server and a real
webhook receiver."""

import json
from pathlib import Path
import shutil
import sqlite3
from typing import Any

import pytest

from tests.conftest import Result, run_worker
from tests.notify.conftest import Receiver, receiver  # noqa: F401
from .conftest import ACCESS_KEY, REGION, SECRET, free_port


@pytest.fixture
def env(worker_env: dict[str, str], moto_endpoint: str, bucket: str, receiver: Receiver) -> dict[str, str]:  # noqa: F811
    return {**worker_env, "S3_BUCKET": bucket, "S3_PREFIX": "prod/app", "S3_ENDPOINT_URL": moto_endpoint,
            "S3_REGION": REGION, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "NOTIFY_WEBHOOK_URL": f"{receiver.url}/hook"}


def keys(s3_client: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


def local_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.zst*"))


def manifest(directory: Path, artifact: str) -> dict[str, Any]:
    return json.loads((directory / f"{artifact}.json").read_text())


def webhooks(receiver: Receiver, count: int) -> list[dict[str, Any]]:  # noqa: F811
    receiver.wait_for(count)
    return [request.json() for request in receiver.requests if request.path == "/hook"]


def rows_in(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT count(*) FROM messages").fetchone()[0]


def emptied(db: Path, how: str) -> None:
    """Leave the database at `db` without a row: its rows deleted, its tables dropped, or a fresh empty file."""
    if how == "a new empty file":
        db.unlink()
        for suffix in ("-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
        sqlite3.connect(db).close()
        return
    with sqlite3.connect(db) as connection:
        connection.execute("DELETE FROM messages" if how == "rows deleted" else "DROP TABLE messages")


@pytest.mark.parametrize("how", ["rows deleted", "tables dropped", "a new empty file"])
def test_an_emptied_database_is_refused_at_preflight_and_nothing_is_written_or_uploaded(
        tmp_path: Path, app_db: Path, env: dict[str, str], s3_client: Any, bucket: str, receiver: Receiver,  # noqa: F811
        how: str) -> None:
    first = run_worker(["backup"], env, cwd=tmp_path)
    assert first.code == 0, first.stderr
    held = first.event("job.succeeded")["backup"]
    before_local, before_bucket = local_files(tmp_path / "backups"), keys(s3_client, bucket)
    emptied(app_db, how)

    refused = run_worker(["backup"], env, cwd=tmp_path)
    assert refused.code == 1
    failed = refused.event("job.failed")
    assert failed["stage"] == "preflight"
    assert failed["reason"] == (
        f"the SQLite database {app_db} holds no rows while the set's newest backup {held} holds 1000 rows, so no backup "
        "was written, lest an empty copy become the one restored: to bring the data back run "
        f"`python -m worker restore {held} --yes`; if the database is meant to be empty, set BACKUP_ALLOW_EMPTY=true")
    assert f"backup failed at stage preflight: {failed['reason']}" in refused.stderr
    assert local_files(tmp_path / "backups") == before_local and keys(s3_client, bucket) == before_bucket
    assert not [p for p in (tmp_path / "backups").iterdir() if p.name.startswith(".tmp-")]
    body = webhooks(receiver, 1)[-1]
    assert body["outcome"] == "failed" and body["stage"] == "preflight" and "BACKUP_ALLOW_EMPTY=true" in body["text"]


@pytest.mark.parametrize("bucket_down", ["the S3 server stopped", "a wrong bucket name"])
def test_an_empty_source_is_refused_while_the_bucket_that_holds_the_data_cannot_be_listed(
        tmp_path: Path, app_db: Path, env: dict[str, str], bucket_down: str) -> None:
    first = run_worker(["backup"], env, cwd=tmp_path)
    assert first.code == 0, first.stderr
    shutil.rmtree(tmp_path / "backups")  # the volume is lost: only the bucket holds the data
    emptied(app_db, "a new empty file")
    down = ({"S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"} if bucket_down == "the S3 server stopped"
            else {"S3_BUCKET": "no-such-bucket-here"})  # moto's server takes any credentials

    refused = run_worker(["backup"], {**env, **down}, cwd=tmp_path)
    assert refused.code == 1
    failed = refused.event("job.failed")
    assert failed["stage"] == "preflight", failed
    assert "holds no rows or keys and the bucket could not be listed" in failed["reason"]
    assert "BACKUP_ALLOW_EMPTY=true" in failed["reason"] and SECRET not in refused.stdout + refused.stderr
    assert local_files(tmp_path / "backups") == []  # no empty backup was written

    allowed = run_worker(["backup"], {**env, **down, "BACKUP_ALLOW_EMPTY": "true"}, cwd=tmp_path)
    assert allowed.event("job.failed")["stage"] == "upload"  # taken, and the upload still fails
    (written,) = [name for name in local_files(tmp_path / "backups") if name.endswith(".json")]
    assert json.loads((tmp_path / "backups" / written).read_text())["flags"] == ["empty_allowed"]


def test_the_command_in_the_refusal_restores_the_data(tmp_path: Path, app_db: Path, env: dict[str, str]) -> None:
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    emptied(app_db, "rows deleted")
    reason = run_worker(["backup"], env, cwd=tmp_path).event("job.failed")["reason"]
    command = reason.split("run `python -m worker ")[1].split("`")[0].split()
    restored = run_worker(command, env, cwd=tmp_path)
    assert restored.code == 0, restored.stderr
    assert rows_in(app_db) == 1000
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0


def test_a_fresh_empty_volume_and_database_beside_a_bucket_of_real_backups_are_refused_with_the_from_s3_command(
        tmp_path: Path, app_db: Path, env: dict[str, str], s3_client: Any, bucket: str) -> None:
    """The issue's story: the service is recreated, its volume and database empty; the bucket holds the data."""
    first = run_worker(["backup"], env, cwd=tmp_path)
    assert first.code == 0, first.stderr
    held = first.event("job.succeeded")["backup"]
    uploaded = keys(s3_client, bucket)
    emptied(app_db, "a new empty file")
    fresh = {**env, "BACKUP_DIR": str(tmp_path / "new-volume" / "backups")}
    refused = run_worker(["backup"], fresh, cwd=tmp_path)
    assert refused.code == 1
    reason = refused.event("job.failed")["reason"]
    assert f"newest backup {held} in the bucket holds 1000 rows" in reason
    assert f"`python -m worker restore {held} --from-s3 --yes`" in reason
    assert keys(s3_client, bucket) == uploaded and local_files(tmp_path / "new-volume" / "backups") == []


def test_a_first_backup_of_an_empty_database_is_taken(tmp_path: Path, env: dict[str, str]) -> None:
    empty = tmp_path / "new.db"
    sqlite3.connect(empty).close()
    result = run_worker(["backup"], {**env, "BACKUP_SOURCE": f"sqlite:///{empty}"}, cwd=tmp_path)
    assert result.code == 0, result.stderr
    written = manifest(tmp_path / "backups", result.event("job.succeeded")["artifact"])
    assert written["counts"] == {"unit": "rows", "total": 0, "tables": {}} and "flags" not in written


def test_allow_empty_takes_it_flagged_restore_latest_passes_over_it_and_retention_keeps_the_real_backup(
        tmp_path: Path, app_db: Path, env: dict[str, str], receiver: Receiver) -> None:  # noqa: F811
    first = run_worker(["backup"], env, cwd=tmp_path)
    held = first.event("job.succeeded")["backup"]
    emptied(app_db, "rows deleted")
    allowed = run_worker(["backup"], {**env, "BACKUP_ALLOW_EMPTY": "true"}, cwd=tmp_path)
    assert allowed.code == 0, allowed.stderr
    done = allowed.event("job.succeeded")
    empty_one = done["backup"]
    assert done["flags"] == ["empty_allowed"] and "BACKUP_ALLOW_EMPTY=true let this backup through" in done["warnings"][0]
    assert manifest(tmp_path / "backups", done["artifact"])["flags"] == ["empty_allowed"]
    assert allowed.event("backup.empty_allowed")["newest"] == held
    assert "warning: " in allowed.stderr
    body = webhooks(receiver, 1)[-1]  # NOTIFY_ON is failure (the default), and a warning still reaches the webhook
    assert body["outcome"] == "succeeded" and body["text"].startswith("WARNING: ") and body["flags"] == ["empty_allowed"]

    listed = run_worker(["list"], env, cwd=tmp_path)
    line = next(line for line in listed.stdout.splitlines() if line.startswith(empty_one))
    assert "EMPTY source, let through by BACKUP_ALLOW_EMPTY" in line
    rows = json.loads(run_worker(["list", "--json"], env, cwd=tmp_path).stdout)
    assert {row["id"]: row["flags"] for row in rows}[empty_one] == ["empty_allowed"]

    target = tmp_path / "restored.db"
    restored = run_worker(["restore", "--latest", "--to", str(target)], env, cwd=tmp_path)
    assert restored.code == 0, restored.stderr
    assert rows_in(target) == 1000
    assert f"passed over {empty_one}" in restored.stdout + restored.stderr

    pruned = run_worker(["prune"], {**env, "BACKUP_RETENTION_DAYS": "0", "BACKUP_KEEP_MIN": "1"}, cwd=tmp_path)
    assert pruned.code == 0, pruned.stderr
    assert (tmp_path / "backups" / f"{held}.zst").exists()


def shrink_to(db: Path, keep: int) -> None:
    with sqlite3.connect(db) as connection:
        connection.execute("DELETE FROM messages WHERE id > ?", (keep,))
    with sqlite3.connect(db, isolation_level=None) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.execute("VACUUM")


def test_a_backup_under_a_tenth_of_the_previous_is_taken_flagged_warned_and_passed_over_but_only_once(
        tmp_path: Path, app_db: Path, env: dict[str, str], receiver: Receiver) -> None:  # noqa: F811
    with sqlite3.connect(app_db) as connection:
        connection.executemany("INSERT INTO messages (body) VALUES (?)", [("padding " * 200,) for _ in range(2000)])
    big = run_worker(["backup"], env, cwd=tmp_path)
    assert big.code == 0, big.stderr
    before = big.event("job.succeeded")
    shrink_to(app_db, 5)

    small = run_worker(["backup"], env, cwd=tmp_path)
    assert small.code == 0, small.stderr
    done = small.event("job.succeeded")
    assert done["flags"] == ["shrunk"] and done["raw_size"] * 10 < before["raw_size"]
    logged = small.event("backup.shrunk")
    assert logged["level"] == "warning" and logged["previous"] == before["backup"]
    assert (logged["raw_size"], logged["previous_raw_size"]) == (done["raw_size"], before["raw_size"])
    assert manifest(tmp_path / "backups", done["artifact"])["flags"] == ["shrunk"]
    body = webhooks(receiver, 1)[-1]
    assert body["outcome"] == "succeeded" and body["text"].startswith("WARNING: ") and "under a tenth" in body["text"]

    target = tmp_path / "restored.db"
    restored = run_worker(["restore", "--latest", "--to", str(target)], env, cwd=tmp_path)
    assert restored.code == 0, restored.stderr
    assert rows_in(target) == 3000 and f"passed over {done['backup']}" in restored.stdout + restored.stderr
    listed = run_worker(["list"], env, cwd=tmp_path).stdout
    assert "SHRUNK to under a tenth of the previous backup" in next(l for l in listed.splitlines() if l.startswith(done["backup"]))

    again = run_worker(["backup"], env, cwd=tmp_path)
    assert again.code == 0, again.stderr
    assert "flags" not in again.event("job.succeeded")  # compared with the shrunk one: a deliberate shrink warns once
    assert "flags" not in manifest(tmp_path / "backups", again.event("job.succeeded")["artifact"])

    pruned = run_worker(["prune"], {**env, "BACKUP_RETENTION_DAYS": "0", "BACKUP_KEEP_MIN": "2"}, cwd=tmp_path)
    assert pruned.code == 0, pruned.stderr
    assert (tmp_path / "backups" / before["artifact"]).exists()  # the pre-shrink backup still fills a slot


def test_rows_deleted_under_a_tenth_flag_the_backup_shrunk_though_its_size_stays(
        tmp_path: Path, app_db: Path, env: dict[str, str], receiver: Receiver) -> None:  # noqa: F811
    first = run_worker(["backup"], env, cwd=tmp_path)
    assert first.code == 0, first.stderr
    before = first.event("job.succeeded")
    with sqlite3.connect(app_db) as connection:  # no VACUUM: the file keeps its pages
        connection.execute("DELETE FROM messages WHERE id > 50")

    small = run_worker(["backup"], env, cwd=tmp_path)
    assert small.code == 0, small.stderr
    done = small.event("job.succeeded")
    assert done["raw_size"] * 10 >= before["raw_size"]  # the size alone would not tell
    assert done["flags"] == ["shrunk"]
    assert "holds 50 rows, under a tenth" in small.event("backup.shrunk")["detail"]
    body = webhooks(receiver, 1)[-1]
    assert body["text"].startswith("WARNING: ") and "holds 50 rows" in body["text"]


def test_backup_allow_empty_must_be_true_or_false(tmp_path: Path, env: dict[str, str]) -> None:
    result: Result = run_worker(["backup"], {**env, "BACKUP_ALLOW_EMPTY": "yes"}, cwd=tmp_path)
    assert result.code == 2 and "BACKUP_ALLOW_EMPTY" in result.stderr
    shown = run_worker(["config"], {**env, "BACKUP_ALLOW_EMPTY": "true"}, cwd=tmp_path)
    assert shown.code == 0 and "BACKUP_ALLOW_EMPTY" in shown.stdout and "true" in shown.stdout.lower()
