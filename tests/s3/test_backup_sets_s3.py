"""Sets that share a bucket, uploads that keep failing, parts that a killed upload left, and a clock that is off:
against moto's S3 server and SeaweedFS over real HTTP."""

from datetime import timedelta
import json
from pathlib import Path
import sqlite3
import threading
import time
from typing import Any

import pytest
import structlog

from jobs import offsite, pipeline, retention
from jobs.artifacts import BackupSet
from jobs.backups import list_backups
from jobs.destinations.local import LocalDestination
from jobs.engines.sqlite import SqliteSource
from jobs.errors import Cancelled, ListError, UploadError
from tests.conftest import run_worker
from .conftest import ACCESS_KEY, REGION, SECRET, FAST, free_port, make_app_db, take_backups

pytestmark = pytest.mark.s3_servers  # every test that uses a bucket runs on moto and on SeaweedFS


@pytest.fixture
def bucket_env(worker_env: dict[str, str], s3_endpoint: str, bucket: str) -> dict[str, str]:
    """Two services would each have this, with no S3_PREFIX: one bucket, shared."""
    return {**worker_env, "S3_BUCKET": bucket, "S3_ENDPOINT_URL": s3_endpoint, "S3_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


def names(s3_client: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


def age_in_bucket(s3_client: Any, bucket: str, artifact: str, days: int) -> None:
    """Rewrite the created_at of a backup's manifest in the bucket to `days` ago."""
    from datetime import datetime, timezone

    from jobs.manifest import utc_iso

    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=artifact + ".json")["Body"].read())
    manifest["created_at"] = utc_iso(datetime.now(timezone.utc) - timedelta(days=days))
    s3_client.put_object(Bucket=bucket, Key=artifact + ".json", Body=json.dumps(manifest).encode())


def test_two_services_sharing_a_bucket_never_prune_or_restore_each_others_backups(tmp_path: Path, bucket_env, s3_client, bucket) -> None:
    billing_db = make_app_db(tmp_path / "billing.db", rows=7)
    billing = {**bucket_env, "BACKUP_SOURCE": f"sqlite:///{billing_db}", "BACKUP_DIR": str(tmp_path / "billing-volume")}
    first = run_worker(["backup"], billing, cwd=tmp_path)
    assert first.code == 0, first.stderr
    billing_artifact = first.event("job.succeeded")["artifact"]
    age_in_bucket(s3_client, bucket, billing_artifact, days=40)  # B's only off-site copy is old

    # Service A keeps 1 day in the bucket (its newest verified backup always stays) and backs up twice.
    app = {**bucket_env, "S3_RETENTION_DAYS": "1", "BACKUP_RETENTION_DAYS": "0", "BACKUP_KEEP_MIN": "1"}
    result = run_worker(["backup"], app, cwd=tmp_path)
    assert result.code == 0, result.stderr
    old_app = result.event("job.succeeded")["artifact"]
    age_in_bucket(s3_client, bucket, old_app, days=40)
    time.sleep(1.1)
    result = run_worker(["backup"], app, cwd=tmp_path)
    assert result.code == 0, result.stderr
    # A cycle never ages backups out by its own backup's date (a clock a month ahead would otherwise delete a
    # month): ages count from the newest backup before it, so after a 40-day gap the old one goes at the next run.
    assert result.event("job.succeeded")["pruned_remote"] == []
    pruned = run_worker(["prune"], app, cwd=tmp_path)
    assert pruned.code == 0, pruned.stderr
    assert old_app not in names(s3_client, bucket)  # A's own old one goes
    assert {billing_artifact, f"{billing_artifact}.json"} <= set(names(s3_client, bucket))
    listed = json.loads(run_worker(["list", "--json", "--remote"], app, cwd=tmp_path).stdout)
    assert [row["artifact"].split("-")[0] for row in listed] == ["app"]

    # B's volume is lost; `restore --from-s3 --latest` for B restores B's database, not A's newer one.
    empty = {**bucket_env, "BACKUP_SOURCE": f"sqlite:///{billing_db}", "BACKUP_DIR": str(tmp_path / "new-volume")}
    target = tmp_path / "billing-restored.db"
    restored = run_worker(["restore", "--from-s3", "--latest", "--to", str(target)], empty, cwd=tmp_path)
    assert restored.code == 0, restored.stderr
    assert restored.event("job.succeeded")["backup"] == billing_artifact.removesuffix(".zst")
    with sqlite3.connect(target) as connection:
        assert connection.execute("SELECT count(*) FROM notes").fetchone()[0] == 7

    # Without a source or BACKUP_NAME, a bucket with two sets is a usage error that names them.
    bare = {**bucket_env, "BACKUP_SOURCE": "", "BACKUP_DIR": str(tmp_path / "bare")}
    refused = run_worker(["restore", "--from-s3", "--latest", "--to", str(tmp_path / "x.db")], bare, cwd=tmp_path)
    assert refused.code == 2 and "app (sqlite)" in refused.stderr and "billing (sqlite)" in refused.stderr
    named = run_worker(["restore", "--from-s3", "--latest", "--source", "billing", "--to", str(tmp_path / "y.db")], bare, cwd=tmp_path)
    assert named.code == 0, named.stderr


