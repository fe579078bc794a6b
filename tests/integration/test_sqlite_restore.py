"""Restores of SQLite backups on real files: leftovers beside a new file, damaged live databases, stops before
and after the commit, a concurrent writer, space on each volume, and paths never built from manifests."""

import os
from pathlib import Path
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Callable

import pytest

from jobs import files, pipeline, restore as restoring, retention
from jobs.backups import Backup, list_backups
from jobs.destinations.local import LocalDestination
from jobs.engines.sqlite import SqliteSource
from jobs.errors import Cancelled, SpaceError
from tests.conftest import make_app_db

WRITER = Path(__file__).with_name("writer.py")


class StopWhen(threading.Event):
    """A stop flag that sets itself the first time `predicate()` is true when someone looks at it."""

    def __init__(self, predicate: Callable[[], bool]) -> None:
        super().__init__()
        self.predicate = predicate

    def is_set(self) -> bool:
        if not super().is_set() and self.predicate():
            self.set()
        return super().is_set()


def backup_of(db: Path, backups: Path) -> tuple[Path, Backup]:
    """Take a backup of `db` into `backups`; return its artifact path and Backup."""
    pipeline.take_backup(SqliteSource(db), pipeline.BackupSettings(backups, 3, retention.Policy(7, 3)), threading.Event())
    local = LocalDestination(backups)
    (backup,), _ = list_backups(local)
    return local.path(backup.artifact), backup


def raw_bytes(artifact: Path) -> bytes:
    return subprocess.run(["zstd", "-q", "-dc", str(artifact)], capture_output=True, check=True).stdout


def count(db: Path, table: str = "messages") -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def pre_restore_files(directory: Path) -> list[Path]:
    """Return the safety copies in `directory`; their temporaries while they are written do not count."""
    return sorted(p for p in directory.iterdir() if ".pre-restore-" in p.name and not p.name.startswith(".tmp-"))


def temporaries(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith(".tmp-"))


# --- restore --to PATH ----------------------------------------------------------------------------------------

def test_restore_to_a_path_with_another_databases_wal_beside_it_is_refused_and_the_wal_is_kept(tmp_path: Path, worker) -> None:
    assert worker("backup", "--no-upload").code == 0
    other = make_app_db(tmp_path / "other.db", rows=50)
    keeper = sqlite3.connect(other)  # keeps its WAL un-checkpointed while we copy it
    keeper.execute("PRAGMA wal_autocheckpoint=0")
    keeper.execute("INSERT INTO messages (body) VALUES ('only in the wal')")
    keeper.commit()
    target = tmp_path / "restored" / "app.db"
    target.parent.mkdir()
    leftover = target.with_name("app.db-wal")
    leftover.write_bytes((tmp_path / "other.db-wal").read_bytes())
    keeper.close()
    before = leftover.read_bytes()

    result = worker("restore", "--to", str(target))
    assert result.code == 2
    assert str(leftover) in result.stderr and "Traceback" not in result.stderr
    assert not target.exists()
    assert leftover.read_bytes() == before, "the leftover WAL was changed or removed"


@pytest.mark.parametrize("suffix", ["-journal", "-shm"])
def test_restore_to_a_path_with_a_journal_or_shm_beside_it_is_refused(tmp_path: Path, worker, suffix: str) -> None:
    assert worker("backup", "--no-upload").code == 0
    target = tmp_path / "new.db"
    target.with_name("new.db" + suffix).write_bytes(b"left by someone")
    result = worker("restore", "--to", str(target))
    assert result.code == 2 and f"new.db{suffix}" in result.stderr
    assert not target.exists() and target.with_name("new.db" + suffix).read_bytes() == b"left by someone"


def test_restore_to_a_new_path_opens_to_exactly_the_backup(tmp_path: Path, app_db: Path, worker) -> None:
    assert worker("backup", "--no-upload").code == 0
    artifact = next((tmp_path / "backups").glob("*.zst"))
    target = tmp_path / "copy.db"
    result = worker("restore", "--to", str(target))
    assert result.code == 0, result.stderr
    assert target.read_bytes() == raw_bytes(artifact)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("copy.db")] == ["copy.db"]
    with sqlite3.connect(target) as restored, sqlite3.connect(app_db) as live:
        assert list(restored.iterdump()) == list(live.iterdump())
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


