"""Locks per backup set, through the CLI: sets that share BACKUP_DIR back up at the same time; the same set twice
is skipped, naming the run that holds it.

The overlap is real: set `a` is a rollback-journal SQLite database whose write lock the test holds, so a's
snapshot waits (up to a minute) until the test lets go."""

from collections.abc import Iterator
from contextlib import contextmanager
import json
from pathlib import Path
import signal
import sqlite3
import subprocess
import sys

from tests.conftest import make_app_db, run_worker
from tests.e2e.test_cli import read_events


@contextmanager
def write_locked(db: Path) -> Iterator[sqlite3.Connection]:
    """Hold an EXCLUSIVE lock on a rollback-journal database: no one can read it until the block ends or the
    yielded connection rolls back."""
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield holder
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()


def set_env(worker_env: dict[str, str], db: Path, **extra: str) -> dict[str, str]:
    return {**worker_env, "BACKUP_SOURCE": f"sqlite:///{db}", **extra}


def artifacts_of(backups: Path, name: str) -> list[str]:
    return sorted(p.name for p in backups.glob(f"{name}-*.sqlite.zst"))


@contextmanager
def running(env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env, cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_another_set_backs_up_while_a_set_backs_up_and_the_same_set_is_skipped_naming_the_holder(
        tmp_path: Path, worker_env: dict[str, str]) -> None:
    a, b = make_app_db(tmp_path / "a.db", wal=False), make_app_db(tmp_path / "b.db", rows=50)
    backups = tmp_path / "backups"
    with write_locked(a) as holder, running(set_env(worker_env, a), tmp_path) as scheduled:
        events = read_events(scheduled, "backup.snapshot", 60)  # a's catch-up backup waits for a's lock now
        assert next(e for e in events if e["event"] == "worker.started")["catch_up"] is True

        other = run_worker(["backup", "--no-upload"], set_env(worker_env, b), cwd=tmp_path)
        assert other.code == 0, other.stderr
        assert other.event("job.succeeded") and len(artifacts_of(backups, "b")) == 1

        same = run_worker(["backup", "--no-upload"], set_env(worker_env, a), cwd=tmp_path)
        assert same.code == 1
        reason = same.event("job.skipped")["reason"]
        assert reason.startswith("another backup is running for the set a") and f"(pid {scheduled.pid}, backup)" in reason
        assert f"pid {scheduled.pid}" in same.stderr.splitlines()[-1]  # the sentence a person reads says it too
        assert artifacts_of(backups, "a") == []
        holder.execute("ROLLBACK")
        done = read_events(scheduled, "job.succeeded", 60)[-1]  # the lock is gone: a's backup goes on and succeeds
        assert done["job"] == "backup" and len(artifacts_of(backups, "a")) == 1


def test_a_cycle_of_several_sets_backs_up_the_free_ones_and_reports_the_busy_one_as_skipped(
        tmp_path: Path, worker_env: dict[str, str]) -> None:
    a, b = make_app_db(tmp_path / "a.db", wal=False), make_app_db(tmp_path / "b.db", rows=50)
    env = set_env(worker_env, a, BACKUP_SOURCE_OTHER=f"sqlite:///{b}")
    backups = tmp_path / "backups"
    with write_locked(a), running(set_env(worker_env, a), tmp_path) as scheduled:
        read_events(scheduled, "backup.snapshot", 60)
        both = run_worker(["backup", "--no-upload"], env, cwd=tmp_path)
    assert both.code == 1
    assert both.stdout.startswith("other: backup other-")
    assert f"a: backup skipped: another backup is running for the set a (pid {scheduled.pid}, backup)" in both.stderr
    skipped = both.event("job.skipped")
    assert skipped["skipped_sources"] == ["a"] and skipped["failed_sources"] == []
    assert skipped["sources"]["other"]["outcome"] == "succeeded" and skipped["sources"]["a"]["outcome"] == "skipped"
    assert "(backed up: other)" in skipped["reason"]
    assert len(artifacts_of(backups, "other")) == 1
    history = json.loads(run_worker(["history", "--json", "--job", "backup"], env, cwd=tmp_path).stdout)
    assert "skipped" in [row["outcome"] for row in history]
