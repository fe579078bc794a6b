"""The space a purge frees in a SQLite file: reported as free pages times page size; with auto_vacuum=INCREMENTAL
given back in small incremental_vacuum steps, stoppable, while another process keeps committing; never a full
VACUUM; nothing for PostgreSQL; and through `python -m worker backup` and `status`."""

import json
import os
from pathlib import Path
import signal
import sqlite3
import subprocess
import sys
import threading
import time

from jobs.purge import parse_retention_rules, purge, reclaim_space
from tests.conftest import run_worker
from tests.purge.conftest import NOW, hold

ROOT = Path(__file__).resolve().parents[2]
WRITER = ROOT / "tests" / "integration" / "writer.py"
ROWS = 4000


def app_db(path: Path, incremental: bool, old: str = "2020-01-01 00:00:00") -> None:
    """Events with a 1000-byte body: the first half old, the second half new."""
    db = sqlite3.connect(path, isolation_level=None)
    if incremental:
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # before the first table: no VACUUM needed
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, body BLOB)")
    db.execute("BEGIN")
    db.executemany("INSERT INTO events (created_at, body) VALUES (?, ?)",
                   [(old if i < ROWS // 2 else NOW.strftime("%Y-%m-%d %H:%M:%S"), os.urandom(1000))
                    for i in range(ROWS)])
    db.execute("COMMIT")
    db.close()


def pragma(path: Path, name: str) -> int:
    with sqlite3.connect(path) as db:
        return db.execute(f"PRAGMA {name}").fetchone()[0]


def purge_events(path: Path) -> None:
    url = f"sqlite:///{path}"
    [result] = purge(url, parse_retention_rules("events.created_at=30d"), NOW, threading.Event(), held=hold(url))
    assert result.error is None and result.deleted == ROWS // 2


def test_without_incremental_auto_vacuum_the_free_space_is_reported_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    app_db(path, incremental=False)
    purge_events(path)
    free = pragma(path, "freelist_count")
    assert free > 0

    space = reclaim_space(f"sqlite:///{path}", threading.Event())

    assert space is not None and space.as_dict() == {
        "auto_vacuum": "none", "free_bytes": free * pragma(path, "page_size"), "released_bytes": 0,
        "reclaimable_bytes": free * pragma(path, "page_size")}
    assert pragma(path, "freelist_count") == free


def test_with_incremental_auto_vacuum_the_free_pages_go_back_in_small_steps_and_the_file_shrinks(
        tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    app_db(path, incremental=True)
    purge_events(path)
    free, page = pragma(path, "freelist_count"), pragma(path, "page_size")
    before = path.stat().st_size + Path(f"{path}-wal").stat().st_size
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    full = path.stat().st_size

    space = reclaim_space(f"sqlite:///{path}", threading.Event(), step_pages=32, pause=0)

    assert space is not None and space.auto_vacuum == "incremental" and space.released_pages == free
    assert space.as_dict()["released_bytes"] == free * page and space.as_dict()["reclaimable_bytes"] == 0
    assert pragma(path, "freelist_count") == 0
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM events").fetchone() == (ROWS // 2,)
    assert path.stat().st_size <= full - (free - 2) * page < before


def test_a_stop_request_ends_the_release_between_steps(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    app_db(path, incremental=True)
    purge_events(path)
    free = pragma(path, "freelist_count")
    cancel = threading.Event()
    cancel.set()

    space = reclaim_space(f"sqlite:///{path}", cancel, step_pages=8)

    assert space is not None and space.stopped and space.released_pages == 0
    assert pragma(path, "freelist_count") == free


def test_the_release_runs_while_another_process_keeps_committing(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    app_db(path, incremental=True)
    purge_events(path)
    out = tmp_path / "writer.txt"
    writer = subprocess.Popen([sys.executable, str(WRITER), str(path), str(out), "--seconds", "120"],
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not Path(f"{out}.ready").exists():
            assert writer.poll() is None and time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.05)
        space = reclaim_space(f"sqlite:///{path}", threading.Event(), step_pages=16)
    finally:
        writer.send_signal(signal.SIGTERM)
        _, errors = writer.communicate(timeout=60)

    assert writer.returncode == 0 and "locked" not in errors, errors
    assert space is not None and space.released_pages > 0 and not space.stopped
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM ledger").fetchone()[0] == db.execute("SELECT n FROM totals").fetchone()[0]


def test_postgres_has_nothing_to_reclaim_here(pg_url: str) -> None:
    assert reclaim_space(pg_url, threading.Event()) is None


def test_never_a_full_vacuum(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    app_db(path, incremental=True)
    purge_events(path)
    statements: list[str] = []
    original = sqlite3.connect

    def traced(*args: object, **kwargs: object) -> sqlite3.Connection:
        connection = original(*args, **kwargs)  # type: ignore[arg-type]
        connection.set_trace_callback(statements.append)
        return connection

    sqlite3.connect = traced  # type: ignore[assignment]
    try:
        reclaim_space(f"sqlite:///{path}", threading.Event())
    finally:
        sqlite3.connect = original  # type: ignore[assignment]
    assert any("incremental_vacuum" in statement for statement in statements)
    assert not [statement for statement in statements if statement.strip().upper().startswith("VACUUM")]


def test_backup_and_status_report_the_space_freed(tmp_path: Path, worker_env: dict[str, str]) -> None:
    path = tmp_path / "events.db"  # worker_env made app.db already
    app_db(path, incremental=True)
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{path}", "RETENTION_RULES": "events.created_at=30d"}

    backup = run_worker(["backup", "--json"], env, cwd=tmp_path)

    assert backup.code == 0, backup.stderr
    space = json.loads(backup.stdout)["space"]
    assert space["auto_vacuum"] == "incremental" and space["released_bytes"] == space["free_bytes"] > 0
    status = run_worker(["status"], env, cwd=tmp_path).stdout
    assert "MiB free in the file" in status and "MiB given back" in status


def test_a_write_lock_held_longer_than_one_busy_wait_delays_the_release_but_does_not_fail_it(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    app_db(path, incremental=True)
    purge_events(path)
    free = pragma(path, "freelist_count")
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN IMMEDIATE")
    release = threading.Timer(2.5, lambda: locker.execute("COMMIT"))  # longer than one busy wait (2 s)
    release.start()
    try:
        space = reclaim_space(f"sqlite:///{path}", threading.Event())
    finally:
        release.join()
        locker.close()

    assert space is not None and space.released_pages == free and pragma(path, "freelist_count") == 0
