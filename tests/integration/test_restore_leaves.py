"""What a restore over a live SQLite database leaves behind: the database file keeps its mode and owner, on the
healthy path (the backup API writes into the file) and the damaged path (a new file renamed into place, or, when
the worker cannot give a new file that owner, the proven bytes written into the file itself); and the safety
copies this worker made beside it do not pile up (the newest BACKUP_KEEP_MIN besides the one just made stay),
while nothing else beside the database is touched."""

import json
import os
from pathlib import Path
import re
import shutil
import sqlite3
import tempfile
import threading
import time

import pytest

from jobs.engines import sqlite_copies
from jobs.engines.sqlite_restore import restore_live
from tests.conftest import make_app_db
from tests.integration.test_sqlite_restore import count, pre_restore_files

OTHER_UID, OTHER_GID = 1234, 1234


def damage(database: Path) -> None:
    database.write_bytes(b"garbage" * 4096)


@pytest.mark.parametrize("wal", [True, False], ids=["wal", "rollback"])
@pytest.mark.parametrize("damaged", [False, True], ids=["healthy", "damaged"])
def test_a_restore_keeps_the_database_files_mode_and_owner(tmp_path: Path, worker, worker_env, wal: bool, damaged: bool) -> None:
    database = make_app_db(tmp_path / "live.db", rows=300, wal=wal)
    env = {"BACKUP_SOURCE": f"sqlite:///{database}"}
    assert worker("backup", "--no-upload", env=env).code == 0
    with sqlite3.connect(database) as db:
        db.execute("DELETE FROM messages WHERE id > 100")
    os.chown(database, OTHER_UID, OTHER_GID)
    os.chmod(database, 0o640)
    if damaged:
        damage(database)
    result = worker("restore", "--latest", "--yes", env=env)
    assert result.code == 0, result.stderr
    status = database.stat()
    assert (oct(status.st_mode & 0o7777), status.st_uid, status.st_gid) == (oct(0o640), OTHER_UID, OTHER_GID)
    assert count(database) == 300


@pytest.fixture
def shared_dir() -> Path:
    """A directory another user can work in (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="bw-restore-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_a_worker_that_is_not_root_restores_a_damaged_database_in_its_own_file(shared_dir: Path) -> None:
    """The worker (uid 1234, group 1234) may write the app's database (uid 1235, group 1234, mode 0660) but cannot
    give a new file the app's owner: renaming a new file into place would hand the database to the worker."""
    good = make_app_db(shared_dir / "good.db", rows=200, wal=False)
    raw = shared_dir / "raw.db"
    shutil.copyfile(good, raw)
    os.chown(raw, OTHER_UID, OTHER_GID)
    database = shared_dir / "app.db"
    shutil.copyfile(good, database)
    damage(database)
    os.chown(database, OTHER_UID + 1, OTHER_GID)
    os.chmod(database, 0o660)
    inode = database.stat().st_ino
    notes: list[str] = []
    os.setegid(OTHER_GID)
    os.seteuid(OTHER_UID)
    try:
        safety = restore_live(database, raw, threading.Event(), notes.append)
    finally:
        os.seteuid(0)
        os.setegid(0)
    status = database.stat()
    assert (status.st_uid, status.st_gid, oct(status.st_mode & 0o7777)) == (OTHER_UID + 1, OTHER_GID, oct(0o660))
    assert status.st_ino == inode and database.read_bytes() == raw.read_bytes() and count(database) == 200
    assert safety.is_dir() and (safety / "app.db").read_bytes() == b"garbage" * 4096
    assert any("written into the file itself" in note for note in notes)


# --- safety copies ----------------------------------------------------------------------------------------------

