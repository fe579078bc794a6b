"""One answer to "which backup": every command chooses the newest through jobs.selection, a damaged newest backup
is named (never silently replaced by an older one without --fallback), backups dated in the future never count,
and retention never deletes the last intact copies. Driven through `python -m worker` as a user would."""

from contextlib import closing
from datetime import datetime, timedelta, timezone
import json
import os
from pathlib import Path
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT


def count(db: Path) -> int:
    with closing(sqlite3.connect(db)) as connection:
        return connection.execute("SELECT count(*) FROM messages").fetchone()[0]


def add_rows(db: Path, rows: int) -> None:
    """Add rows and close the connection now: a connection left to the garbage collector checkpoints its WAL into
    the file whenever the collector runs, which would change the file's bytes in the middle of a test."""
    with closing(sqlite3.connect(db)) as connection, connection:
        connection.executemany("INSERT INTO messages (body) VALUES (?)", [(f"later {i}",) for i in range(rows)])


def backups(worker, n: int, db: Path) -> list[str]:
    """Take `n` backups a second apart, adding a row before each after the first; return their artifacts, oldest
    first."""
    found = []
    for number in range(n):
        if number:
            time.sleep(1.05)
            add_rows(db, 1)
        result = worker("backup", "--no-upload")
        assert result.code == 0, result.stderr
        found.append(result.event("job.succeeded")["artifact"])
    return found