# --- restore over the live database ---------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["not-a-database", "malformed"])
def test_restoring_over_a_damaged_live_database_keeps_a_plain_copy_of_its_files_and_restores(
        tmp_path: Path, app_db: Path, worker, damage: str) -> None:
    assert worker("backup", "--no-upload").code == 0
    artifact = next((tmp_path / "backups").glob("*.zst"))
    wal, shm = app_db.with_name("app.db-wal"), app_db.with_name("app.db-shm")
    writer = sqlite3.connect(app_db)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("INSERT INTO messages (body) VALUES ('in the wal of the damaged db')")
    writer.commit()
    sidecars = {path: path.read_bytes() for path in (wal, shm)}
    writer.close()  # checkpoints and deletes the WAL; the app died and left them, so put them back
    for path, data in sidecars.items():
        path.write_bytes(data)
    if damage == "not-a-database":
        app_db.write_bytes(b"garbage" * 4096)
    else:
        data = bytearray(app_db.read_bytes())
        data[100:4096] = os.urandom(3996)  # the schema page: SQLite reports the file as malformed
        app_db.write_bytes(bytes(data))
    damaged = {path.name: path.read_bytes() for path in (app_db, wal)}

    result = worker("restore", "--latest", "--yes")
    assert result.code == 0, result.stderr
    (safety,) = pre_restore_files(tmp_path)
    assert safety.is_dir() and str(safety) in result.stderr
    copied = {path.name: path.read_bytes() for path in safety.iterdir()}
    assert copied.pop("app.db-shm"), "the -shm was not copied"  # an index SQLite rebuilds from the WAL when it opens
    assert copied == damaged
    assert temporaries(tmp_path) == []
    assert not wal.exists() and not shm.exists() and not app_db.with_name("app.db-journal").exists()
    assert app_db.read_bytes() == raw_bytes(artifact)
    assert count(app_db) == 1000


def test_a_live_database_that_is_only_locked_is_never_treated_as_damaged(tmp_path: Path, monkeypatch) -> None:
    from jobs.engines import _sqlite
    from jobs.errors import SourceError

    db = make_app_db(tmp_path / "app.db", wal=False)
    artifact, backup = backup_of(db, tmp_path / "backups")
    monkeypatch.setattr(_sqlite, "BUSY_TIMEOUT_S", 0.5)
    app = sqlite3.connect(db, isolation_level=None)
    app.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(SourceError, match="lock.*the live database was not changed"):
            restoring.restore_over(artifact, backup, SqliteSource(db), tmp_path / "backups", threading.Event())
    finally:
        app.close()
    assert pre_restore_files(tmp_path) == [] and count(db) == 1000


def test_the_safety_copy_is_announced_before_the_live_database_changes(tmp_path: Path) -> None:
    db = make_app_db(tmp_path / "app.db")
    artifact, backup = backup_of(db, tmp_path / "backups")
    with sqlite3.connect(db) as app:
        app.execute("DELETE FROM messages WHERE id > 3")
    heard = []
    safety, _ = restoring.restore_over(artifact, backup, SqliteSource(db), tmp_path / "backups", threading.Event(),
                                       notify=lambda line: heard.append((line, count(db))))
    assert heard == [(f"the live database {db} is saved as {safety} before the restore", 3)]
    assert count(safety) == 3 and count(db) == 1000


