"""`python -m worker backup` and `run` with real local receivers: what they are sent, and that a receiver that
is down or hangs changes nothing about the job (outcome, exit code) and delays nothing beyond a fixed bound."""

import json
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time

from jobs.errors import JobError
from worker.catalog import Catalog
from worker.config import load_config
from worker.monitoring.dispatch import watching
from worker.runs import run_job
from tests.e2e.test_cli import read_events

TOKEN = "T0000/B0000/XXXXsecretXXXX"
PING_KEY = "5bf0a2b2-secret-ping-key"


def notify_env(webhook: str, ping: str, **more: str) -> dict[str, str]:
    return {"NOTIFY_WEBHOOK_URL": f"{webhook}/services/{TOKEN}", "HEALTHCHECK_PING_URL": f"{ping}/{PING_KEY}", **more}


def missing_source(tmp_path: Path) -> dict[str, str]:
    return {"BACKUP_SOURCE": f"sqlite:///{tmp_path / 'missing.db'}"}


def test_a_failed_backup_posts_its_outcome_and_pings_start_then_fail(tmp_path: Path, worker, receiver) -> None:
    result = worker("backup", "--no-upload", env={**notify_env(receiver.url, receiver.url), **missing_source(tmp_path)})
    assert result.code == 1
    failed = result.event("job.failed")
    receiver.wait_for(3)
    webhooks = [r for r in receiver.requests if r.path.startswith("/services/")]
    pings = [r.path for r in receiver.requests if not r.path.startswith("/services/")]
    assert pings == [f"/{PING_KEY}/start", f"/{PING_KEY}/fail"]
    assert len(webhooks) == 1 and webhooks[0].method == "POST" and webhooks[0].path == f"/services/{TOKEN}"
    assert webhooks[0].headers["Content-Type"] == "application/json"
    body = webhooks[0].json()
    assert body["job"] == "backup" and body["outcome"] == "failed" and body["run_id"] == failed["run_id"]
    assert body["stage"] == failed["stage"] and body["reason"] == failed["reason"]
    assert isinstance(body["duration_s"], float) and body["host"] and body["backup_set"] == "missing"
    assert body["text"] == body["content"]
    assert body["text"].startswith(f"backup of missing failed on {body['host']} at stage {failed['stage']}: ")
    fail_body = next(r for r in receiver.requests if r.path.endswith("/fail")).body.decode()
    assert failed["reason"] in fail_body
    assert TOKEN not in result.stdout + result.stderr and PING_KEY not in result.stdout + result.stderr


def test_a_success_is_posted_with_notify_on_all_and_pings_start_then_success(tmp_path: Path, worker, receiver) -> None:
    result = worker("backup", "--no-upload", env=notify_env(receiver.url, receiver.url, NOTIFY_ON="all"))
    assert result.code == 0, result.stderr
    succeeded = result.event("job.succeeded")
    receiver.wait_for(3)
    body = next(r for r in receiver.requests if r.path.startswith("/services/")).json()
    assert body["outcome"] == "succeeded" and body["run_id"] == succeeded["run_id"] and body["stage"] is None
    assert body["artifact"] == succeeded["artifact"] and body["size"] == succeeded["size"]
    assert body["raw_size"] == succeeded["raw_size"] and body["backup_set"] == "app"
    assert body["text"] == body["content"] and succeeded["artifact"] in body["text"] and " succeeded on " in body["text"]
    pings = [r.path for r in receiver.requests if not r.path.startswith("/services/")]
    assert pings == [f"/{PING_KEY}/start", f"/{PING_KEY}"]


def test_a_success_is_not_posted_by_default_but_still_pings(worker, receiver) -> None:
    result = worker("backup", "--no-upload", env=notify_env(receiver.url, receiver.url))
    assert result.code == 0
    receiver.wait_for(2)
    time.sleep(0.5)
    assert receiver.paths() == [f"/{PING_KEY}/start", f"/{PING_KEY}"]


