"""The SQLite path on real files: concurrent writers, damaged sources, crashes, full disks, restores."""

from datetime import datetime, timezone
import json
import os
from pathlib import Path
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from jobs import pipeline, retention
from jobs.engines.sqlite import SqliteSource
from jobs.errors import SpaceError
from tests.conftest import make_app_db

WRITER = Path(__file__).with_name("writer.py")


def artifacts_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".zst", ".json")) and not p.name.startswith(".tmp-")) if directory.exists() else []


def temporaries_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".tmp-")) if directory.exists() else []


def fill(path: Path, megabytes: int, wal: bool = True) -> None:
    """Grow an app database with compressible text and random blobs to about `megabytes`."""
    db = sqlite3.connect(path)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, kind TEXT, body TEXT, blob BLOB)")
    for _ in range(megabytes):
        db.executemany(
            "INSERT INTO events (kind, body, blob) VALUES (?, ?, randomblob(256))",
            [("message", '{"role": "user", "text": "' + "hello there " * 50 + '"}') for _ in range(1200)],
        )
    db.commit()
    db.close()


def start_writer(db: Path, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "writer.txt"
    process = subprocess.Popen([sys.executable, str(WRITER), str(db), str(out), "--seconds", "120"])
    deadline = time.monotonic() + 10
    while not Path(str(out) + ".ready").exists():
        assert time.monotonic() < deadline, "the writer did not start"
        time.sleep(0.01)
    time.sleep(0.2)
    return process, out


@pytest.mark.parametrize("wal", [True, False], ids=["wal", "rollback-journal"])
def test_backup_is_consistent_while_another_process_keeps_writing(tmp_path: Path, worker, wal: bool) -> None:
    db = tmp_path / "app.db"
    db.unlink(missing_ok=True)
    fill(db, 40, wal=wal)
    writer, samples = start_writer(db, tmp_path)
    try:
        began = time.time()
        result = worker("backup", "--no-upload", env={"BACKUP_SOURCE": f"sqlite:///{db}"})
        ended = time.time()
    finally:
        writer.send_signal(signal.SIGTERM)
        writer.wait(30)
    assert result.code == 0, result.stderr
    commits = [float(line.split()[0]) for line in samples.read_text().splitlines()]
    assert any(began <= at <= ended for at in commits), "the writer made no commit while the backup ran"

    artifact = tmp_path / "backups" / result.event("job.succeeded")["artifact"]
    restored = tmp_path / "restored.db"
    subprocess.run(["zstd", "-q", "-d", str(artifact), "-o", str(restored)], check=True)
    check = sqlite3.connect(restored)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    ledger, total = check.execute("SELECT (SELECT count(*) FROM ledger), (SELECT n FROM totals)").fetchone()
    assert ledger == total and ledger > 0
    assert check.execute("SELECT count(*) FROM events").fetchone()[0] == 40 * 1200


def test_stock_tools_read_what_we_write(tmp_path: Path, worker) -> None:
    result = worker("backup", "--no-upload")
    assert result.code == 0, result.stderr
    backups = tmp_path / "backups"
    artifact = backups / result.event("job.succeeded")["artifact"]
    manifest = json.loads((backups / (artifact.name + ".json")).read_text())
    sha = subprocess.run(["sha256sum", str(artifact)], capture_output=True, text=True, check=True).stdout.split()[0]
    assert sha == manifest["sha256"]
    assert subprocess.run(["zstd", "-t", "-q", str(artifact)]).returncode == 0
    raw = subprocess.run(["zstd", "-dc", str(artifact)], capture_output=True, check=True).stdout
    assert len(raw) == manifest["raw_size"]
    (tmp_path / "hand.db").write_bytes(raw)
    count = subprocess.run(["sqlite3", str(tmp_path / "hand.db"), "SELECT count(*) FROM messages; PRAGMA integrity_check;"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert count == ["1000", "ok"]
    assert oct(artifact.stat().st_mode & 0o777) == "0o600"
    assert oct(backups.stat().st_mode & 0o777) == "0o700"
    install = manifest["source"].pop("install")  # off Railway: this installation's id (jobs.identity)
    assert len(install) == 32 and (tmp_path / "backups" / ".install-id").read_text().strip() == install
    assert manifest["source"] == {"kind": "sqlite", "database": "app.db", "path": str(tmp_path / "app.db")}
    assert manifest["verified"]["check"] == "PRAGMA integrity_check"


def test_damaged_database_is_refused_and_nothing_is_kept(tmp_path: Path, worker) -> None:
    db = tmp_path / "broken.db"
    fill(db, 4, wal=False)
    with db.open("r+b") as handle:  # scribble over interior pages, keep the header
        for offset in range(8192, db.stat().st_size, 65536):
            handle.seek(offset)
            handle.write(os.urandom(512))
    before = db.read_bytes()
    result = worker("backup", "--no-upload", env={"BACKUP_SOURCE": f"sqlite:///{db}"})
    assert result.code == 1
    assert "broken.db" in result.stderr and "Traceback" not in result.stderr
    assert result.event("job.failed")["stage"] in ("verify", "snapshot")
    assert artifacts_in(tmp_path / "backups") == [] and temporaries_in(tmp_path / "backups") == []
    assert db.read_bytes() == before, "the source was modified"


def test_a_file_that_is_not_a_database_is_refused_with_its_name(tmp_path: Path, worker) -> None:
    junk = tmp_path / "notes.db"
    junk.write_bytes(b"this is not sqlite" * 1000)
    result = worker("backup", "--no-upload", env={"BACKUP_SOURCE": f"sqlite:///{junk}"})
    assert result.code == 1
    assert "notes.db" in result.stderr and "not a database" in result.stderr
    assert artifacts_in(tmp_path / "backups") == []


def test_missing_database_fails_and_is_not_created(tmp_path: Path, worker) -> None:
    missing = tmp_path / "nowhere" / "app.db"
    result = worker("backup", "--no-upload", env={"BACKUP_SOURCE": f"sqlite:///{missing}"})
    assert result.code == 1
    assert str(missing) in result.stderr and "does not exist" in result.stderr
    assert not missing.exists() and not missing.parent.exists()
    assert result.event("job.failed")["stage"] == "snapshot"


def test_backup_killed_mid_way_leaves_nothing_that_passes_and_the_next_run_cleans_up(tmp_path: Path, worker_env) -> None:
    db = tmp_path / "big.db"
    fill(db, 30)
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{db}", "BACKUP_COMPRESSION_LEVEL": "19"}
    backups = tmp_path / "backups"
    process = subprocess.Popen([sys.executable, "-m", "worker", "backup", "--no-upload"], env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(name.endswith(".zst") for name in temporaries_in(backups)):
        assert process.poll() is None, "the backup finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.kill()
    process.wait()
    assert temporaries_in(backups), "expected the killed run's temporary files"
    assert artifacts_in(backups) == []
    listed = subprocess.run([sys.executable, "-m", "worker", "list", "--json"], env=env, cwd=tmp_path,
                            capture_output=True, text=True)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []

    again = subprocess.run([sys.executable, "-m", "worker", "backup", "--no-upload"], env={**env, "BACKUP_COMPRESSION_LEVEL": "1"},
                           cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert temporaries_in(backups) == []
    assert len([n for n in artifacts_in(backups) if n.endswith(".zst")]) == 1
    assert "backup.stale_temporaries_removed" in again.stderr  # one-shot commands log to stderr
    with sqlite3.connect(backups / "catalog.db") as catalog:  # the killed run's row does not stay `running` forever
        outcomes = sorted(row[0] for row in catalog.execute("SELECT outcome FROM runs WHERE job = 'backup'"))
    assert outcomes == ["interrupted", "succeeded"]


def test_full_disk_fails_cleanly_and_leaves_no_partial_files(tmp_path: Path, worker_env) -> None:
    db = tmp_path / "app.db"
    fill(db, 8)
    limit = 2 << 20  # files may not grow past 2 MiB: the snapshot cannot be written

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    completed = subprocess.run([sys.executable, "-m", "worker", "backup", "--no-upload"], env=worker_env, cwd=tmp_path,
                               capture_output=True, text=True, preexec_fn=small_files, timeout=120)
    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    assert "free space" in completed.stderr or "space" in completed.stderr
    failed = [json.loads(line) for line in completed.stderr.splitlines() if '"job.failed"' in line]
    assert failed and failed[0]["stage"] in ("snapshot", "compress")
    backups = tmp_path / "backups"
    assert artifacts_in(backups) == [] and temporaries_in(backups) == []


def test_free_space_is_checked_before_anything_is_written(tmp_path: Path, app_db: Path, monkeypatch) -> None:
    backups = tmp_path / "backups"
    from jobs import files

    monkeypatch.setattr(files.shutil, "disk_usage", lambda _: type("Usage", (), {"free": 1024, "total": 1 << 40})())
    settings = pipeline.BackupSettings(backups, 3, retention.Policy(7, 3))
    with pytest.raises(SpaceError, match="MiB free but this backup needs about"):
        pipeline.take_backup(SqliteSource(app_db), settings, threading.Event())
    assert artifacts_in(backups) == [] and temporaries_in(backups) == []


def test_restore_over_the_live_database_is_seen_by_open_connections(tmp_path: Path, app_db: Path, worker) -> None:
    assert worker("backup", "--no-upload").code == 0
    app = sqlite3.connect(app_db, isolation_level=None)  # the app keeps this connection open throughout
    app.execute("DELETE FROM messages WHERE id > 10")
    assert app.execute("SELECT count(*) FROM messages").fetchone()[0] == 10

    result = worker("restore", "--latest", "--yes")
    assert result.code == 0, result.stderr
    assert app.execute("SELECT count(*) FROM messages").fetchone()[0] == 1000
    assert app.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    safety = Path(result.event("job.succeeded")["safety_copy"])
    assert str(safety) in result.stdout
    assert safety.stat().st_mode & 0o777 == 0o600
    saved = sqlite3.connect(safety)
    assert saved.execute("SELECT count(*) FROM messages").fetchone()[0] == 10


def test_restore_over_the_live_database_refuses_without_a_terminal_or_yes(tmp_path: Path, app_db: Path, worker) -> None:
    assert worker("backup", "--no-upload").code == 0
    before = app_db.read_bytes()
    result = worker("restore", "--latest", stdin="")
    assert result.code == 2
    assert "--yes" in result.stderr
    assert app_db.read_bytes() == before


def test_restore_to_a_new_file_gives_the_same_database(tmp_path: Path, worker) -> None:
    assert worker("backup", "--no-upload").code == 0
    target = tmp_path / "copy.db"
    result = worker("restore", "--to", str(target))
    assert result.code == 0, result.stderr
    assert target.stat().st_mode & 0o777 == 0o600
    assert sqlite3.connect(target).execute("SELECT count(*) FROM messages").fetchone()[0] == 1000
    again = worker("restore", "--to", str(target))
    assert again.code == 2 and "already exists" in again.stderr


def test_verify_refuses_a_damaged_artifact(tmp_path: Path, worker) -> None:
    assert worker("backup", "--no-upload").code == 0
    assert worker("verify", "--latest").code == 0
    artifact = next((tmp_path / "backups").glob("*.zst"))
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    result = worker("verify")
    assert result.code == 1 and "SHA-256" in result.stderr


def test_verify_catches_a_damaged_frame_even_when_the_manifest_hash_was_rewritten(tmp_path: Path, worker) -> None:
    import hashlib

    assert worker("backup", "--no-upload").code == 0
    artifact = next((tmp_path / "backups").glob("*.zst"))
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    manifest_path = artifact.with_name(artifact.name + ".json")
    manifest = json.loads(manifest_path.read_text())
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    result = worker("verify")
    assert result.code == 1
    assert "decompress" in result.stderr or "integrity" in result.stderr.lower()


def test_prune_never_touches_files_the_worker_did_not_write(tmp_path: Path, worker) -> None:
    backups = tmp_path / "backups"
    backups.mkdir(mode=0o700)
    foreign = [backups / "notes.txt", backups / "app-old.sqlite.zst", backups / "dump.sql"]
    for path in foreign:
        path.write_text("mine")
        os.utime(path, (0, 0))
    for _ in range(2):
        assert worker("backup", "--no-upload", env={"BACKUP_RETENTION_DAYS": "0", "BACKUP_KEEP_MIN": "1"}).code == 0
    assert worker("prune", env={"BACKUP_RETENTION_DAYS": "0", "BACKUP_KEEP_MIN": "1"}).code == 0
    assert all(path.exists() for path in foreign)
    assert len(list(backups.glob("*.sqlite.zst.json"))) == 1


def test_stale_temporaries_of_dead_runs_are_removed_but_a_live_runs_are_kept(tmp_path: Path) -> None:
    from jobs.destinations.local import LocalDestination

    backups = tmp_path / "backups"
    backups.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (backups / f".tmp-{dead}-app-20261122T020000Z.sqlite.zst").write_bytes(b"partial")
    (backups / f".tmp-{dead}-verify-abc").mkdir()
    from jobs.artifacts import temp_prefix

    live = backups / f"{temp_prefix()}restore-xyz"
    live.mkdir()
    predecessor = backups / f".tmp-{os.getpid()}-0badcafe-app-20261122T020000Z.sqlite"  # same pid, earlier life
    predecessor.write_bytes(b"partial")
    keep = backups / ".tmpfile-not-ours"
    keep.write_text("x")
    removed = LocalDestination(backups).remove_stale_temporaries()
    assert sorted(removed) == sorted([f".tmp-{dead}-app-20261122T020000Z.sqlite.zst", f".tmp-{dead}-verify-abc", predecessor.name])
    assert live.exists() and keep.exists()


def test_the_raw_snapshot_is_private_while_it_exists(tmp_path: Path, app_db: Path) -> None:
    previous = os.umask(0o022)
    try:
        with SqliteSource(app_db).snapshot(tmp_path, threading.Event()) as snap:
            mode = os.fstat(snap.stream.fileno()).st_mode
            snap.check.close()
    finally:
        os.umask(previous)
    assert mode & 0o777 == 0o600
    assert list(tmp_path.glob("snapshot*")) == []


def test_restore_refuses_up_front_when_the_target_volume_is_too_small(tmp_path: Path, worker, monkeypatch) -> None:
    from jobs import restore as restoring
    from jobs.backups import list_backups
    from jobs.destinations.local import LocalDestination
    from jobs.errors import SpaceError

    assert worker("backup", "--no-upload").code == 0
    local = LocalDestination(tmp_path / "backups")
    (backup,), _ = list_backups(local)
    from jobs import files

    monkeypatch.setattr(files.shutil, "disk_usage", lambda _: type("Usage", (), {"free": 4096})())
    target = tmp_path / "out.db"
    with pytest.raises(SpaceError, match="MiB free but"):
        restoring.restore_to_file(local.path(backup.artifact), backup, target, threading.Event())
    assert not target.exists() and [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


class StopWhen(threading.Event):
    """A stop flag that sets itself the first time `predicate()` is true when someone looks at it."""

    def __init__(self, predicate) -> None:  # noqa: ANN001
        super().__init__()
        self.predicate = predicate

    def is_set(self) -> bool:
        if not super().is_set() and self.predicate():
            self.set()
        return super().is_set()


def test_a_stop_during_compression_leaves_only_removed_temporaries(tmp_path: Path) -> None:
    from jobs.errors import Cancelled

    db = tmp_path / "app.db"
    fill(db, 8)
    backups = tmp_path / "backups"
    settings = pipeline.BackupSettings(backups, 3, retention.Policy(7, 3))
    compressing = StopWhen(lambda: any(name.endswith(".zst") for name in temporaries_in(backups)))
    with pytest.raises(Cancelled, match="compression was interrupted"):
        pipeline.take_backup(SqliteSource(db), settings, compressing)
    assert artifacts_in(backups) == [] and temporaries_in(backups) == []


def test_a_stop_during_the_snapshot_ends_the_copy_part_way(tmp_path: Path) -> None:
    from jobs.errors import Cancelled

    db = tmp_path / "app.db"
    fill(db, 40)
    backups = tmp_path / "backups"
    copied: list[int] = []

    def copying() -> bool:  # the snapshot file has pages in it: the copy is under way
        files = [p for p in backups.rglob("*") if p.is_file() and not p.name.endswith((".zst", ".json", "-journal"))]
        sizes = [p.stat().st_size for p in files]
        if sizes and sizes[0] > 0:
            copied.append(sizes[0])
            return True
        return False

    with pytest.raises(Cancelled, match="the snapshot of .* was interrupted"):
        pipeline.take_backup(SqliteSource(db), pipeline.BackupSettings(backups, 3, retention.Policy(7, 3)), StopWhen(copying))
    assert copied and copied[0] < db.stat().st_size // 2, "the stop was only seen once the whole database was copied"
    assert artifacts_in(backups) == [] and temporaries_in(backups) == []


def test_a_source_locked_for_too_long_fails_with_a_clear_message(tmp_path: Path, monkeypatch) -> None:
    from jobs.engines import _sqlite
    from jobs.errors import SourceError

    db = make_app_db(tmp_path / "locked.db", wal=False)
    monkeypatch.setattr(_sqlite, "BUSY_TIMEOUT_S", 0.5)
    app = sqlite3.connect(db, isolation_level=None)
    app.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(SourceError, match="waited 0.5 s for another connection's lock"):
            SqliteSource(db).copy_to(tmp_path / "snap.db", threading.Event())
    finally:
        app.close()
    assert not (tmp_path / "snap.db").exists() and not (tmp_path / "snap.db-journal").exists()


def test_a_malformed_manifest_is_skipped_and_backups_go_on(tmp_path: Path, worker) -> None:
    backups = tmp_path / "backups"
    backups.mkdir(mode=0o700)
    (backups / "app-20200101T000000Z.sqlite.zst").write_bytes(b"x")
    (backups / "app-20200101T000000Z.sqlite.zst.json").write_text('{"created_at": null}')
    result = worker("backup", "--no-upload")
    assert result.code == 0, result.stderr
    assert (backups / "app-20200101T000000Z.sqlite.zst.json").exists()
    listed = worker("list", "--json")
    assert listed.code == 0 and len(json.loads(listed.stdout)) == 1


@pytest.mark.parametrize("failing", ["write", "rename"])
def test_a_manifest_that_cannot_be_written_takes_its_artifact_with_it(tmp_path: Path, app_db: Path, monkeypatch,
                                                                       failing: str) -> None:
    from jobs import publish
    from jobs.errors import StorageError

    def no_space(*_: object) -> None:
        raise OSError(28, "No space left on device")

    if failing == "write":
        monkeypatch.setattr(pipeline, "write_manifest", no_space)
    else:
        real_rename = os.rename
        monkeypatch.setattr(publish.os, "rename", lambda a, b: no_space() if str(b).endswith(".json") else real_rename(a, b))
    backups = tmp_path / "backups"
    with pytest.raises(StorageError, match="No space left"):
        pipeline.take_backup(SqliteSource(app_db), pipeline.BackupSettings(backups, 3, retention.Policy(7, 3)), threading.Event())
    assert artifacts_in(backups) == [] and temporaries_in(backups) == []


def test_two_restores_in_the_same_second_keep_both_safety_copies(tmp_path: Path, app_db: Path, worker) -> None:
    from jobs.engines._sqlite_files import safety_copy_path

    moment = datetime.now(timezone.utc)
    first = safety_copy_path(app_db, moment)
    first.write_bytes(b"earlier safety copy")
    second = safety_copy_path(app_db, moment)
    assert second != first and second.name.endswith("-2")
