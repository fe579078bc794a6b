"""One answer to "which backup" in the bucket too: a damaged newest copy in S3 is named, never silently replaced
by an older one, and bucket retention proves the copies it keeps before it deletes (moto over HTTP)."""

from datetime import datetime, timedelta, timezone
import json
from pathlib import Path
import sqlite3
import time

from tests.conftest import run_worker
from .test_cli_s3 import keys, s3_env  # noqa: F401  (the fixture)


def count(db: Path) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT count(*) FROM messages").fetchone()[0]


def two_backups(tmp_path: Path, env: dict[str, str], db: Path) -> list[str]:
    found = []
    for number in range(2):
        if number:
            time.sleep(1.05)
            with sqlite3.connect(db) as connection:
                connection.execute("INSERT INTO messages (body) VALUES ('newer')")
        result = run_worker(["backup"], env, cwd=tmp_path)
        assert result.code == 0, result.stderr
        found.append(result.event("job.succeeded")["artifact"])
    return found


def truncate_in_bucket(s3_client, bucket: str, key: str) -> None:
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3_client.put_object(Bucket=bucket, Key=key, Body=body[:-40])


def test_restore_from_s3_latest_over_the_live_database_names_a_damaged_newest_instead_of_restoring_the_previous(
        tmp_path: Path, s3_env, s3_client, bucket, app_db: Path) -> None:
    older, newest = two_backups(tmp_path, s3_env, app_db)
    truncate_in_bucket(s3_client, bucket, f"prod/app/{newest}")
    with sqlite3.connect(app_db) as connection:
        connection.execute("DELETE FROM messages WHERE id > 10")  # the app lost data: a restore is wanted
    before = app_db.read_bytes()
    refused = run_worker(["restore", "--from-s3", "--latest", "--yes"], s3_env, cwd=tmp_path)
    assert refused.code == 1
    assert newest.removesuffix(".zst") in refused.stderr and "--fallback" in refused.stderr
    assert app_db.read_bytes() == before, "nothing may be restored in its place"

    fallen = run_worker(["restore", "--from-s3", "--latest", "--fallback", "--yes"], s3_env, cwd=tmp_path)
    assert fallen.code == 0, fallen.stderr
    assert fallen.event("job.succeeded")["backup"] == older.removesuffix(".zst")
    assert count(app_db) == 1000


def test_verify_remote_latest_names_a_truncated_newest_copy(tmp_path: Path, s3_env, s3_client, bucket, app_db: Path) -> None:
    older, newest = two_backups(tmp_path, s3_env, app_db)
    truncate_in_bucket(s3_client, bucket, f"prod/app/{newest}")
    result = run_worker(["verify", "--remote", "--latest"], s3_env, cwd=tmp_path)
    assert result.code == 1
    assert newest in result.stderr
    assert older.removesuffix(".zst") not in result.stdout


def age_in_bucket(s3_client, bucket: str, artifact: str, days: int) -> str:
    """Rename a backup in the bucket as if it had been written `days` ago (stamp, id, created_at); its bytes and
    checksum are untouched. Return the new artifact name."""
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=f"prod/app/{artifact}.json")["Body"].read())
    when = datetime.now(timezone.utc) - timedelta(days=days)
    new = f"app-{when:%Y%m%dT%H%M%SZ}.sqlite.zst"
    manifest.update(id=new.removesuffix(".zst"), artifact=new, created_at=when.strftime("%Y-%m-%dT%H:%M:%SZ"))
    s3_client.copy_object(Bucket=bucket, Key=f"prod/app/{new}", CopySource={"Bucket": bucket, "Key": f"prod/app/{artifact}"})
    s3_client.put_object(Bucket=bucket, Key=f"prod/app/{new}.json", Body=json.dumps(manifest).encode())
    s3_client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": f"prod/app/{artifact}{suffix}"} for suffix in ("", ".json")]})
    return new


def test_bucket_retention_keeps_the_only_intact_copy_when_the_newest_has_bit_rot(tmp_path: Path, s3_env, s3_client,
                                                                                 bucket, app_db: Path) -> None:
    first, second = two_backups(tmp_path, s3_env, app_db)
    first = age_in_bucket(s3_client, bucket, first, days=10)
    body = bytearray(s3_client.get_object(Bucket=bucket, Key=f"prod/app/{second}")["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3_client.put_object(Bucket=bucket, Key=f"prod/app/{second}", Body=bytes(body))
    # The first copy is past the bucket's window; the second fills the only slot until its SHA-256 is checked.
    result = run_worker(["prune"], {**s3_env, "BACKUP_KEEP_MIN": "1", "S3_RETENTION_DAYS": "7"}, cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert f"prod/app/{first}" in keys(s3_client, bucket) and f"prod/app/{first}.json" in keys(s3_client, bucket)
    assert "retention.damaged_backup" in result.stderr
