"""Restore over a SQLite database reached through a symlink (a chain of links too), through the CLI: the link
stays a link, the real file gets the restored data, its own -wal/-shm are the ones saved and cleared, and the
command says where the safety copy is: beside the real file."""

import os
from pathlib import Path
import sqlite3

import pytest

from tests.conftest import make_app_db, run_worker


def count(db: Path) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT count(*) FROM messages").fetchone()[0]


def linked(tmp_path: Path, chain: bool) -> tuple[Path, Path]:
    """Return (the path BACKUP_SOURCE names, the real database): data/app.db -> [links/hop.db ->] ../real/app.db."""
    (tmp_path / "real").mkdir()
    (tmp_path / "data").mkdir()
    real = make_app_db(tmp_path / "real" / "app.db")
    link = tmp_path / "data" / "app.db"
    if chain:
        (tmp_path / "links").mkdir()
        (tmp_path / "links" / "hop.db").symlink_to("../real/app.db")
        link.symlink_to("../links/hop.db")
    else:
        link.symlink_to("../real/app.db")
    return link, real


def links_of(tmp_path: Path) -> dict[str, str]:
    return {str(path.relative_to(tmp_path)): os.readlink(path) for path in tmp_path.rglob("*") if path.is_symlink()}


def safety_line(stdout: str) -> Path:
    (line,) = [line for line in stdout.splitlines() if line.startswith("the previous database was saved as ")]
    return Path(line.removeprefix("the previous database was saved as "))


@pytest.mark.parametrize("chain", [False, True], ids=["link", "chain-of-links"])
def test_restore_over_a_healthy_linked_database_writes_the_real_file_and_keeps_the_link(
        tmp_path: Path, worker_env: dict[str, str], chain: bool) -> None:
    link, real = linked(tmp_path, chain)
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{link}"}
    assert run_worker(["backup", "--no-upload"], env, cwd=tmp_path).code == 0
    links = links_of(tmp_path)
    with sqlite3.connect(link) as app:
        app.execute("DELETE FROM messages WHERE id > 10")
    assert count(real) == 10

    restored = run_worker(["restore", "--latest", "--yes"], env, cwd=tmp_path)
    assert restored.code == 0, restored.stderr
    assert links_of(tmp_path) == links and link.is_symlink()  # every link as it was
    assert real.is_file() and not real.is_symlink() and count(real) == 1000
    safety = safety_line(restored.stdout)
    assert safety.parent == real.parent and safety.name.startswith("app.db.pre-restore-")  # beside the real file
    assert count(safety) == 10
    assert [p.name for p in link.parent.iterdir()] == ["app.db"]  # nothing written beside the link


@pytest.mark.parametrize("chain", [False, True], ids=["link", "chain-of-links"])
def test_restore_over_a_damaged_linked_database_repairs_the_real_file_and_keeps_the_link(
        tmp_path: Path, worker_env: dict[str, str], chain: bool) -> None:
    link, real = linked(tmp_path, chain)
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{link}"}
    assert run_worker(["backup", "--no-upload"], env, cwd=tmp_path).code == 0
    links = links_of(tmp_path)
    wal = real.with_name("app.db-wal")  # SQLite keeps the sidecars beside the real file
    wal.write_bytes(b"a stale wal the damaged database left" * 100)
    real.write_bytes(b"garbage" * 4096)  # not a database any more
    damaged = real.read_bytes()

    restored = run_worker(["restore", "--latest", "--yes"], env, cwd=tmp_path)
    assert restored.code == 0, restored.stderr
    assert links_of(tmp_path) == links and link.is_symlink()
    assert real.is_file() and not real.is_symlink() and count(real) == 1000 and count(link) == 1000
    assert not wal.exists()  # the stale -wal of the real file would have been replayed into the restored one
    safety = safety_line(restored.stdout)
    assert safety.is_dir() and safety.parent == real.parent
    assert (safety / "app.db").read_bytes() == damaged and (safety / "app.db-wal").exists()
    assert [p.name for p in link.parent.iterdir()] == ["app.db"]