def rot(path: Path) -> None:
    """Bit rot: one byte flipped in the middle, the size unchanged."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-50])


def move_in_time(directory: Path, artifact: str, when: datetime) -> str:
    """Rename a backup as a worker whose clock said `when` would have written it (artifact stamp, manifest id and
    created_at); its bytes and checksum are untouched. Return the new artifact name."""
    name, _, rest = artifact.partition("-20")
    kind = artifact.split(".")[-2]
    new = f"{name}-{when:%Y%m%dT%H%M%SZ}.{kind}.zst"
    manifest = json.loads((directory / f"{artifact}.json").read_text())
    manifest.update(id=new.removesuffix(".zst"), artifact=new, created_at=when.strftime("%Y-%m-%dT%H:%M:%SZ"))
    (directory / artifact).rename(directory / new)
    (directory / f"{artifact}.json").unlink()
    (directory / f"{new}.json").write_text(json.dumps(manifest))
    return new


def test_verify_latest_names_a_truncated_newest_backup_instead_of_verifying_an_older_one(tmp_path: Path, app_db: Path, worker) -> None:
    older, newest = backups(worker, 2, app_db)
    truncate(tmp_path / "backups" / newest)
    result = worker("verify", "--latest")
    assert result.code == 1
    assert newest in result.stderr and older.removesuffix(".zst") not in result.stdout


def test_verify_latest_names_a_bit_rotten_newest_backup(tmp_path: Path, app_db: Path, worker) -> None:
    _, newest = backups(worker, 2, app_db)
    rot(tmp_path / "backups" / newest)
    result = worker("verify", "--latest")
    assert result.code == 1 and newest in result.stderr and "SHA-256" in result.stderr


@pytest.mark.parametrize("damage", [truncate, rot])
def test_restore_latest_to_a_file_refuses_a_damaged_newest_and_fallback_takes_the_older(tmp_path: Path, app_db: Path, worker, damage) -> None:
    older, newest = backups(worker, 2, app_db)
    damage(tmp_path / "backups" / newest)
    target = tmp_path / "restored.db"
    refused = worker("restore", "--latest", "--to", str(target))
    assert refused.code == 1 and newest.removesuffix(".zst") in refused.stderr + refused.stdout
    assert "--fallback" in refused.stderr and not target.exists()
    fallen = worker("restore", "--latest", "--fallback", "--to", str(target))
    assert fallen.code == 0, fallen.stderr
    assert fallen.event("job.succeeded")["backup"] == older.removesuffix(".zst")
    assert count(target) == 1000


def test_restore_over_the_live_database_refuses_a_truncated_newest_backup_and_changes_nothing(tmp_path: Path, app_db: Path, worker) -> None:
    _, newest = backups(worker, 2, app_db)
    truncate(tmp_path / "backups" / newest)
    add_rows(app_db, 5)
    before = app_db.read_bytes()
    result = worker("restore", "--latest", "--yes")
    assert result.code == 1 and newest.removesuffix(".zst") in result.stderr
    assert app_db.read_bytes() == before and count(app_db) == 1006


def test_prune_never_deletes_the_only_intact_backup_when_the_newest_three_have_bit_rot(tmp_path: Path, app_db: Path, worker) -> None:
    intact, *rotten = backups(worker, 4, app_db)
    for artifact in rotten:
        rot(tmp_path / "backups" / artifact)
    result = worker("prune", env={"BACKUP_RETENTION_DAYS": "0", "BACKUP_KEEP_MIN": "3"})
    assert result.code == 0, result.stderr
    assert (tmp_path / "backups" / intact).exists() and (tmp_path / "backups" / f"{intact}.json").exists()
    assert "retention.damaged_backup" in result.stderr
    target = tmp_path / "restored.db"
    assert worker("restore", intact.removesuffix(".zst"), "--to", str(target)).code == 0
    assert count(target) == 1000


def test_a_backup_dated_a_year_ahead_is_never_the_newest_nor_fresh(tmp_path: Path, app_db: Path, worker) -> None:
    directory = tmp_path / "backups"
    real, wrong = backups(worker, 2, app_db)
    now = datetime.now(timezone.utc)
    real = move_in_time(directory, real, now - timedelta(days=3))  # the last good backup: three days ago
    ahead = move_in_time(directory, wrong, now + timedelta(days=365))  # written while the clock was a year ahead

    status = worker("status", "--json")
    report = json.loads(status.stdout)
    assert status.code == 1 and report["healthy"] is False
    assert report["newest_backup"] == real.removesuffix(".zst")
    assert report["future_backups"] == [ahead.removesuffix(".zst")]
    assert "future" in worker("status").stdout

    listed = json.loads(worker("list", "--json").stdout)
    assert {row["id"]: row["flags"] for row in listed}[ahead.removesuffix(".zst")] == ["future"]
    assert "DATED IN THE FUTURE" in worker("list").stdout

    target = tmp_path / "restored.db"
    restored = worker("restore", "--latest", "--to", str(target))
    assert restored.code == 0, restored.stderr
    assert restored.event("job.succeeded")["backup"] == real.removesuffix(".zst")

    sys.path.insert(0, str(ROOT))
    from worker.context import Context
    from worker.config import load_config
    from worker.service import needs_catch_up

    env = {key: value for key, value in os.environ.items() if not key.startswith(("BACKUP_", "S3_"))}
    env.update(BACKUP_SOURCE=f"sqlite:///{app_db}", BACKUP_DIR=str(directory))
    catch_up, why = needs_catch_up(Context(config=load_config(env, cwd=tmp_path), cwd=tmp_path), now)
    assert catch_up and real.removesuffix(".zst") in why


def test_a_cycle_whose_clock_is_a_month_ahead_deletes_no_backup_by_age(tmp_path: Path, app_db: Path, worker) -> None:
    directory = tmp_path / "backups"
    now = datetime.now(timezone.utc)
    week = [move_in_time(directory, artifact, now - timedelta(days=6 - day))
            for day, artifact in enumerate(backups(worker, 6, app_db))]
    # What the cycle of a worker whose clock is 30 days ahead does: write a backup stamped then, then retention.
    sys.path.insert(0, str(ROOT))
    from jobs import pipeline, retention
    from jobs.artifacts import BackupSet
    from jobs.destinations.local import LocalDestination

    local = LocalDestination(directory)
    fresh = move_in_time(directory, backups(worker, 1, app_db)[0], now + timedelta(days=30))
    plan = pipeline.apply_retention(local, retention.Policy(7, 3), now + timedelta(days=30), BackupSet("app", "sqlite"),
                                    fresh=fresh.removesuffix(".zst"))
    assert plan.delete == []
    assert all((directory / artifact).exists() for artifact in week)


def read_only(directory: Path, argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `python -m worker ARGV` with `directory` mounted read-only (a private mount namespace)."""
    script = (f'mount --bind "{directory}" "{directory}" && mount -o remount,bind,ro "{directory}" && '
              f'exec "{sys.executable}" -m worker "$@"')
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *argv], env=env, cwd=cwd, text=True,
                          capture_output=True, timeout=120)


