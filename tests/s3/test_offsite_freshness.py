"""Freshness means off-site when a bucket is configured: `status`, `/healthz` and `/metrics` judge the newest sound
backup that is also in the bucket, so a worker whose uploads fail for a day is stale however fresh its local
backups are; both ages are reported. A bucket that cannot be listed makes the off-site age unknown (unhealthy),
and never holds a scrape up."""

from datetime import datetime, timedelta, timezone
import json
from pathlib import Path
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import run_worker
from tests.e2e.test_selection_cli import move_in_time
from tests.notify.conftest import free_port
from tests.notify.test_health import get, healthz, running
from .conftest import free_port as dead_port
from .test_cli_s3 import s3_env  # noqa: F401  (a fixture)

DAY = 86400


@pytest.fixture
def uploads_failing(tmp_path: Path, s3_env: dict[str, str], s3_client, bucket: str) -> dict[str, str]:
    """The bucket's newest backup is two days old (its last upload that worked), the volume's is fresh: every
    upload since then failed."""
    directory = tmp_path / "backups"
    first = run_worker(["backup", "--no-upload"], s3_env, cwd=tmp_path)
    assert first.code == 0, first.stderr
    old = move_in_time(directory, first.event("job.succeeded")["artifact"], datetime.now(timezone.utc) - timedelta(days=2))
    for name in (old, f"{old}.json"):  # what the upload two days ago put there
        s3_client.upload_file(str(directory / name), bucket, f"{s3_env['S3_PREFIX']}/{name}")
    down = {**s3_env, "S3_ENDPOINT_URL": f"http://127.0.0.1:{dead_port()}"}
    failed = run_worker(["backup"], down, cwd=tmp_path)
    assert failed.code == 1 and failed.event("job.failed")["stage"] == "upload"
    return {"old": old.removesuffix(".zst"), "new": failed.event("job.failed")["artifact"].removesuffix(".zst")}


def test_status_is_stale_when_uploads_failed_for_longer_than_the_limit(tmp_path: Path, s3_env, uploads_failing) -> None:
    report_run = run_worker(["status", "--json"], s3_env, cwd=tmp_path)
    assert report_run.code == 1, report_run.stderr
    report = json.loads(report_run.stdout)
    assert report["healthy"] is False and report["offsite"] is True
    assert report["newest_backup"] == uploads_failing["new"] and 0 <= report["newest_backup_age_s"] < 600
    assert report["newest_offsite_backup"] == uploads_failing["old"]
    assert 2 * DAY - 600 <= report["newest_offsite_backup_age_s"] <= 2 * DAY + 600
    row = report["sets"]["app"]
    assert row["newest_backup_age_s"] == report["newest_backup_age_s"] and row["status"] == "stale"
    assert row["newest_offsite_backup_age_s"] == report["newest_offsite_backup_age_s"]

    text = run_worker(["status"], s3_env, cwd=tmp_path)
    assert text.code == 1
    assert f"off-site: {uploads_failing['old']} (2d00h old)" in text.stdout
    assert ("health: STALE: the newest off-site copy is older than 26h while the volume has a newer one "
            "(uploads are failing)") in text.stdout

    uploaded = run_worker(["backup"], s3_env, cwd=tmp_path)  # the bucket is back: the next cycle catches up
    assert uploaded.code == 0, uploaded.stderr
    healthy = run_worker(["status", "--json"], s3_env, cwd=tmp_path)
    assert healthy.code == 0 and json.loads(healthy.stdout)["newest_offsite_backup_age_s"] < 600


