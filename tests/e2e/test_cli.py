"""`python -m worker …` run as a user would, with its JSON log lines parsed."""

import json
import os
from pathlib import Path
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, make_app_db


def test_backup_logs_a_start_and_exactly_one_outcome_with_the_contract_fields(worker) -> None:
    result = worker("backup", "--no-upload")
    assert result.code == 0, result.stderr
    started = [e for e in result.events if e["event"] == "job.started"]
    outcomes = [e for e in result.events if e["event"] in ("job.succeeded", "job.failed", "job.skipped")]
    assert len(started) == 1 and len(outcomes) == 1
    outcome = outcomes[0]
    assert outcome["event"] == "job.succeeded" and outcome["job"] == "backup"
    assert outcome["run_id"] == started[0]["run_id"]
    assert isinstance(outcome["duration_s"], float)
    assert outcome["artifact"].endswith(".sqlite.zst") and outcome["size"] > 0 and outcome["raw_size"] > outcome["size"]
    assert all(set(e) >= {"event", "level", "ts"} for e in result.events)


def test_list_json_shows_manifests_with_their_location_newest_first(worker) -> None:
    for _ in range(2):
        assert worker("backup", "--no-upload").code == 0
    result = worker("list", "--json")
    assert result.code == 0
    rows = json.loads(result.stdout)
    assert len(rows) == 2 and all(row["location"] == "local" for row in rows)
    assert rows[0]["created_at"] >= rows[1]["created_at"]
    assert {"id", "created_at", "source", "format", "size", "sha256", "raw_size", "verified", "versions"} <= set(rows[0])


def test_status_is_healthy_after_a_backup_and_unhealthy_without_one(worker) -> None:
    empty = worker("status", "--json")
    assert empty.code == 1 and json.loads(empty.stdout)["healthy"] is False
    assert worker("backup", "--no-upload").code == 0
    result = worker("status", "--json")
    report = json.loads(result.stdout)
    assert result.code == 0 and report["healthy"] is True
    assert report["jobs"]["backup"]["outcome"] == "succeeded"
    assert report["jobs"]["backup"]["started_at"].endswith("Z")
    assert report["next_runs"]["backup"].endswith(("02:00:00+00:00",))
    stale = worker("status", env={"FRESHNESS_LIMIT": "0s"})
    assert stale.code == 1 and "STALE" in stale.stdout


def test_config_masks_secrets_and_names_every_bad_variable(worker) -> None:
    shown = worker("config", env={"CATALOG_URL": "postgresql://cat:topsecret@db/catalog", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI",
                                  "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY", "S3_BUCKET": "b"})
    assert shown.code == 0
    assert "topsecret" not in shown.stdout + shown.stderr and "wJalrXUtnFEMI" not in shown.stdout + shown.stderr
    assert "CATALOG_URL=postgresql://cat:***@db/catalog" in shown.stdout
    bad = worker("config", env={"BACKUP_SCHEDULE": "0 2 * *", "BACKUP_KEEP_MIN": "0", "BACKUP_TIMEZONE": "Mars/Base",
                                "FRESHNESS_LIMIT": "soon", "BACKUP_SOURCE": "mysql://u:pw@h/db"})
    assert bad.code == 2
    for name in ("BACKUP_SCHEDULE", "BACKUP_KEEP_MIN", "BACKUP_TIMEZONE", "FRESHNESS_LIMIT", "BACKUP_SOURCE"):
        assert name in bad.stderr
    assert "Traceback" not in bad.stderr and "pw@" not in bad.stderr


def test_remote_options_without_a_bucket_are_usage_errors(worker) -> None:
    for args in (["list", "--remote"], ["verify", "--remote"], ["restore", "--from-s3", "--to", "x.db"]):
        result = worker(*args)
        assert result.code == 2 and "S3_BUCKET" in result.stderr, args


def test_backup_without_a_source_is_a_usage_error(worker) -> None:
    result = worker("backup", env={"BACKUP_SOURCE": ""})
    assert result.code == 2 and "BACKUP_SOURCE" in result.stderr


