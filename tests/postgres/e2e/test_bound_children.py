"""Children bound to the worker, through the CLI against the real server: when `restore --target-url` or
`backup` dies (kill -9, or SIGHUP as a dropped `railway ssh` sends), pg_restore and pg_dump die with it, their
server sessions end, and nothing commits; and a restore that meets an app's open transaction fails within a
minute with one sentence, rather than wait while it holds locks the app needs.

The app is a second session on the database: idle in a transaction that holds a lock the restore (or the dump)
needs, so the child waits on the server while the test acts."""

from collections.abc import Iterator
from contextlib import contextmanager
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from tests.conftest import ROOT
from tests.postgres.conftest import admin, digests, url_for
from tests.postgres.e2e.conftest import base_env, plain_lines
from tests.postgres.e2e.test_restore_cli import change_rows


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


def programs(name: str, marker: str) -> list[int]:
    """Return the pids of running programs called `name` with `marker` in one of their arguments."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and Path(args[0].decode(errors="replace")).name == name and any(marker.encode() in arg for arg in args):
            if alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def sessions(dbname: str, application: str) -> list[tuple[int, str | None]]:
    """Return (pid, wait_event_type) of the server sessions on `dbname` whose application_name is like `application`."""
    with admin() as connection:
        return connection.execute("SELECT pid, wait_event_type FROM pg_stat_activity WHERE datname = %s AND application_name LIKE %s",
                                  (dbname, application)).fetchall()


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s")


@contextmanager
def app_in_transaction(dbname: str, statement: str) -> Iterator[psycopg.Connection]:
    """An app session that ran `statement` in a transaction and now sits `idle in transaction`, holding its locks."""
    app = psycopg.connect(url_for(dbname), application_name="the-app")
    app.execute(statement)
    try:
        yield app
    finally:
        app.rollback()
        app.close()


def start_worker(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.Popen:
    out = (tmp_path / "worker.out").open("w")
    err = (tmp_path / "worker.err").open("w")
    return subprocess.Popen([sys.executable, "-m", "worker", *args], env=env, cwd=tmp_path, stdout=out, stderr=err)


RESTORE_SESSIONS = "backup-worker-restore-%"


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGHUP], ids=["kill-9", "sighup"])
def test_a_restore_whose_worker_dies_stops_pg_restore_ends_its_session_and_changes_nothing(app_pg, tmp_path, cli, how) -> None:
    env = base_env(tmp_path, url_for(app_pg))
    assert cli("backup", env=env).code == 0
    change_rows(app_pg)  # the target now differs from the backup: a restore that commits would show
    before = digests(app_pg)
    with app_in_transaction(app_pg, "SELECT count(*) FROM users"):
        worker = start_worker(["restore", "--latest", "--target-url", url_for(app_pg), "--yes"], env, tmp_path)
        try:
            wait_for(lambda: [s for s in sessions(app_pg, RESTORE_SESSIONS) if s[1] == "Lock"], 60,
                     "pg_restore did not start waiting for the app's lock")
            (restorer,) = programs("pg_restore", f"dbname={app_pg}")
            worker.send_signal(how)
            code = worker.wait(15)
        finally:
            if worker.poll() is None:
                worker.kill()
        began = time.monotonic()
        while alive(restorer) and time.monotonic() - began < 5:
            time.sleep(0.05)
        assert not alive(restorer), f"pg_restore outlived the worker by {time.monotonic() - began:.1f} s"
        wait_for(lambda: not sessions(app_pg, RESTORE_SESSIONS), 5, "the restore's server session did not end")
    time.sleep(1)  # the app's lock is gone: a restore still alive anywhere would now go on and commit
    assert digests(app_pg) == before
    if how == signal.SIGHUP:  # the one-shot command stops as on SIGTERM, and says nothing changed
        assert code == 1
        assert "unchanged" in (tmp_path / "worker.err").read_text().splitlines()[-1]


def test_a_backup_killed_with_kill_9_takes_pg_dump_and_its_check_with_it(app_pg, tmp_path) -> None:
    env = base_env(tmp_path, url_for(app_pg))
    with app_in_transaction(app_pg, "LOCK TABLE users IN ACCESS EXCLUSIVE MODE"):  # a migration, say
        worker = start_worker(["backup"], env, tmp_path)
        try:
            wait_for(lambda: [s for s in sessions(app_pg, "pg_dump") if s[1] == "Lock"], 60, "pg_dump did not start waiting")
            children = children_of(worker.pid)
            assert len(programs("pg_dump", f"dbname={app_pg}")) == 1 and len(children) == 2  # pg_dump and pg_restore's check
            worker.kill()
            worker.wait(15)
        finally:
            if worker.poll() is None:
                worker.kill()
        began = time.monotonic()
        while any(map(alive, children)) and time.monotonic() - began < 5:
            time.sleep(0.05)
        assert not any(map(alive, children)), "pg_dump or its check outlived the worker"
        wait_for(lambda: not sessions(app_pg, "pg_dump"), 5, "pg_dump's server session did not end")
    assert [p.name for p in (tmp_path / "backups").glob("*.zst") if not p.name.startswith(".tmp-")] == []  # temporaries only


def test_an_app_idle_in_transaction_makes_the_restore_fail_within_a_minute_naming_the_lock_and_the_fix(app_pg, tmp_path, cli) -> None:
    env = base_env(tmp_path, url_for(app_pg))
    assert cli("backup", env=env).code == 0
    change_rows(app_pg)
    before = digests(app_pg)
    with app_in_transaction(app_pg, "SELECT count(*) FROM users") as app:
        began = time.monotonic()
        failed = cli("restore", "--latest", "--target-url", url_for(app_pg), "--yes", env=env, timeout=120)
        took = time.monotonic() - began
        assert failed.code == 1 and took < 60, (failed.code, took)
        (sentence,) = plain_lines(failed)
        assert "waited over 20 s for a lock for " in sentence and "held by another session (pid " in sentence
        assert "idle in transaction, application the-app)" in sentence and "unchanged" in sentence
        assert "SELECT pid, state, query FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'" in sentence
        assert "stop the app's writers" in sentence and "Traceback" not in failed.stderr
        assert app.execute("SELECT count(*) FROM users").fetchone()[0] > 0  # the app's session was not killed
        assert app.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    assert digests(app_pg) == before
    assert not sessions(app_pg, RESTORE_SESSIONS)
