"""Shared fixtures. Before any test runs, the real servers the suite needs must answer: a missing PostgreSQL,
Redis or S3 test server fails the run (exit 3), it never skips tests."""

from collections.abc import Iterator
import json
import os
from pathlib import Path
import socket
import sqlite3
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Where the suite's servers are: TEST_PG_HOST/TEST_PG_PORT/TEST_PG_USER and TEST_REDIS_HOST/TEST_REDIS_PORT
# (./dev test exports them when it starts private servers; tests/servers.sh).
PG_ADDRESS = (os.environ.get("TEST_PG_HOST", "127.0.0.1"), int(os.environ.get("TEST_PG_PORT", "5432")))
REDIS_ADDRESS = (os.environ.get("TEST_REDIS_HOST", "127.0.0.1"), int(os.environ.get("TEST_REDIS_PORT", "6379")))
SERVICES = {"PostgreSQL": PG_ADDRESS, "Redis": REDIS_ADDRESS}


def pytest_sessionstart(session: pytest.Session) -> None:
    down = []
    for name, (host, port) in SERVICES.items():
        try:
            socket.create_connection((host, port), timeout=3).close()
        except OSError as error:
            down.append(f"{name} at {host}:{port} ({error.strerror or error})")
    if down:
        pytest.exit("test servers unreachable: " + "; ".join(down) + " — `./dev test` starts private ones when none answers "
                    "at the default place (see README, Tests)", returncode=3)


def make_app_db(path: Path, rows: int = 1000, wal: bool = True) -> Path:
    """Create a small app-like SQLite database with `rows` messages."""
    db = sqlite3.connect(path)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, body TEXT NOT NULL, payload BLOB)")
    db.executemany("INSERT INTO messages (body, payload) VALUES (?, ?)",
                   [(f"message {i} " * 8, os.urandom(64)) for i in range(rows)])
    db.commit()
    db.close()
    return path


@pytest.fixture
def app_db(tmp_path: Path) -> Path:
    return make_app_db(tmp_path / "app.db")


@pytest.fixture
def worker_env(tmp_path: Path, app_db: Path) -> dict[str, str]:
    """An environment for `python -m worker` with a SQLite source and a private backup directory."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("BACKUP_", "S3_", "CLEANUP_", "AWS_", "CATALOG_", "LOG_", "DATABASE_URL", "FRESHNESS_", "RAILWAY_"))}
    env.update({"BACKUP_SOURCE": f"sqlite:///{app_db}", "BACKUP_DIR": str(tmp_path / "backups"), "PYTHONPATH": str(ROOT)})
    return env


class Result:
    def __init__(self, completed: subprocess.CompletedProcess[str]) -> None:
        self.code = completed.returncode
        self.stdout = completed.stdout
        self.stderr = completed.stderr
        self.events = []
        for line in (completed.stdout + completed.stderr).splitlines():
            if line.startswith("{") and line.endswith("}"):
                try:
                    self.events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue

    def event(self, name: str) -> dict:
        found = [e for e in self.events if e.get("event") == name]
        assert found, f"no {name!r} event in {self.events}"
        return found[-1]


def run_worker(args: list[str], env: dict[str, str], cwd: Path | None = None, stdin: str | None = None,
               timeout: float = 120, **popen: object) -> Result:
    """Run `python -m worker ARGS` as a user would and parse its JSON log lines."""
    completed = subprocess.run([sys.executable, "-m", "worker", *args], env=env, cwd=cwd or ROOT, text=True,
                               capture_output=True, input=stdin, timeout=timeout, **popen)
    return Result(completed)


@pytest.fixture
def worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator:
    def call(*args: str, env: dict[str, str] | None = None, **kwargs: object) -> Result:
        return run_worker(list(args), {**worker_env, **(env or {})}, cwd=tmp_path, **kwargs)

    yield call