def test_sync_uploads_only_the_sets_own_backups(tmp_path: Path, make_s3) -> None:
    directory = tmp_path / "backups"
    take_backups(directory, make_app_db(tmp_path / "app.db"), 1)
    take_backups(directory, make_app_db(tmp_path / "other.db"), 1)
    remote = make_s3()
    uploaded = offsite.sync(LocalDestination(directory), remote, threading.Event(), backup_set=BackupSet("app", "sqlite"))
    assert len(uploaded) == 1 and uploaded[0].startswith("app-")
    assert [b.id for b in list_backups(remote)[0]] == uploaded


def test_while_uploads_fail_local_retention_still_runs_and_warns_about_what_was_never_uploaded(tmp_path: Path, make_s3) -> None:
    database = make_app_db(tmp_path / "app.db")
    down = make_s3(endpoint=f"http://127.0.0.1:{free_port()}", retry=FAST)
    down.client.meta.config.retries = {"total_max_attempts": 1}
    settings = pipeline.BackupSettings(tmp_path / "backups", 3, retention.Policy(0, 1), remote=down,
                                       remote_policy=retention.Policy(None, 1))
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            with pytest.raises(UploadError) as raised:
                pipeline.run_cycle(SqliteSource(database), settings, threading.Event())
            assert raised.value.stage == "upload"
            time.sleep(1.1)
    kept, _ = list_backups(LocalDestination(tmp_path / "backups"))
    assert len(kept) == 1  # keep_min: the newest verified backup stays, the older ones did not fill the disk
    warned = [entry for entry in logs if entry["event"] == "retention.delete_not_offsite"]
    assert len(warned) == 2 and all(entry["log_level"] == "warning" for entry in warned)
    assert raised.value.fields["pruned"] == [warned[-1]["backup"]]


def test_a_killed_multipart_upload_is_aborted_by_the_next_sync_and_other_prefixes_are_untouched(
        tmp_path: Path, make_s3, s3_client, bucket, local_backups, s3_server: str) -> None:
    local, backups = local_backups
    ours = s3_client.create_multipart_upload(Bucket=bucket, Key=f"prod/app/{backups[0].artifact}")["UploadId"]
    s3_client.upload_part(Bucket=bucket, Key=f"prod/app/{backups[0].artifact}", UploadId=ours, PartNumber=1, Body=b"x" * 1024)
    other_set = s3_client.create_multipart_upload(Bucket=bucket, Key="prod/app/staging-20261122T020000Z.sqlite.zst")["UploadId"]
    other_prefix = s3_client.create_multipart_upload(Bucket=bucket, Key=f"other/{backups[0].artifact}")["UploadId"]
    remote = make_s3(prefix="prod/app")

    kept = offsite.sync(local, remote, threading.Event(), backup_set=BackupSet("app", "sqlite"),
                        stale_upload_age=timedelta(days=365 * 100))  # none is that old: nothing aborted
    assert len(kept) == 3
    assert ours in {u["UploadId"] for u in s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}

    # A real server says when an upload started (to the second): ours becomes older than the threshold for real,
    # a new one stays younger. 3 s against 2 s leaves a second for the server's rounding either way.
    time.sleep(3.1)
    fresh = s3_client.create_multipart_upload(Bucket=bucket, Key=f"prod/app/{backups[1].artifact}")["UploadId"]
    offsite.sync(local, remote, threading.Event(), backup_set=BackupSet("app", "sqlite"), stale_upload_age=timedelta(seconds=2))
    left = {u["UploadId"] for u in s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
    assert ours not in left and {other_set, other_prefix} <= left
    if s3_server != "moto":  # moto reports every upload as started in 2010: to it, none is young
        assert fresh in left


def test_a_clock_off_by_more_than_fifteen_minutes_gets_its_own_hint(bucket: str, make_s3, flaky_proxy, tmp_path: Path) -> None:
    flaky_proxy.fail, flaky_proxy.fail_status, flaky_proxy.fail_code = 100, 403, "RequestTimeTooSkewed"
    remote = make_s3(endpoint=flaky_proxy.url)
    with pytest.raises(ListError) as raised:
        remote.list()
    message = str(raised.value)
    assert "clock is off by more than 15 minutes" in message and "NTP" in message and "denied" not in message


def test_listing_reading_and_deleting_stop_when_the_worker_is_stopping(bucket: str, make_s3, flaky_proxy, local_backups) -> None:
    local, backups = local_backups
    remote = make_s3(endpoint=flaky_proxy.url)
    offsite.sync(local, remote, threading.Event())
    stop = threading.Event()
    stop.set()
    seen = len(flaky_proxy.requests)
    for call in (lambda: remote.list(cancel=stop), lambda: remote.read(backups[0].manifest_key, cancel=stop),
                 lambda: remote.delete(backups[0].artifact, cancel=stop), lambda: list_backups(remote, cancel=stop)):
        with pytest.raises(Cancelled):
            call()
    assert len(flaky_proxy.requests) == seen  # nothing was even sent
    assert len(list_backups(remote)[0]) == 3
