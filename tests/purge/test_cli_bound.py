"""Table retention deletes only rows the backup it follows holds: `python -m worker backup` while an app writes
old-dated rows, updates old rows and adds cascading children to them, on SQLite and PostgreSQL. Afterwards every
row that left the database is in the backup as it last was, and every row written after the snapshot is still
there."""

from datetime import datetime, timedelta, timezone
import json
import os
from pathlib import Path
import signal
import sqlite3
import subprocess
import sys
import time
import uuid

import psycopg
import pytest

from tests.conftest import run_worker
from tests.purge.conftest import PG_HOST, PG_PORT, PG_USER, pg_execute

WRITER = Path(__file__).with_name("old_writer.py")
RULE = "events.created_at=30d"
OLD, NEW = 2000, 2000  # events 1..2000 are 45 to 35 days old (old_writer.OLD_IDS), the next 2000 newer


def moments() -> list[str]:
    now = datetime.now(timezone.utc)
    old = [now - timedelta(days=45) + timedelta(seconds=index * 400) for index in range(OLD)]
    new = [now - timedelta(days=20) + timedelta(seconds=index * 400) for index in range(NEW)]
    return [moment.strftime("%Y-%m-%d %H:%M:%S") for moment in old + new]


SQLITE_SCHEMA = """
CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, body TEXT, payload TEXT);
CREATE INDEX events_created_at ON events (created_at);
CREATE TABLE notes (id INTEGER PRIMARY KEY, event_id INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
                    body TEXT);
CREATE INDEX notes_event ON notes (event_id);
"""
PG_SCHEMA = """
CREATE TABLE events (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL, body text, payload text);
CREATE INDEX events_created_at ON events (created_at);
CREATE TABLE notes (id bigserial PRIMARY KEY, event_id bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
                    body text);
CREATE INDEX notes_event ON notes (event_id);
"""


def rows() -> list[tuple[str, str, str]]:
    return [(moment, f"e{index}", os.urandom(400).hex()) for index, moment in enumerate(moments())]


def sqlite_app(path: Path) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SQLITE_SCHEMA)
    db.execute("BEGIN")
    db.executemany("INSERT INTO events (created_at, body, payload) VALUES (?, ?, ?)", rows())
    db.executemany("INSERT INTO notes (event_id, body) VALUES (?, 'before')", [(event,) for event in range(1, OLD, 4)])
    db.execute("COMMIT")
    db.close()


def sqlite_content(path: Path) -> tuple[dict[int, str], dict[int, int]]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT id, body FROM events")), dict(db.execute("SELECT id, event_id FROM notes"))


def pg_app(url: str) -> None:
    pg_execute(url, PG_SCHEMA)
    with psycopg.connect(url) as connection:
        connection.cursor().executemany("INSERT INTO events (created_at, body, payload) VALUES (%s, %s, %s)",
                                        [(moment + "+00", body, payload) for moment, body, payload in rows()])
        connection.cursor().executemany("INSERT INTO notes (event_id, body) VALUES (%s, 'before')",
                                        [(event,) for event in range(1, OLD, 4)])


def pg_content(url: str) -> tuple[dict[int, str], dict[int, int]]:
    return (dict(pg_execute(url, "SELECT id, body FROM events")),
            dict(pg_execute(url, "SELECT id, event_id FROM notes")))


def backup_while_writing(engine: str, target: str, env: dict[str, str], cwd: Path) -> tuple[dict, list[str]]:
    """Run `backup --json` while old_writer.py writes; return the outcome and the writer's committed operations."""
    log = cwd / f"writer-{uuid.uuid4().hex[:6]}.log"
    writer = subprocess.Popen([sys.executable, str(WRITER), engine, target, str(log)], stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + 30
        while not Path(str(log) + ".ready").exists():
            assert writer.poll() is None and time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.02)
        time.sleep(0.3)
        result = run_worker(["backup", "--json"], env, cwd=cwd, timeout=300)
        time.sleep(0.2)
    finally:
        writer.send_signal(signal.SIGTERM)
        _, errors = writer.communicate(timeout=60)
    assert writer.returncode == 0, errors
    assert result.code == 0, result.stderr
    return json.loads(result.stdout), log.read_text().splitlines()


def assert_only_backed_up_rows_left(backup: tuple[dict, dict], live: tuple[dict, dict], operations: list[str]) -> None:
    """Every row that left the database is in the backup as the app last wrote it; the writer's rows and changes
    that the backup does not hold are all still there. The writer must have worked after the snapshot (inserts,
    updates and notes the backup lacks), or the test proves nothing."""
    (held_events, held_notes), (live_events, live_notes) = backup, live
    last_body: dict[int, str] = {}
    written_notes: set[int] = set()
    for line in operations:
        op, *fields = line.split()
        if op in ("insert", "update"):
            last_body[int(fields[0])] = fields[1]
        elif op == "note":
            written_notes.add(int(fields[0]))
    after_snapshot = {
        "inserts": [key for key in last_body if key not in held_events],
        "updates": [key for key, body in last_body.items() if key in held_events and held_events[key] != body],
        "notes": [key for key in written_notes if key not in held_notes],
    }
    assert all(after_snapshot.values()), f"the writer did too little after the snapshot: {after_snapshot}"

    gone_events = (set(held_events) | set(last_body)) - set(live_events)
    lost = sorted(key for key in gone_events if key not in held_events or held_events[key] != last_body.get(key, held_events[key]))
    assert not lost, f"{len(lost)} events were deleted but the backup does not hold them as last written: {lost[:10]}"
    lost_notes = sorted((set(held_notes) | written_notes) - set(live_notes) - set(held_notes))
    assert not lost_notes, f"{len(lost_notes)} notes were deleted by a cascade but are in no backup: {lost_notes[:10]}"
    assert len(gone_events) > OLD // 2, "the purge deleted (almost) nothing"


