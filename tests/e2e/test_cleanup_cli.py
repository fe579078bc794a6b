"""Cleanup as a user runs it: by hand, and on its schedule inside `run` next to a running backup."""

import json
import os
from pathlib import Path
import signal
import sqlite3
import subprocess
import sys
import time

from tests.e2e.test_cli import read_events
from tests.conftest import Result, make_app_db

DAY = 86400


def make_files(directory: Path, count: int, age_s: float, suffix: str = ".mp3") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    then = time.time() - age_s
    paths = []
    for i in range(count):
        path = directory / f"reply-{i}-{int(age_s)}{suffix}"
        path.write_bytes(b"\0" * 1000)
        os.utime(path, (then, then))
        paths.append(path)
    return paths


def test_cleanup_by_hand_removes_old_files_reports_them_and_dry_run_removes_nothing(tmp_path: Path, worker) -> None:
    audio = tmp_path / "audio"
    old = make_files(audio, 5, 2 * DAY)
    new = make_files(audio, 3, 60)
    rules = {"CLEANUP_RULES": f"{audio}/*.mp3=24h"}
    preview = worker("cleanup", "--dry-run", env=rules)
    assert preview.code == 0 and "would remove 5 files" in preview.stdout
    assert all(str(p) in preview.stdout for p in old) and not any(str(p) in preview.stdout for p in new)
    assert all(p.exists() for p in old)
    done = worker("cleanup", env=rules)
    assert done.code == 0 and "removed 5 files, 4.9 KiB" in done.stdout
    outcome = done.event("job.succeeded")
    assert outcome["job"] == "cleanup" and outcome["files"] == 5 and outcome["bytes"] == 5000
    assert not any(p.exists() for p in old) and all(p.exists() for p in new)
    status = json.loads(worker("status", "--json").stdout)
    assert status["jobs"]["cleanup"]["outcome"] == "succeeded"


def test_a_rule_that_would_sweep_the_backups_is_refused_at_start(tmp_path: Path, worker) -> None:
    result = worker("run", env={"CLEANUP_RULES": f"{tmp_path}/**=1h"}, timeout=20)
    assert result.code == 2 and "CLEANUP_RULES" in result.stderr
    assert not (tmp_path / "backups").exists() or list((tmp_path / "backups").glob("*.zst")) == []


def test_cleanup_runs_on_its_schedule_beside_a_running_backup_without_waiting_for_it(tmp_path: Path, worker_env) -> None:
    db = tmp_path / "app.db"
    db.unlink()
    make_app_db(db, wal=False)
    audio = tmp_path / "audio"
    old = make_files(audio, 50, 2 * DAY)
    env = {**worker_env, "CLEANUP_RULES": f"{audio}/*.mp3=24h", "CLEANUP_SCHEDULE": "* * * * *"}
    app = sqlite3.connect(db, isolation_level=None)
    app.execute("BEGIN EXCLUSIVE")  # a long write transaction: the catch-up backup waits for it in its snapshot
    # Start a few seconds before a minute turns, so the cleanup fires while the backup is running.
    while not 50 <= time.time() % 60 < 55:
        time.sleep(0.2)
    process = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        events = read_events(process, "job.succeeded", 30)
        assert events[-1]["job"] == "cleanup"
        assert any(e["event"] == "job.started" and e["job"] == "backup" for e in events)
        assert not any(e["event"].startswith("job.") and e["job"] == "backup" and e["event"] != "job.started" for e in events)
        assert not any(p.exists() for p in old)
        app.execute("COMMIT")
        finished = read_events(process, "job.succeeded", 30)[-1]
        assert finished["job"] == "backup"
        process.send_signal(signal.SIGTERM)
        assert process.wait(12) == 0
    finally:
        app.close()
        if process.poll() is None:
            process.kill()


def test_a_rule_whose_base_becomes_a_link_into_the_app_is_refused_at_run_time(tmp_path: Path, app_db: Path) -> None:
    import threading

    from jobs.cleanup import run_cleanup
    from worker.config import load_config

    base = tmp_path / "scratch"  # missing when the worker starts: only a warning
    config = load_config({"BACKUP_SOURCE": f"sqlite:///{app_db}", "BACKUP_DIR": str(tmp_path / "backups"),
                          "CLEANUP_RULES": f"{base}/**=1s"}, cwd=tmp_path / "app")
    old = time.time() - 3600
    os.utime(app_db, (old, old))
    base.symlink_to(tmp_path)  # later, something makes it a link to the database's directory
    report = run_cleanup(config.cleanup_rules, dry_run=False, now=None, cancel=threading.Event(),
                         guard=config.cleanup_guard)
    assert app_db.exists(), "cleanup followed a link onto the database"
    assert report.fields()["failed"] == 1 and report.fields()["files"] == 0


def test_system_directories_are_refused_at_start(worker) -> None:
    for rule in ("/etc/**=1d", "/usr/*=1d", "/proc/**=1h"):
        result = worker("config", env={"CLEANUP_RULES": rule})
        assert result.code == 2 and "system directory" in result.stderr


def test_a_file_the_app_writes_again_between_the_scan_and_the_deletion_stays(tmp_path: Path, worker_env) -> None:
    audio = tmp_path / "audio"
    old = make_files(audio, 4, 2 * DAY)
    rewritten = old[1]
    env = {**worker_env, "CLEANUP_RULES": f"{audio}/*.mp3=24h", "REWRITE_PATHS": str(rewritten)}
    helper = Path(__file__).with_name("writes_between_plan_and_delete.py")
    done = Result(subprocess.run([sys.executable, str(helper), "cleanup"], env=env, cwd=tmp_path, text=True,
                                 capture_output=True, timeout=60))
    assert done.code == 0, done.stderr
    assert rewritten.read_bytes() == b"written again by the app"
    assert [p for p in old if p.exists()] == [rewritten]
    assert "removed 3 files" in done.stdout and "1 changed since the scan, left in place" in done.stdout
    outcome = done.event("job.succeeded")
    assert outcome["files"] == 3 and outcome["changed"] == 1 and outcome["rules"][0]["changed"] == 1
