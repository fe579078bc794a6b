"""The stop promise on a large database: SIGTERM during the snapshot ends `run` within 10 s, cleanly."""

import json
from pathlib import Path
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.e2e.test_cli import read_events


def big_database(path: Path, mib: int) -> Path:
    """Create a WAL database of about `mib` MiB quickly: half random, half repetitive text."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB, text TEXT)")
    rows = mib * 1024 // 8  # 8 KiB a row
    db.execute("BEGIN")
    db.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
               "INSERT INTO blobs (data, text) SELECT randomblob(4096), printf('%.4096c', 'x') FROM n", (rows,))
    db.execute("COMMIT")
    db.execute("PRAGMA journal_mode=WAL")
    db.close()
    return path


@pytest.mark.slow
def test_sigterm_during_the_snapshot_of_a_large_database_stops_within_ten_seconds(tmp_path: Path, worker_env) -> None:
    db = big_database(tmp_path / "big.db", 300)
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{db}"}
    process = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        events = read_events(process, "backup.snapshot", 60)  # the catch-up backup starts its snapshot now
        deadline = time.monotonic() + 30
        while not [p for p in (tmp_path / "backups").glob(".tmp-*/snapshot.sqlite") if p.stat().st_size > 0]:
            assert time.monotonic() < deadline, "the snapshot did not start"
            time.sleep(0.005)
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        assert time.monotonic() - began < 10
    finally:
        if process.poll() is None:
            process.kill()
    events += [json.loads(line) for line in process.stdout.read().splitlines() if line.startswith("{")]
    run_id = next(e for e in events if e["event"] == "job.started" and e["job"] == "backup")["run_id"]
    outcomes = [e for e in events if e.get("run_id") == run_id and e["event"] in ("job.succeeded", "job.failed", "job.skipped")]
    assert len(outcomes) == 1 and outcomes[0]["event"] == "job.failed", outcomes
    assert outcomes[0]["stage"] == "cancelled" and "stopping" in outcomes[0]["reason"]
    assert "worker.stopped" in [e["event"] for e in events]
    backups = tmp_path / "backups"
    assert list(backups.glob("*.zst")) == [] and list(backups.glob("*.zst.json")) == []
    assert [p.name for p in backups.iterdir() if p.name.startswith(".tmp-")] == []