def test_a_refusing_receiver_only_warns_and_changes_no_outcome_or_exit_code(tmp_path: Path, worker, refusing_url) -> None:
    began = time.monotonic()
    ok = worker("backup", "--no-upload", env=notify_env(refusing_url, refusing_url, NOTIFY_ON="all"), timeout=60)
    assert ok.code == 0 and ok.event("job.succeeded")
    warning = ok.event("notify.failed")
    assert warning["level"] == "warning" and warning["problem"].startswith("cannot connect")
    assert warning["receiver"] == refusing_url + "/***" and TOKEN not in ok.stdout + ok.stderr
    failed = worker("backup", "--no-upload", env={**notify_env(refusing_url, refusing_url), **missing_source(tmp_path)})
    assert failed.code == 1 and failed.event("job.failed")
    assert time.monotonic() - began < 40  # two commands; a bound, not a speed


def test_a_hanging_receiver_delays_a_backup_command_by_a_bounded_few_seconds(tmp_path: Path, worker, hanging) -> None:
    began = time.monotonic()
    result = worker("backup", "--no-upload", env=notify_env(hanging.url, hanging.url, NOTIFY_ON="all"), timeout=60)
    elapsed = time.monotonic() - began
    assert result.code == 0 and result.event("job.succeeded")["duration_s"] < 10
    assert elapsed < 20  # the backup itself, plus at most the 5 s drain
    hanging.wait_for(1)
    failed = worker("backup", "--no-upload", env={**notify_env(hanging.url, hanging.url), **missing_source(tmp_path)}, timeout=60)
    assert failed.code == 1 and any(line.startswith("backup failed") for line in failed.stderr.splitlines())


def test_a_hanging_receiver_never_delays_sigterm(tmp_path: Path, worker_env, hanging) -> None:
    env = {**worker_env, **notify_env(hanging.url, hanging.url, NOTIFY_ON="all")}
    process = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        read_events(process, "job.succeeded", 30)  # the catch-up backup; its messages now wait on the receiver
        hanging.wait_for(1)
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(12) == 0
        assert time.monotonic() - began < 10
    finally:
        if process.poll() is None:
            process.kill()
    tail = [json.loads(line) for line in process.stdout.read().splitlines() if line.startswith("{")]
    assert "worker.stopped" in [e["event"] for e in tail]


def test_config_masks_the_webhook_and_ping_urls(worker) -> None:
    shown = worker("config", env=notify_env("https://hooks.slack.com", "https://hc-ping.com"))
    assert shown.code == 0
    assert "NOTIFY_WEBHOOK_URL=https://hooks.slack.com/***" in shown.stdout
    assert "HEALTHCHECK_PING_URL=https://hc-ping.com/***" in shown.stdout
    assert TOKEN not in shown.stdout + shown.stderr and PING_KEY not in shown.stdout + shown.stderr


def test_a_failing_cleanup_is_notified_and_a_successful_one_is_not(tmp_path: Path, receiver) -> None:
    config = load_config({"BACKUP_DIR": str(tmp_path / "backups"), **notify_env(receiver.url, receiver.url)}, cwd=tmp_path)

    def fails() -> None:
        raise JobError("the rule /app/tmp/** cannot be read: permission denied; fix its permissions", stage="scan")

    with watching(config, threading.Event(), []):
        assert run_job("cleanup", Catalog(None), lambda: {"files": 0}).ok
        outcome = run_job("cleanup", Catalog(None), fails)
    assert outcome.outcome == "failed"  # unchanged by the notifier
    (request,) = receiver.wait_for(1)
    body = request.json()
    assert body["job"] == "cleanup" and body["outcome"] == "failed" and body["stage"] == "scan"
    assert body["run_id"] == outcome.run_id and body["backup_set"] is None
    assert body["text"].startswith("cleanup failed on ") and "permission denied" in body["text"]