@pytest.mark.parametrize("wal", [True, False], ids=["wal", "rollback-journal"])
def test_a_stop_before_the_commit_changes_nothing_and_keeps_the_safety_copy(tmp_path: Path, wal: bool) -> None:
    db = make_app_db(tmp_path / "app.db", rows=20000, wal=wal)
    artifact, backup = backup_of(db, tmp_path / "backups")
    with sqlite3.connect(db) as app:
        app.execute("DELETE FROM messages WHERE id > 3")
    before = count(db)
    stop = StopWhen(lambda: bool(pre_restore_files(tmp_path)))  # the safety copy is complete: stop now
    with pytest.raises(Cancelled, match="the live database was not changed; the safety copy .* is kept"):
        restoring.restore_over(artifact, backup, SqliteSource(db), tmp_path / "backups", stop)
    assert count(db) == before
    (safety,) = pre_restore_files(tmp_path)
    assert count(safety) == before
    with sqlite3.connect(db) as app:
        assert app.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_stop_after_the_restore_has_committed_does_not_make_it_fail(tmp_path: Path) -> None:
    db = make_app_db(tmp_path / "app.db", rows=20000)
    artifact, backup = backup_of(db, tmp_path / "backups")
    with sqlite3.connect(db) as app:
        app.execute("DELETE FROM messages WHERE id > 3")

    def committed() -> bool:  # a reader sees the restored rows only once the restore has committed
        try:
            return count(db) == 20000
        except sqlite3.OperationalError:
            return False

    stop = StopWhen(committed)
    safety, checks = restoring.restore_over(artifact, backup, SqliteSource(db), tmp_path / "backups", stop)
    assert count(db) == 20000 and count(safety) == 3
    assert checks[-1] == "PRAGMA integrity_check"


@pytest.mark.parametrize("wal", [True, False], ids=["wal", "rollback-journal"])
def test_every_commit_of_a_concurrent_writer_is_in_the_safety_copy_or_after_the_restore(tmp_path: Path, wal: bool) -> None:
    db = make_app_db(tmp_path / "app.db", rows=60000, wal=wal)  # ~10 MiB: the safety copy takes a while
    with sqlite3.connect(db) as app:
        app.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, at REAL, note TEXT)")
        app.execute("CREATE TABLE totals (k INTEGER PRIMARY KEY, n INTEGER)")
    artifact, backup = backup_of(db, tmp_path / "backups")
    committed = tmp_path / "committed.txt"
    writer = subprocess.Popen([sys.executable, str(WRITER), str(db), str(tmp_path / "w.txt"), "--seconds", "120",
                               "--committed", str(committed)])
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "w.txt.ready").exists():
            assert time.monotonic() < deadline and writer.poll() is None, "the writer did not start"
            time.sleep(0.01)
        time.sleep(0.5)
        safety, _ = restoring.restore_over(artifact, backup, SqliteSource(db), tmp_path / "backups", threading.Event())
        time.sleep(0.5)
    finally:
        writer.send_signal(signal.SIGTERM)
        assert writer.wait(60) == 0
    notes = committed.read_text().split()
    assert notes, "the writer committed nothing"

    def ledger(path: Path) -> set[str]:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            return {row[0].rstrip("x") for row in connection.execute("SELECT note FROM ledger")}

    saved, live = ledger(safety), ledger(db)
    lost = [note for note in notes if note not in saved and note not in live]
    assert lost == [], f"{len(lost)} committed rows are in neither the safety copy nor the restored database"
    assert saved and live, "the writer should have committed both before and after the restore"
    assert not saved & live, "a row the restore replaced came back"
    assert count(db) == 60000


# --- space and paths ------------------------------------------------------------------------------------------

def test_restore_over_the_live_database_counts_the_safety_copy_on_its_volume(tmp_path: Path, monkeypatch) -> None:
    db = make_app_db(tmp_path / "app.db", rows=20000)
    artifact, backup = backup_of(db, tmp_path / "backups")
    raw = backup.manifest["raw_size"]
    # enough to unpack the backup, not enough to also hold the safety copy and the restored pages beside it
    free = raw + (16 << 20) + raw // 2
    monkeypatch.setattr(files.shutil, "disk_usage", lambda _: type("Usage", (), {"free": free})())
    with pytest.raises(SpaceError, match=f"{tmp_path}.* needs about"):
        restoring.restore_over(artifact, backup, SqliteSource(db), tmp_path / "backups", threading.Event())
    assert pre_restore_files(tmp_path) == []
    assert [p for p in (tmp_path / "backups").iterdir() if p.name.startswith(".tmp-")] == []


