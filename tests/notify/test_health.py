"""`/healthz` and `/metrics` over HTTP from a real `python -m worker run`, and the freshness rules behind them."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
import json
from pathlib import Path
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from jobs.backups import Backup
from tests.conftest import make_app_db
from tests.e2e.test_cli import read_events
from tests.notify.conftest import free_port
from worker.monitoring.freshness import evaluate


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def healthz(port: int) -> tuple[int, dict]:
    code, body = get(port, "/healthz")
    return code, json.loads(body)


def wait_for_health(port: int, wanted: int, timeout: float) -> dict:
    """Poll /healthz until it answers `wanted`; return its document."""
    deadline = time.monotonic() + timeout
    code, document = healthz(port)
    while code != wanted and time.monotonic() < deadline:
        time.sleep(0.3)
        code, document = healthz(port)
    assert code == wanted, document
    return document


@contextmanager
def running(env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen]:
    """Run `python -m worker run`; stop it with SIGTERM afterwards and check it stopped cleanly."""
    process = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env, cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield process
        process.send_signal(signal.SIGTERM)
        assert process.wait(12) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_healthz_is_503_before_any_backup_200_after_one_and_503_once_it_is_stale(tmp_path: Path, worker, worker_env) -> None:
    port = free_port()
    late = tmp_path / "late.db"  # does not exist yet: the catch-up backup at start fails
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{late}", "HEALTH_PORT": str(port), "FRESHNESS_LIMIT": "15s"}
    with running(env, tmp_path) as process:
        failed = read_events(process, "job.failed", 30)[-1]
        code, document = healthz(port)
        for _ in range(50):  # the outcome is logged a moment before the catalog has it
            if document["jobs"]:
                break
            time.sleep(0.1)
            code, document = healthz(port)
        assert code == 503 and document["status"] == "stale" and document["newest_backup"] is None
        assert document["freshness_limit_s"] == 15
        assert document["jobs"]["backup"]["outcome"] == "failed"
        assert document["jobs"]["backup"]["stage"] == failed["stage"] and document["jobs"]["backup"]["reason"] == failed["reason"]
        assert document["jobs"]["backup"]["finished_at"].endswith("Z")
        assert document["disk"]["path"] == env["BACKUP_DIR"] and 0 <= document["disk"]["used_percent"] <= 100

        make_app_db(late)
        manual = worker("backup", "--no-upload", env={"BACKUP_SOURCE": env["BACKUP_SOURCE"]})  # another process
        assert manual.code == 0, manual.stderr
        artifact = manual.event("job.succeeded")["artifact"]
        backup_id = json.loads((Path(env["BACKUP_DIR"]) / f"{artifact}.json").read_text())["id"]
        fresh = wait_for_health(port, 200, 15)
        assert fresh["status"] == "ok" and fresh["newest_backup"]["id"] == backup_id
        assert 0 <= fresh["newest_backup"]["age_s"] <= 15 and fresh["newest_backup"]["created_at"].endswith("Z")
        assert fresh["jobs"]["backup"]["outcome"] == "succeeded" and fresh["jobs"]["backup"]["reason"] is None

        stale = wait_for_health(port, 503, 40)
        assert stale["status"] == "stale" and stale["newest_backup"]["id"] == backup_id
        assert stale["newest_backup"]["age_s"] >= 15


def test_metrics_parse_as_prometheus_text_after_a_backup(tmp_path: Path, worker_env) -> None:
    port = free_port()
    with running({**worker_env, "HEALTH_PORT": str(port)}, tmp_path) as process:
        succeeded = read_events(process, "job.succeeded", 30)[-1]
        code, document = healthz(port)  # this process's own backup refreshes the view at once
        assert code == 200 and document["status"] == "ok" and document["sets"]["app"]["status"] == "ok"
        # The outcome event is logged just before listeners hear of the run: poll briefly for the counter.
        deadline = time.monotonic() + 15
        while True:
            code, body = get(port, "/metrics")
            assert code == 200
            if b'outcome="succeeded"} 1.0' in body or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert get(port, "/nothing")[0] == 404
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert families["backup_worker_newest_backup_age_seconds"].type == "gauge"
    assert 0 <= samples[("backup_worker_newest_backup_age_seconds", (("set", "app"),))] < 60
    assert samples[("backup_worker_newest_backup_size_bytes", (("set", "app"),))] == succeeded["size"]
    assert families["backup_worker_job_runs"].type == "counter"
    assert samples[("backup_worker_job_runs_total", (("job", "backup"), ("outcome", "succeeded")))] == 1
    assert samples[("backup_worker_job_runs_total", (("job", "backup"), ("outcome", "failed")))] == 0
    assert samples[("backup_worker_job_last_duration_seconds", (("job", "backup"),))] == succeeded["duration_s"]
    assert 0 < samples[("backup_worker_disk_used_ratio", ())] <= 1
    assert samples[("backup_worker_backup_fresh", (("set", "app"),))] == 1


def test_a_busy_health_port_is_logged_and_backups_go_on(tmp_path: Path, worker_env) -> None:
    holder = socket.socket()
    holder.bind(("0.0.0.0", 0))
    holder.listen(1)
    try:
        env = {**worker_env, "HEALTH_PORT": str(holder.getsockname()[1])}
        with running(env, tmp_path) as process:
            events = read_events(process, "job.succeeded", 30)
        unavailable = next(e for e in events if e["event"] == "health.unavailable")
        assert unavailable["level"] == "error" and "HEALTH_PORT" in unavailable["hint"]
    finally:
        holder.close()


def test_a_full_volume_is_warned_about_after_a_backup_and_in_status(worker) -> None:
    result = worker("backup", "--no-upload", env={"DISK_WARN_PERCENT": "1"})
    assert result.code == 0
    status = json.loads(worker("status", "--json", env={"DISK_WARN_PERCENT": "1"}).stdout)
    used = status["disk"]["used_percent"]
    assert status["disk"]["warn_percent"] == 1
    if used > 1:  # any real volume; an almost empty one would be under the limit
        assert result.event("disk.nearly_full")["level"] == "warning"
        assert "DISK_WARN_PERCENT=1" in status["disk"]["warning"]
    calm = json.loads(worker("status", "--json").stdout)
    assert calm["disk"]["warning"] is None or used > 80


def backup(name: str, age: timedelta, now: datetime, verified: bool = True) -> Backup:
    created = now - age
    stamp = created.strftime("%Y%m%dT%H%M%SZ")
    return Backup(id=f"{name}-{stamp}.sqlite", artifact=f"{name}-{stamp}.sqlite.zst", created_at=created, size=10,
                  sha256="0" * 64, verified=verified, manifest={"created_at": created.isoformat()})


def test_freshness_counts_only_the_configured_sets_and_every_one_must_be_fresh() -> None:
    now = datetime(2026, 11, 22, 12, tzinfo=timezone.utc)
    limit = timedelta(hours=26)
    app, cache, other = backup("app", timedelta(hours=1), now), backup("cache", timedelta(hours=30), now), backup("other", timedelta(0), now)
    assert evaluate([app, other], ["app"], limit, now).fresh
    assert not evaluate([other], ["app"], limit, now).fresh  # another set's backup is never counted
    both = evaluate([app, cache], ["app", "cache"], limit, now)
    assert not both.fresh and both.deciding.name == "cache"  # the stalest set decides
    missing = evaluate([app], ["app", "cache"], limit, now)
    assert not missing.fresh and missing.deciding.name == "cache" and missing.deciding.describe() is None
    unverified = evaluate([backup("app", timedelta(0), now, verified=False)], ["app"], limit, now)
    assert not unverified.fresh
    assert not evaluate([], [], limit, now).fresh  # before the first backup


def test_a_backup_dated_in_the_future_keeps_no_set_fresh_and_is_reported() -> None:
    """A backup written while the clock was a year ahead must not keep /healthz at 200 for days."""
    now = datetime(2026, 11, 22, 12, tzinfo=timezone.utc)
    ahead, stale = backup("app", -timedelta(days=365), now), backup("app", timedelta(hours=30), now)
    state = evaluate([ahead, stale], ["app"], timedelta(hours=26), now)
    assert not state.fresh
    assert state.deciding.newest == stale and state.deciding.future == (ahead.id,)
    assert not evaluate([ahead], ["app"], timedelta(hours=26), now).fresh