def test_prune_dry_run_prints_the_plan_and_deletes_nothing(tmp_path: Path, worker) -> None:
    for _ in range(3):
        assert worker("backup", "--no-upload").code == 0
    policy = {"BACKUP_RETENTION_DAYS": "0", "BACKUP_KEEP_MIN": "1"}
    plan = worker("prune", "--dry-run", env=policy)
    assert plan.code == 0
    rows = [line.split() for line in plan.stdout.splitlines() if line.startswith("  ")]
    assert [row[0] for row in rows] == ["keep", "delete", "delete"] and "dry run" in plan.stdout
    assert len(list((tmp_path / "backups").glob("*.zst"))) == 3
    assert worker("prune", env=policy).code == 0
    assert len(list((tmp_path / "backups").glob("*.zst"))) == 1


def test_a_manual_backup_never_overlaps_a_running_one(tmp_path: Path, worker) -> None:
    sys.path.insert(0, str(ROOT))
    from worker.lock import for_set

    with for_set(tmp_path / "backups", "app"):
        result = worker("backup", "--no-upload")
    assert result.code == 1
    assert result.event("job.skipped")["reason"].startswith("another backup is running")
    assert list((tmp_path / "backups").glob("*.zst")) == []


def read_events(process: subprocess.Popen, until: str, timeout: float) -> list[dict]:
    """Read JSON lines from the worker's stdout until an event named `until` arrives."""
    events = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        event = json.loads(line)
        events.append(event)
        if event.get("event") == until:
            return events
    raise AssertionError(f"no {until!r} within {timeout} s; saw {[e.get('event') for e in events]}")


def test_run_catches_up_at_start_survives_a_failing_job_and_stops_on_sigterm(tmp_path: Path, worker_env) -> None:
    env = {**worker_env, "BACKUP_SCHEDULE": "* * * * *"}
    process = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        events = read_events(process, "job.succeeded", 30)
        started = next(e for e in events if e["event"] == "worker.started")
        assert started["catch_up"] is True and "backup" in started["next_runs"]
        assert len(list((tmp_path / "backups").glob("*.sqlite.zst.json"))) == 1

        # The database disappears: the next scheduled backup fails, the worker lives on.
        Path(worker_env["BACKUP_SOURCE"].removeprefix("sqlite:///")).rename(tmp_path / "moved.db")
        failed = read_events(process, "job.failed", 75)[-1]
        assert failed["stage"] == "snapshot" and "does not exist" in failed["reason"]
        assert process.poll() is None

        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(12) == 0
        assert time.monotonic() - began < 10
    finally:
        if process.poll() is None:
            process.kill()
    tail = [json.loads(line) for line in process.stdout.read().splitlines() if line.startswith("{")]
    assert "worker.stopped" in [e["event"] for e in tail]


def test_run_with_a_recent_backup_does_not_catch_up(tmp_path: Path, worker, worker_env) -> None:
    assert worker("backup", "--no-upload").code == 0
    process = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=worker_env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = read_events(process, "worker.started", 20)[-1]
        assert started["catch_up"] is False
        assert started["next_runs"]["backup"].endswith("02:00:00+00:00")
        process.send_signal(signal.SIGINT)
        assert process.wait(12) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_sigterm_during_a_backup_stops_within_ten_seconds_and_leaves_no_backup(tmp_path: Path, worker_env) -> None:
    db = tmp_path / "locked.db"
    make_app_db(db, wal=False)
    app = sqlite3.connect(db, isolation_level=None)
    app.execute("BEGIN EXCLUSIVE")  # the backup is mid-way (waiting in its snapshot) when SIGTERM comes
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{db}"}
    process = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        read_events(process, "backup.snapshot", 30)
        time.sleep(1.0)
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(12) == 0
        assert time.monotonic() - began < 10
    finally:
        app.close()
        if process.poll() is None:
            process.kill()
    tail = [json.loads(line) for line in process.stdout.read().splitlines() if line.startswith("{")]
    failed = next(e for e in tail if e["event"] == "job.failed")
    assert failed["stage"] == "cancelled" and "stopping" in failed["reason"]
    backups = tmp_path / "backups"
    assert list(backups.glob("*.zst")) == [] and list(backups.glob("*.json")) == []
    assert [p for p in backups.iterdir() if p.name.startswith(".tmp-")] == []