def test_verify_and_restore_to_a_new_file_work_from_a_read_only_backup_volume(tmp_path: Path, app_db: Path, worker, worker_env) -> None:
    artifact = backups(worker, 1, app_db)[0]
    directory = tmp_path / "backups"
    (directory / ".retention.lock").unlink(missing_ok=True)  # nothing of ours may be needed there
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("this kernel refuses a private mount namespace")
    verify = read_only(directory, ["verify", "--latest"], worker_env, tmp_path)
    assert verify.returncode == 0, verify.stderr
    assert "is sound" in verify.stdout
    target = tmp_path / "restored.db"
    restore = read_only(directory, ["restore", artifact.removesuffix(".zst"), "--to", str(target)], worker_env, tmp_path)
    assert restore.returncode == 0, restore.stderr
    assert count(target) == 1000
    shutil.rmtree(directory)


def test_a_file_whose_stamp_is_no_real_time_breaks_no_command(tmp_path: Path, app_db: Path, worker) -> None:
    artifact = backups(worker, 1, app_db)[0]
    directory = tmp_path / "backups"
    bogus = "app-20261399T999999Z.sqlite.zst"
    shutil.copy(directory / artifact, directory / bogus)
    manifest = json.loads((directory / f"{artifact}.json").read_text())
    manifest.update(id=bogus.removesuffix(".zst"), artifact=bogus)
    (directory / f"{bogus}.json").write_text(json.dumps(manifest))
    for args in (["list"], ["status"], ["verify", "--latest"], ["prune", "--dry-run"]):
        result = worker(*args)
        assert result.code == 0, (args, result.stderr)
        assert "unexpected" not in result.stderr
    assert worker("backup", "--no-upload").code == 0
    assert (directory / bogus).exists(), "a file we did not name is never touched"


def test_restoring_the_latest_twice_never_undoes_the_first_restore(tmp_path: Path, app_db: Path, worker) -> None:
    """The second `restore --latest` must not pick the pre-restore safety backup of the first (PostgreSQL takes
    one as an ordinary backup; here one is planted beside the SQLite backups, as it would be listed)."""
    good = backups(worker, 1, app_db)[0]
    directory = tmp_path / "backups"
    time.sleep(1.05)
    with sqlite3.connect(app_db) as connection:
        connection.execute("UPDATE messages SET body = 'CORRUPTED'")
    safety = worker("backup", "--no-upload").event("job.succeeded")["artifact"]
    manifest = json.loads((directory / f"{safety}.json").read_text())
    (directory / f"{safety}.json").write_text(json.dumps({**manifest, "reason": "pre-restore"}))
    target = tmp_path / "restored.db"
    restored = worker("restore", "--latest", "--to", str(target))
    assert restored.code == 0, restored.stderr
    assert restored.event("job.succeeded")["backup"] == good.removesuffix(".zst")
    assert "safety backup" in restored.stderr
    with sqlite3.connect(target) as connection:
        assert connection.execute("SELECT count(*) FROM messages WHERE body = 'CORRUPTED'").fetchone()[0] == 0


def test_prune_with_the_window_off_keeps_backups_a_fast_clock_wrote(tmp_path: Path, app_db: Path, worker) -> None:
    directory = tmp_path / "backups"
    now = datetime.now(timezone.utc)
    ahead = [move_in_time(directory, artifact, now + timedelta(hours=1, seconds=index))
             for index, artifact in enumerate(backups(worker, 3, app_db))]
    result = worker("prune", env={"BACKUP_RETENTION_DAYS": "0", "BACKUP_KEEP_MIN": "3"})
    assert result.code == 0, result.stderr
    assert all((directory / artifact).exists() for artifact in ahead)