def test_status_with_a_bucket_that_cannot_be_listed_is_unhealthy_and_says_why(tmp_path: Path, s3_env) -> None:
    assert run_worker(["backup"], s3_env, cwd=tmp_path).code == 0
    down = {**s3_env, "S3_ENDPOINT_URL": f"http://127.0.0.1:{dead_port()}"}
    began = time.monotonic()
    result = run_worker(["status", "--json"], down, cwd=tmp_path)
    assert time.monotonic() - began < 20
    report = json.loads(result.stdout)
    assert result.code == 1 and report["healthy"] is False and report["newest_offsite_backup_age_s"] is None
    assert report["sets"]["app"]["status"] == "offsite_unknown" and "cannot" in report["offsite_error"]
    assert 0 <= report["newest_backup_age_s"] < 600
    assert "off-site: unknown (" in run_worker(["status"], down, cwd=tmp_path).stdout


def first_healthz(port: int, timeout: float = 20) -> tuple[int, dict, float]:
    """Wait for the health server to listen; return its first /healthz answer and how long that took."""
    deadline = time.monotonic() + timeout
    while True:
        began = time.monotonic()
        try:
            code, document = healthz(port)
            return code, document, time.monotonic() - began
        except OSError:
            assert time.monotonic() < deadline, "the health server did not start"
            time.sleep(0.2)


def metrics(port: int) -> dict[tuple[str, tuple], float]:
    code, body = get(port, "/metrics")
    assert code == 200
    families = text_string_to_metric_families(body.decode())
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_healthz_and_metrics_judge_the_off_site_copy(tmp_path: Path, s3_env, uploads_failing) -> None:
    port = free_port()
    with running({**s3_env, "HEALTH_PORT": str(port)}, tmp_path) as process:  # local backup fresh: no catch-up
        code, document, _ = first_healthz(port)
        deadline = time.monotonic() + 20
        while document["newest_offsite_backup"] is None and time.monotonic() < deadline:
            time.sleep(0.3)
            code, document = healthz(port)
        assert code == 503 and document["status"] == "stale" and document["offsite"] is True
        assert 0 <= document["newest_backup_age_s"] < 600 and document["newest_backup"]["id"] == uploads_failing["new"]
        assert document["newest_offsite_backup"]["id"] == uploads_failing["old"]
        assert 2 * DAY - 600 <= document["newest_offsite_backup_age_s"] <= 2 * DAY + 600
        assert document["sets"]["app"]["newest_offsite_backup_age_s"] == document["newest_offsite_backup_age_s"]
        samples = metrics(port)
        assert 2 * DAY - 600 <= samples[("backup_worker_newest_offsite_backup_age_seconds", (("set", "app"),))] <= 2 * DAY + 600
        assert samples[("backup_worker_newest_backup_age_seconds", (("set", "app"),))] < 600
        assert samples[("backup_worker_backup_fresh", (("set", "app"),))] == 0
        assert process.poll() is None


def test_healthz_with_a_bucket_that_cannot_be_listed_is_503_offsite_unknown_and_answers_at_once(
        tmp_path: Path, s3_env) -> None:
    assert run_worker(["backup"], s3_env, cwd=tmp_path).code == 0  # fresh, and in the bucket
    port = free_port()
    down = {**s3_env, "S3_ENDPOINT_URL": f"http://127.0.0.1:{dead_port()}", "HEALTH_PORT": str(port)}
    with running(down, tmp_path):
        code, document, took = first_healthz(port)
        assert took < 3  # the first scrape waits WAIT_S at most for the first listing
        deadline = time.monotonic() + 30
        while document.get("offsite_error") is None or "not answered" in document["offsite_error"]:
            assert time.monotonic() < deadline
            time.sleep(0.3)
            began = time.monotonic()
            code, document = healthz(port)
            assert time.monotonic() - began < 1  # later scrapes never wait on the bucket
        assert code == 503 and document["status"] == "offsite_unknown"
        assert document["newest_offsite_backup_age_s"] is None and 0 <= document["newest_backup_age_s"] < 600
        assert ("backup_worker_newest_offsite_backup_age_seconds", (("set", "app"),)) not in metrics(port)
        assert metrics(port)[("backup_worker_backup_fresh", (("set", "app"),))] == 0