def test_a_catalog_that_cannot_open_only_warns_and_the_backup_still_succeeds(worker) -> None:
    # Nothing listens on port 1 (and the driver module may not even be installed): history is lost, not the backup.
    result = worker("backup", "--no-upload", env={"CATALOG_URL": "postgresql+psycopg://u:pw@127.0.0.1:1/x"})
    assert result.code == 0, result.stderr
    assert result.event("catalog.unavailable")["level"] == "warning"
    assert "pw@" not in result.stdout + result.stderr


def test_a_catalog_url_with_an_unknown_driver_is_a_config_error_with_the_password_masked(worker) -> None:
    result = worker("backup", "--no-upload", env={"CATALOG_URL": "mysql+nodriver://u:pw@127.0.0.1:1/x"})
    assert result.code == 2 and "CATALOG_URL" in result.stderr and "nodriver" in result.stderr
    assert "pw@" not in result.stdout + result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("url", ["postgresql://u:pw9@127.0.0.1:notaport/x", "postgresql://u:pw9@h1:5432,h2:5433/x",
                                 "postgresql+psycopg://u:pw9@127.0.0.1:99999/x", "sqlite:///{dir}/c.db?x=1&password=pw9"])
def test_a_catalog_url_that_cannot_be_read_is_a_config_error_at_start_never_a_traceback(worker, tmp_path: Path, url: str) -> None:
    result = worker("backup", "--no-upload", env={"CATALOG_URL": url.format(dir=tmp_path)})
    if url.startswith("sqlite"):  # a readable URL: the password in its query is masked wherever it is shown
        assert result.code == 0 and "pw9" not in result.stdout + result.stderr
        shown = worker("config", env={"CATALOG_URL": url.format(dir=tmp_path)})
        assert shown.code == 0 and "&password=***" in shown.stdout and "pw9" not in shown.stdout + shown.stderr
        return
    assert result.code == 2 and "CATALOG_URL" in result.stderr and "a number from 1 to 65535" in result.stderr
    assert "pw9" not in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "backups").exists() or not list((tmp_path / "backups").glob("*.zst"))


PEAK_RSS = ("import resource, sys\nfrom worker.start import main\ncode = main(sys.argv[1:])\n"
            "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(code)")


def test_list_passes_over_a_huge_planted_manifest_at_little_cost_and_shows_the_other_backups(
        worker, worker_env, tmp_path: Path) -> None:
    def listing() -> tuple[subprocess.CompletedProcess[str], int]:
        done = subprocess.run([sys.executable, "-c", PEAK_RSS, "list", "--json"], env=worker_env, cwd=tmp_path,
                              text=True, capture_output=True, timeout=120)
        return done, int(done.stderr.rsplit("peak_rss_kib", 1)[1])

    assert worker("backup", "--no-upload").code == 0
    _, baseline = listing()
    backups = tmp_path / "backups"
    (good,) = backups.glob("*.sqlite.zst")
    planted = backups / good.name.replace(good.name[4:12], "20991231")  # the same set, dated later
    planted.write_bytes(b"x" * 10)
    with open(str(planted) + ".json", "wb") as huge:  # 200 MB that cost no disk
        huge.truncate(200 * 1000 * 1000)

    done, peak = listing()

    assert done.returncode == 0, done.stderr
    assert [row["id"] for row in json.loads(done.stdout)] == [good.name.removesuffix(".zst")]
    assert planted.name + ".json is not a valid manifest" in done.stderr
    assert peak - baseline < 32 * 1024, (baseline, peak)  # KiB: reading it whole would cost 200 MB and more