def test_sqlite_rows_written_after_the_snapshot_stay_and_every_deleted_row_is_in_the_backup(
        tmp_path: Path, worker_env: dict[str, str]) -> None:
    path = tmp_path / "app.db"
    sqlite_app(path)
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{path}", "RETENTION_RULES": RULE}

    outcome, operations = backup_while_writing("sqlite", str(path), env, tmp_path)

    assert outcome["purge_failed"] == [] and outcome["purged_rows"] > 0, outcome
    restored = tmp_path / "restored.db"
    back = run_worker(["restore", outcome["backup"], "--to", str(restored), "--yes"], env, cwd=tmp_path)
    assert back.code == 0, back.stderr
    assert_only_backed_up_rows_left(sqlite_content(restored), sqlite_content(path), operations)
    assert not [name for name in os.listdir(env["BACKUP_DIR"]) if name.startswith(".tmp-")]


def test_postgres_rows_written_after_the_snapshot_stay_and_every_deleted_row_is_in_the_backup(
        pg_url: str, tmp_path: Path, worker_env: dict[str, str]) -> None:
    pg_app(pg_url)
    env = {**worker_env, "BACKUP_SOURCE": pg_url, "RETENTION_RULES": RULE}

    outcome, operations = backup_while_writing("postgres", pg_url, env, tmp_path)

    assert outcome["purge_failed"] == [] and outcome["purged_rows"] > 0, outcome
    with restored_database(Path(env["BACKUP_DIR"]) / outcome["artifact"], tmp_path) as url:
        held = pg_content(url)
    assert_only_backed_up_rows_left(held, pg_content(pg_url), operations)


class restored_database:
    """The artifact restored with the stock zstd and pg_restore into a new database; yields its URL, drops it."""

    def __init__(self, artifact: Path, tmp_path: Path) -> None:
        self.artifact, self.raw = artifact, tmp_path / "restored.pgdump"
        self.name = f"bw_purge_restored_{uuid.uuid4().hex[:8]}"
        self.admin = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"

    def __enter__(self) -> str:
        subprocess.run(["zstd", "-q", "-d", "-f", str(self.artifact), "-o", str(self.raw)], check=True)
        with psycopg.connect(self.admin, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.name}"')
        subprocess.run(["pg_restore", "-h", PG_HOST, "-p", PG_PORT, "-U", PG_USER, "-d", self.name, "--no-owner",
                        str(self.raw)], check=True, capture_output=True)
        return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.name}"

    def __exit__(self, *_: object) -> None:
        with psycopg.connect(self.admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_the_outcome_counts_the_old_rows_kept_because_the_backup_does_not_hold_them(
        engine: str, tmp_path: Path, worker_env: dict[str, str], pg_url: str) -> None:
    """The same race, read from the outcome: rows kept are counted per rule, never deleted silently."""
    if engine == "sqlite":
        sqlite_app(tmp_path / "app.db")
        target = str(tmp_path / "app.db")
        env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{target}", "RETENTION_RULES": RULE}
    else:
        pg_app(pg_url)
        target = pg_url
        env = {**worker_env, "BACKUP_SOURCE": pg_url, "RETENTION_RULES": RULE}

    outcome, _ = backup_while_writing(engine, target, env, tmp_path)

    (rule,) = outcome["purge"]
    assert rule["error"] is None and rule["kept"] > 0, rule


def held_files(backup_dir: Path) -> list[str]:
    return sorted(name for name in os.listdir(backup_dir) if name.startswith(".tmp-") and "held-" in name)


def backup_until_the_purge_runs(env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """Start `backup --json` and return once its purge job started (its stderr read up to there)."""
    process = subprocess.Popen([sys.executable, "-m", "worker", "backup", "--json"], env=env, cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if '"job.started"' in line and '"job": "purge"' in line:
            return process
    raise AssertionError(f"the purge never started: {process.communicate(timeout=60)}")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_the_snapshot_kept_for_the_purge_never_outlives_it(
        stop: signal.Signals, tmp_path: Path, worker_env: dict[str, str]) -> None:
    """SQLite's raw snapshot stays on the volume while the purge compares rows with it, and only then: a stop
    removes it, and after a kill the next start's removal of stale temporaries does."""
    from tests.purge.test_cli_purge import events_db

    path = tmp_path / "big.db"
    events_db(path, extra_old=300_000)
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{path}", "RETENTION_RULES": RULE, "PYTHONUNBUFFERED": "1"}
    backup_dir = Path(env["BACKUP_DIR"])

    process = backup_until_the_purge_runs(env, tmp_path)
    try:
        (kept,) = held_files(backup_dir)
        time.sleep(0.3)
        process.send_signal(stop)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    if stop == signal.SIGTERM:
        assert process.returncode == 0 and held_files(backup_dir) == []
        return
    assert held_files(backup_dir) == [kept]  # killed: nothing ran after it
    again = run_worker(["backup"], env, cwd=tmp_path, timeout=300)
    assert again.code == 0, again.stderr
    assert kept in again.event("backup.stale_temporaries_removed")["files"] and held_files(backup_dir) == []