def plant_look_alikes(directory: Path) -> dict[Path, bytes | None]:
    """Files and directories beside app.db that look like safety copies but are not this worker's; return them
    with their content (None for directories)."""
    planted: dict[Path, bytes | None] = {}

    def file(name: str, mode: int = 0o600, uid: int | None = None) -> None:
        path = directory / name
        path.write_bytes(name.encode())
        path.chmod(mode)
        if uid is not None:
            os.chown(path, uid, uid)
        planted[path] = path.read_bytes()

    file("app.db.pre-restore-20200101T000000Z", uid=OTHER_UID)  # another owner
    file("app.db.pre-restore-20200101T000001Z", mode=0o644)  # another mode
    file("app.db.pre-restore-20200101T000002Z.bak")  # another name
    file("app.db.pre-restore-2020")  # another name
    file("other.db.pre-restore-20200101T000000Z")  # another database's
    file("app.db.old")
    link = directory / "app.db.pre-restore-20200101T000003Z"
    link.symlink_to(directory / "app.db.old")  # a link
    planted[link] = None
    for name, mode, inside in (("app.db.pre-restore-20200101T000004Z", 0o755, "app.db"),  # another mode
                               ("app.db.pre-restore-20200101T000005Z", 0o700, "notes.txt")):  # not a copy of ours
        folder = directory / name
        folder.mkdir(mode=mode)
        folder.chmod(mode)
        (folder / inside).write_bytes(b"theirs")
        planted[folder] = None
    return planted


def test_safety_copies_do_not_pile_up_and_nothing_else_is_touched(tmp_path: Path, app_db: Path, worker) -> None:
    database = app_db
    assert worker("backup", "--no-upload").code == 0
    planted = plant_look_alikes(tmp_path)
    made: list[Path] = []
    outputs = []
    for number in range(5):
        if number == 1:
            damage(database)  # its safety copy is a directory of the damaged files
        result = worker("restore", "--latest", "--yes", env={"BACKUP_KEEP_MIN": "2"})
        assert result.code == 0, result.stderr
        made.append(Path(re.search(r"the previous database was saved as (\S+)", result.stdout)[1]))
        outputs.append(result.stdout)
    ours = [path for path in pre_restore_files(tmp_path) if path not in planted]
    assert sorted(ours) == sorted(made[2:])  # the one just made and the newest 2 before it
    assert made[1].name not in {path.name for path in ours}  # the damaged database's directory went too
    for path, content in planted.items():
        assert path.is_symlink() or path.exists(), f"{path} was removed"
        if content is not None:
            assert path.read_bytes() == content
    assert (tmp_path / "app.db.pre-restore-20200101T000005Z" / "notes.txt").read_bytes() == b"theirs"
    assert "removed" not in outputs[0] and "removed" not in outputs[1] and "removed" not in outputs[2]
    assert f"removed the older safety copy {made[0]} (BACKUP_KEEP_MIN=2: kept" in outputs[3]
    assert f"removed the older safety copy {made[1]}" in outputs[4]
    assert count(database) == 1000


def next_second() -> None:
    """Wait until the clock's second changes (safety copies are named to the second)."""
    start = int(time.time())
    while int(time.time()) == start:
        time.sleep(0.02)


