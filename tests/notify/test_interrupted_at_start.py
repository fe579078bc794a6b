"""What happened while nobody watched: a backup left `running` by a worker killed with SIGKILL is marked
`interrupted` as soon as `run` starts again (no job has to run first), and is notified (one webhook POST) and
pinged (`/fail`) as a failure, once: a second restart sends nothing more."""

from pathlib import Path
import signal
import sqlite3
import subprocess
import sys
import time

from tests.conftest import make_app_db
from tests.e2e.test_cli import read_events
from tests.notify.test_notifications import PING_KEY, TOKEN, notify_env


def outcomes(catalog: Path) -> dict[str, str]:
    with sqlite3.connect(catalog) as connection:
        return dict(connection.execute("SELECT run_id, outcome FROM runs WHERE job = 'backup'"))


def kill_during_backup(env: dict[str, str], cwd: Path, database: Path) -> None:
    """Start `backup`, let it wait in its snapshot behind an app's exclusive lock, then SIGKILL it."""
    app = sqlite3.connect(database, isolation_level=None)
    app.execute("BEGIN EXCLUSIVE")
    process = subprocess.Popen([sys.executable, "-m", "worker", "backup", "--no-upload"], env=env, cwd=cwd,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while '"backup.snapshot"' not in process.stderr.readline():
            assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.3)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        app.close()
        if process.poll() is None:
            process.kill()


def start_run(env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(12) == 0


def test_a_killed_backup_is_marked_interrupted_at_start_and_notified_once(tmp_path: Path, worker, worker_env, receiver) -> None:
    database = make_app_db(tmp_path / "journal.db", rows=200, wal=False)
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{database}", **notify_env(receiver.url, receiver.url)}
    assert worker("backup", "--no-upload", env=env).code == 0  # a fresh backup: `run` has no catch-up to do
    catalog = Path(env["BACKUP_DIR"]) / "catalog.db"
    kill_during_backup(env, tmp_path, database)
    (killed,) = [run_id for run_id, outcome in outcomes(catalog).items() if outcome == "running"]
    before = len(receiver.requests)  # the killed run's own start ping, and the first backup's

    process = start_run(env, tmp_path)
    try:
        events = read_events(process, "worker.started", 20)
        assert events[-1]["catch_up"] is False  # no job runs at start
        started = time.monotonic()
        while outcomes(catalog)[killed] != "interrupted":
            assert time.monotonic() - started < 1.0, "not marked within a second of the worker's start"
            time.sleep(0.05)
        interrupted = next(e for e in events if e["event"] == "catalog.run_interrupted")
        assert interrupted["interrupted_run"] == killed
        receiver.wait_for(before + 2)
        time.sleep(0.5)
    finally:
        stop(process)
    new = receiver.requests[before:]
    webhooks = [r.json() for r in new if r.path.startswith("/services/")]
    pings = [r for r in new if not r.path.startswith("/services/")]
    assert [r.path for r in pings] == [f"/{PING_KEY}/fail"]
    assert len(webhooks) == 1
    body = webhooks[0]
    assert body["job"] == "backup" and body["run_id"] == killed and body["outcome"] == "interrupted"
    assert body["stage"] == "interrupted" and "ended before the run finished" in body["reason"]
    assert body["text"].startswith("backup of journal interrupted on ") and body["backup_set"] == "journal"
    assert "ended before the run finished" in pings[0].body.decode()
    assert TOKEN not in process.stdout.read()

    settled = len(receiver.requests)
    again = start_run(env, tmp_path)
    try:
        read_events(again, "worker.started", 20)
        time.sleep(1.5)
    finally:
        stop(again)
    assert len(receiver.requests) == settled  # told once, never again at the next start
    assert outcomes(catalog)[killed] == "interrupted"
