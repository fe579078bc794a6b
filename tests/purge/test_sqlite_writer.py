"""A purge of a million rows while the app keeps writing to the same SQLite file (WAL mode) in another process."""

from datetime import timedelta
from pathlib import Path
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from jobs.purge import parse_retention_rules, purge
from tests.purge.conftest import NOW, hold

ROOT = Path(__file__).resolve().parents[2]
WRITER = ROOT / "tests" / "integration" / "writer.py"
OLD_ROWS = 1_000_000
NEW_ROWS = 20_000


def build(path: Path) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, kind TEXT, payload TEXT)")
    db.execute("CREATE INDEX events_created_at ON events (created_at)")
    start = NOW - timedelta(days=90)
    db.execute("BEGIN")
    db.executemany("INSERT INTO events (created_at, kind, payload) VALUES (?, 'view', 'x')",
                   (((start + timedelta(seconds=i * 5)).strftime("%Y-%m-%d %H:%M:%S"),) for i in range(OLD_ROWS)))
    db.executemany("INSERT INTO events (created_at, kind, payload) VALUES (?, 'view', 'x')",
                   (((NOW - timedelta(seconds=i * 60)).strftime("%Y-%m-%d %H:%M:%S"),) for i in range(NEW_ROWS)))
    db.execute("COMMIT")
    db.close()


@pytest.mark.slow
def test_a_writer_process_keeps_committing_while_a_million_rows_are_purged(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    build(path)
    out = tmp_path / "writer.txt"
    writer = subprocess.Popen([sys.executable, str(WRITER), str(path), str(out), "--seconds", "900"],
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not Path(str(out) + ".ready").exists():
            assert writer.poll() is None and time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.05)
        time.sleep(0.5)
        began = time.time()
        [result] = purge(f"sqlite:///{path}", parse_retention_rules("events.created_at=30d"), NOW, threading.Event(),
                         held=hold(f"sqlite:///{path}"))
        ended = time.time()
        time.sleep(0.5)
    finally:
        writer.send_signal(signal.SIGTERM)
        _, errors = writer.communicate(timeout=120)

    assert writer.returncode == 0 and "locked" not in errors, errors
    assert result.error is None and result.deleted == OLD_ROWS and result.batches >= OLD_ROWS // 1000
    commits = [line.split() for line in out.read_text().splitlines()]
    during = [float(ms) for at, ms in commits if began <= float(at) <= ended]
    print(f"purge {ended - began:.1f} s, {len(during)} writer commits meanwhile, "
          f"max {max(during):.1f} ms, p99 {sorted(during)[int(len(during) * 0.99)]:.1f} ms")
    assert len(during) >= 20, "the writer made no progress during the purge"
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == NEW_ROWS
        assert db.execute("SELECT count(*) FROM ledger").fetchone()[0] == db.execute("SELECT n FROM totals").fetchone()[0]