def test_only_copies_the_worker_recorded_are_removed_and_its_ledger_is_private_and_untrusted(
        tmp_path: Path, app_db: Path, worker) -> None:
    assert worker("backup", "--no-upload").code == 0
    yours = tmp_path / "app.db.pre-restore-20200101T000000Z"  # named, owned and moded as ours: made by a person
    shutil.copyfile(app_db, yours)
    yours.chmod(0o600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    decoy = elsewhere / "app.db.pre-restore-20200101T000001Z"  # the ledger will name it: not beside the database
    decoy.write_bytes(b"keep me")
    decoy.chmod(0o600)
    made = []
    for number in range(4):
        if number == 1:
            ledger = tmp_path / "backups" / sqlite_copies.LEDGER_NAME
            assert oct(ledger.stat().st_mode & 0o777) == oct(0o600)
            data = json.loads(ledger.read_text())
            data["copies"][:0] = [{"path": str(decoy), "database": str(app_db)}, {"path": str(yours), "database": "x.db"},
                                  "not an entry", {"path": 7}]
            ledger.write_text(json.dumps(data))
        next_second()  # a copy made in the second of one removed takes its free name: the paths would not tell
        result = worker("restore", "--latest", "--yes", env={"BACKUP_KEEP_MIN": "1"})
        assert result.code == 0, result.stderr
        made.append(Path(re.search(r"the previous database was saved as (\S+)", result.stdout)[1]))
    assert yours.exists() and decoy.read_bytes() == b"keep me"
    assert not made[0].exists() and not made[1].exists() and made[2].exists() and made[3].exists()
    ledger.write_text("{not json")  # a damaged ledger removes nothing, and the restore still works
    result = worker("restore", "--latest", "--yes", env={"BACKUP_KEEP_MIN": "1"})
    assert result.code == 0, result.stderr
    assert made[2].exists() and made[3].exists() and yours.exists()


@pytest.mark.parametrize(("names", "keep", "just_made", "removed"), [
    ([], 3, None, []),
    (["a-20260101T000000Z"], 1, "a-20260101T000000Z", []),
    (["a-20260101T000000Z", "a-20260101T000001Z"], 1, "a-20260101T000001Z", []),
    (["a-20260101T000000Z", "a-20260101T000001Z", "a-20260101T000002Z"], 1, "a-20260101T000002Z", ["a-20260101T000000Z"]),
    # the order is the order they were made in (the ledger's), oldest first, whatever their names say
    (["a-20260101T000000Z-3", "a-20260101T000000Z", "a-20260101T000000Z-2", "a-20260101T000000Z-10"], 1,
     "a-20260101T000000Z-10", ["a-20260101T000000Z", "a-20260101T000000Z-3"]),
    # the one just made is never removed, even when the clock says it is the oldest; one made while the clock
    # was a century ahead is older than one made after it
    (["a-20990101T000000Z", "a-20980101T000000Z", "a-20260101T000000Z"], 1, "a-20260101T000000Z", ["a-20990101T000000Z"]),
])
def test_which_safety_copies_go(names: list[str], keep: int, just_made: str | None, removed: list[str]) -> None:
    copies = [sqlite_copies.parse(Path(f"/data/app.db.pre-restore-{name[2:]}"), "app.db") for name in names]
    made = Path(f"/data/app.db.pre-restore-{just_made[2:]}") if just_made else None
    gone = sqlite_copies.to_remove(copies, keep, made)
    assert [copy.path.name.removeprefix("app.db.pre-restore-") for copy in gone] == [name[2:] for name in removed]


def test_short_space_names_the_older_safety_copies_and_a_failed_restore_removes_none(tmp_path: Path, monkeypatch) -> None:
    from jobs import files, restore as restoring
    from jobs.engines.sqlite import SqliteSource
    from jobs.errors import SpaceError
    from tests.integration.test_sqlite_restore import backup_of

    database = make_app_db(tmp_path / "app.db", rows=5000)
    artifact, backup = backup_of(database, tmp_path / "backups")
    old = []
    for stamp in ("20260101T000000Z", "20260102T000000Z"):
        path = tmp_path / f"app.db.pre-restore-{stamp}"
        shutil.copyfile(database, path)
        path.chmod(0o600)
        old.append(path)
    raw = backup.manifest["raw_size"]
    free = raw + (16 << 20) + raw // 2  # room to unpack, not for the new safety copy and the restored pages
    monkeypatch.setattr(files.shutil, "disk_usage", lambda _: type("Usage", (), {"free": free})())
    with pytest.raises(SpaceError, match=r"2 earlier safety copies beside the database take \d+ MiB \(the oldest: "
                                         rf"{old[0]}\).*only once it has succeeded"):
        restoring.restore_over(artifact, backup, SqliteSource(database), tmp_path / "backups", threading.Event())
    assert all(path.exists() for path in old)