def test_space_on_one_volume_is_the_sum_of_everything_landing_there(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.setattr(files.shutil, "disk_usage", lambda _: type("Usage", (), {"free": 150 << 20})())
    restoring.require_space([(tmp_path / "a", 100 << 20)], "one thing")
    with pytest.raises(SpaceError, match="needs about 200 MiB"):
        restoring.require_space([(tmp_path / "a", 100 << 20), (tmp_path / "b", 100 << 20)], "two things")


def test_a_manifest_id_never_builds_a_path(tmp_path: Path) -> None:
    db = make_app_db(tmp_path / "app.db")
    artifact, backup = backup_of(db, tmp_path / "backups")
    planted = Backup(id="../outside/planted", artifact=backup.artifact, created_at=backup.created_at, size=backup.size,
                     sha256=backup.sha256, verified=True, manifest={**backup.manifest, "id": "../outside/planted"})
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "outside").mkdir()
    written: list[str] = []
    watching = [True]

    def audit(event: str, args: tuple) -> None:
        if event == "open" and watching and isinstance(args[0], (str, bytes, os.PathLike)):
            written.append(os.path.abspath(os.fsdecode(args[0])))

    sys.addaudithook(audit)  # every file opened from here on, by Python or by os.open
    try:
        target = work / "restored.db"
        restoring.restore_to_file(artifact, planted, target, threading.Event())
        assert restoring.check_artifact(artifact, planted, work, threading.Event())[-1] == "PRAGMA integrity_check"
    finally:
        watching.clear()
    assert written and not [path for path in written if "outside" in path or "planted" in path]
    assert list((tmp_path / "outside").iterdir()) == [] and count(target) == 1000


def test_an_artifact_kind_with_no_engine_is_one_clear_sentence(tmp_path: Path, worker) -> None:
    assert worker("backup", "--no-upload").code == 0
    backups = tmp_path / "backups"
    artifact = next(backups.glob("*.zst"))
    manifest = artifact.with_name(artifact.name + ".json").read_text()
    odd = artifact.name.replace(".sqlite.zst", ".mysql.zst")
    (backups / odd).write_bytes(artifact.read_bytes())
    (backups / (odd + ".json")).write_text(manifest.replace(".sqlite", ".mysql").replace('"kind": "sqlite"', '"kind": "mysql"'))
    result = worker("verify", odd)
    assert result.code == 1
    assert "'mysql' cannot be checked or restored by this version" in result.stderr
    assert "bug" not in result.stderr and "Traceback" not in result.stderr


def test_what_a_killed_restore_left_beside_the_database_is_removed_by_the_next_one(tmp_path: Path) -> None:
    db = make_app_db(tmp_path / "app.db")
    artifact, backup = backup_of(db, tmp_path / "backups")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    staged = tmp_path / f".tmp-{dead}-0badcafe-app.db"
    half_copy = tmp_path / f".tmp-{dead}-0badcafe-app.db.pre-restore-20260101T000000Z"
    not_ours = tmp_path / f".tmp-{dead}-0badcafe-other.db"
    for path in (staged, half_copy, not_ours):
        path.write_bytes(b"left behind")
    restoring.restore_over(artifact, backup, SqliteSource(db), tmp_path / "backups", threading.Event())
    assert not staged.exists() and not half_copy.exists() and not_ours.exists()


def test_a_stale_temporary_name_that_is_a_symlink_loses_the_link_only(tmp_path: Path) -> None:
    db = make_app_db(tmp_path / "app.db")
    artifact, backup = backup_of(db, tmp_path / "backups")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (uploads / "photo.jpg").write_bytes(b"the app's")
    link = tmp_path / f".tmp-{dead}-0badcafe-app.db.pre-restore-20260101T000000Z"
    link.symlink_to(uploads, target_is_directory=True)
    restoring.restore_over(artifact, backup, SqliteSource(db), tmp_path / "backups", threading.Event())
    assert not link.is_symlink()
    assert (uploads / "photo.jpg").read_bytes() == b"the app's"
