"""Backups of a real PostgreSQL database through the engine interface: streamed, proven, restorable."""

import os
from pathlib import Path
import signal
import subprocess
import threading
import time

import psycopg
from psycopg import sql
import pytest

from jobs import execute
from jobs.engines import pg_restore, postgres
from jobs.errors import Cancelled, IntegrityError, SourceError

from tests.postgres.conftest import (ADMIN, HOST, PORT, admin, backup_to_file, check_file, digests, drop_database,
                                     populate, unique, url_for)
from tests.postgres.test_pg_tools import fake_tools


def pg_restore_into(raw: Path, dbname: str) -> None:
    """Restore with the stock tool, as a user would without our code."""
    subprocess.run(["pg_restore", "--no-owner", "--exit-on-error", "-h", HOST, "-p", str(PORT), "-U", ADMIN, "-d", dbname, str(raw)],
                   check=True, capture_output=True)


def server_version_text() -> str:
    with admin() as connection:
        num = connection.info.server_version
    return f"{num // 10000}.{num % 10000}"


def test_a_snapshot_streams_a_custom_archive_that_restores_table_by_table(app_pg, make_db, tmp_path):
    source = postgres.open_source(url_for(app_pg), tmp_path)
    raw = tmp_path / "app.pgdump"
    chunks: list[int] = []
    passed = backup_to_file(source, raw, tmp_path, on_chunk=lambda chunk: chunks.append(len(chunk)))
    assert passed == "pg_restore read every block"
    assert raw.read_bytes()[:5] == b"PGDMP" and len(chunks) > 2  # streamed in chunks, not one blob
    versions = source.versions()
    assert versions["server"] == server_version_text()
    assert versions["pg_dump"].split(".")[0] == versions["server"].split(".")[0]
    fresh = make_db("fresh")
    pg_restore_into(raw, fresh)
    assert digests(fresh) == digests(app_pg)


def test_no_uncompressed_dump_is_written_to_the_workdir(app_pg, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir(mode=0o700)
    source = postgres.open_source(url_for(app_pg), tmp_path)
    seen: list[int] = []
    backup_to_file(source, tmp_path / "out", workdir, on_chunk=lambda _: seen.append(sum(f.stat().st_size for f in workdir.rglob("*") if f.is_file())))
    assert max(seen) == 0


def test_restore_into_a_fresh_database_through_the_engine(app_pg, make_db, tmp_path):
    raw = tmp_path / "app.pgdump"
    backup_to_file(postgres.open_source(url_for(app_pg), tmp_path), raw, tmp_path)
    target = make_db("target")
    notes: list[str] = []
    assert postgres.open_source(url_for(target), tmp_path).restore(raw, threading.Event(), notify=notes.append) is None
    assert notes == []
    assert digests(target) == digests(app_pg)


def test_restore_over_the_source_brings_back_the_backed_up_objects_and_leaves_newer_ones(app_pg, tmp_path):
    source = postgres.open_source(url_for(app_pg), tmp_path)
    before = digests(app_pg)
    raw = tmp_path / "app.pgdump"
    backup_to_file(source, raw, tmp_path)
    with admin(dbname=app_pg) as connection:
        connection.execute("DELETE FROM events WHERE id % 3 = 0; UPDATE users SET email = email || '.changed';"
                           "DROP VIEW active_users; DROP TABLE attachments; SELECT nextval('invoice_numbers');"
                           "CREATE TABLE added_later (id int PRIMARY KEY)")
    assert before["events"] != _count_events(app_pg)
    assert source.restore(raw, threading.Event()) is None
    after = digests(app_pg)
    assert after.pop("indexes") == sorted(before.pop("indexes") + ["added_later_pkey"])  # --clean drops what the archive holds
    assert after == before


def _count_events(dbname: str) -> tuple:
    with admin(dbname=dbname) as connection:
        return connection.execute("SELECT count(*) FROM events").fetchone()


def test_a_restore_that_fails_changes_nothing_in_the_target(app_pg, make_db, tmp_path):
    raw = tmp_path / "app.pgdump"
    backup_to_file(postgres.open_source(url_for(app_pg), tmp_path), raw, tmp_path)
    target = make_db("blocked")
    populate(target, events=100)
    with admin(dbname=target) as connection:  # an object the archive does not know depends on a table it replaces
        connection.execute("CREATE VIEW local_report AS SELECT count(*) AS n FROM users")
    before = digests(target)
    with pytest.raises(SourceError) as caught:
        postgres.open_source(url_for(target), tmp_path).restore(raw, threading.Event())
    message = str(caught.value)
    assert "rolled back, so the database is unchanged" in message and "local_report" in message
    assert digests(target) == before


def test_restore_into_a_missing_database_names_it(app_pg, tmp_path):
    raw = tmp_path / "app.pgdump"
    backup_to_file(postgres.open_source(url_for(app_pg), tmp_path), raw, tmp_path)
    with pytest.raises(SourceError, match="createdb bw_missing_target"):
        postgres.open_source(url_for("bw_missing_target"), tmp_path).restore(raw, threading.Event())


def test_a_backup_from_a_newer_major_warns_before_restoring():
    current = server_version_text()
    newer = f"{int(current.split('.')[0]) + 1}.2"
    warning = postgres.open_source(url_for("postgres"), Path.cwd()).restore_warning({"server": newer})
    assert warning and f"PostgreSQL {newer}" in warning and f"runs {current}" in warning
    assert postgres.open_source(url_for("postgres"), Path.cwd()).restore_warning({"server": current}) is None
    assert pg_restore.version_warning("9.6.24", "15.20") is None


def our_pg_children() -> list[int]:
    """Return the pids of this process's pg_dump and pg_restore children."""
    return [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/cmdline")
            if _safe_read(p).split(b"\0")[0].endswith((b"/pg_dump", b"/pg_restore")) and _is_child(p.parent)]


def test_the_password_never_reaches_a_command_line_output_or_file(password_server, tmp_path, capfd):
    role_password = "Rl-" + os.urandom(12).hex()
    dbname = unique("secret")
    su = password_server.superuser_password
    with admin(password_server.port, su) as connection:
        connection.execute(sql.SQL("CREATE ROLE bw_app LOGIN PASSWORD {}").format(sql.Literal(role_password)))
        connection.execute(sql.SQL("CREATE DATABASE {} OWNER bw_app").format(sql.Identifier(dbname)))
    try:
        with admin(password_server.port, su, dbname) as connection:
            connection.execute("SET ROLE bw_app")
            connection.execute(postgres_schema_small())
        url = password_server.url(dbname, user="bw_app", password=role_password)
        source = postgres.open_source(url, tmp_path)
        needle = role_password.encode()
        scans = []

        def scan(_: bytes) -> None:
            found = []
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    if needle in cmdline.read_bytes():
                        found.append(cmdline.parent.name)
                except OSError:
                    continue
            scans.append((found, len(our_pg_children())))

        raw = tmp_path / "secret.pgdump"
        assert backup_to_file(source, raw, tmp_path, on_chunk=scan) == "pg_restore read every block"
        assert scans and all(found == [] for found, _ in scans)
        assert any(children >= 2 for _, children in scans)  # pg_dump and pg_restore were running when we looked
        text = " ".join([source.target(), repr(source), str(source.describe()), str(source.versions())])
        assert role_password not in text
        for path in tmp_path.rglob("*"):
            if path.is_file():
                assert needle not in path.read_bytes(), path
        postgres.open_source(url, tmp_path).restore(raw, threading.Event())  # the restore gets the password the same way
        out, err = capfd.readouterr()
        assert "pg_dump.start" in out + err and role_password not in out + err
    finally:
        drop_database(dbname, password_server.port, su)
        with admin(password_server.port, su) as connection:
            connection.execute("DROP ROLE IF EXISTS bw_app")


def _safe_read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def postgres_schema_small() -> str:
    return ("CREATE TABLE notes (id serial PRIMARY KEY, body text);"
            "INSERT INTO notes (body) SELECT repeat(md5(g::text), 40) FROM generate_series(1, 5000) g;")


def test_a_wrong_password_fails_the_snapshot_with_one_sentence(password_server, tmp_path):
    source = postgres.open_source(password_server.url("postgres", password="n0t-it"), tmp_path)
    with pytest.raises(SourceError, match="refused the password") as caught:
        backup_to_file(source, tmp_path / "out", tmp_path)
    assert "n0t-it" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_a_role_without_rights_on_a_table_fails_and_leaves_no_artifact(app_pg, make_role, tmp_path):
    role = make_role("reader")
    with admin(dbname=app_pg) as connection:
        connection.execute(sql.SQL("GRANT SELECT ON users, events, messages TO {}").format(sql.Identifier(role)))
    source = postgres.open_source(url_for(app_pg, user=role), tmp_path)
    with pytest.raises(SourceError) as caught:
        backup_to_file(source, tmp_path / "out", tmp_path)
    message = str(caught.value)
    assert message.startswith(f"pg_dump of {app_pg} failed: pg_dump exited with 1: ")
    assert "permission denied for table" in message and "GRANT SELECT" in message
    assert not (tmp_path / "out").exists() and list(tmp_path.glob(".tmp-*")) == []


def test_an_old_pg_dump_first_on_path_is_passed_over_in_a_real_backup(app_pg, tmp_path, monkeypatch):
    marker = tmp_path / "fake-used"
    old = fake_tools(tmp_path / "old-bin", "11.22", marker)
    monkeypatch.setenv("PATH", f"{old}:{os.environ['PATH']}")
    monkeypatch.delenv("PG_BIN_DIR", raising=False)
    source = postgres.open_source(url_for(app_pg), tmp_path)
    backup_to_file(source, tmp_path / "out", tmp_path)
    assert not marker.exists()
    assert source.versions()["pg_dump"] != "11.22"


def test_pg_bin_dir_with_only_an_old_client_fails_naming_the_fix(app_pg, tmp_path, monkeypatch):
    monkeypatch.setenv("PG_BIN_DIR", str(fake_tools(tmp_path / "fakes", "11.22")))
    source = postgres.open_source(url_for(app_pg), tmp_path)
    major = server_version_text().split(".")[0]
    with pytest.raises(SourceError) as caught:
        backup_to_file(source, tmp_path / "out", tmp_path)
    assert f"apt-get install postgresql-client-{major}" in str(caught.value)
    problem = postgres.open_source(url_for(app_pg), Path.cwd()).problem()
    assert problem == str(caught.value)
    monkeypatch.delenv("PG_BIN_DIR")
    assert postgres.open_source(url_for(app_pg), Path.cwd()).problem() is None


def test_the_problem_of_a_source_reports_an_unreachable_server():
    problem = postgres.open_source("postgresql://u:pw-x@127.0.0.1:1/db", Path.cwd()).problem()
    assert problem and "connection refused" in problem and "pw-x" not in problem


def test_cancel_stops_the_dump_and_the_check_promptly(make_db, tmp_path):
    big = make_db("big", populated=True, events=150000)
    source = postgres.open_source(url_for(big), tmp_path)
    cancel = threading.Event()
    pids: list[int] = []

    def slow(_: bytes) -> None:
        if not pids:
            pids.extend(our_pg_children())
            cancel.set()
        time.sleep(0.05)

    started = time.monotonic()
    with pytest.raises(Cancelled):
        backup_to_file(source, tmp_path / "out", tmp_path, cancel=cancel, on_chunk=slow)
    assert time.monotonic() - started < 30
    assert len(pids) == 2
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    assert not (tmp_path / "out").exists()


def _is_child(proc: Path) -> bool:
    try:
        return f"PPid:\t{os.getpid()}\n" in (proc / "status").read_text()
    except OSError:
        return False


def test_a_truncated_archive_is_refused_by_the_checker(app_pg, tmp_path):
    raw = tmp_path / "good"
    backup_to_file(postgres.open_source(url_for(app_pg), tmp_path), raw, tmp_path)
    assert check_file(raw, tmp_path) == "pg_restore read every block"
    data = raw.read_bytes()
    for cut in (len(data) - 1, len(data) * 2 // 3, len(data) // 3):
        truncated = tmp_path / f"cut-{cut}"
        truncated.write_bytes(data[:cut])
        with pytest.raises(IntegrityError, match="pg_restore could not read the whole archive"):
            check_file(truncated, tmp_path)


def test_an_archive_missing_a_piece_of_a_data_block_is_refused(app_pg, tmp_path):
    raw = tmp_path / "good"
    backup_to_file(postgres.open_source(url_for(app_pg), tmp_path), raw, tmp_path)
    data = raw.read_bytes()
    middle = len(data) // 2
    holed = tmp_path / "holed"
    holed.write_bytes(data[:middle] + data[middle + 4096:])
    with pytest.raises(IntegrityError):
        check_file(holed, tmp_path)


def test_garbage_is_refused_early_without_blocking_the_feeder(tmp_path):
    garbage = tmp_path / "garbage"
    garbage.write_bytes(os.urandom(1 << 20) * 24)
    started = time.monotonic()
    with pytest.raises(IntegrityError, match="pg_restore could not read the whole archive"):
        check_file(garbage, tmp_path, chunk=1 << 20)
    assert time.monotonic() - started < 30


def test_the_checker_reads_every_block_not_only_the_table_of_contents(app_pg, tmp_path):
    """`pg_restore --list` passes an archive with its data cut off; our check does not."""
    raw = tmp_path / "good"
    backup_to_file(postgres.open_source(url_for(app_pg), tmp_path), raw, tmp_path)
    cut = tmp_path / "cut"
    cut.write_bytes(raw.read_bytes()[: raw.stat().st_size // 2])
    listed = subprocess.run(["pg_restore", "--list", str(cut)], capture_output=True)
    assert listed.returncode == 0  # the stock TOC check is fooled
    with pytest.raises(IntegrityError):
        check_file(cut, tmp_path)


def test_connecting_through_psycopg_uses_the_same_conninfo(app_pg):
    conn = postgres.open_source(url_for(app_pg), None).conn
    with psycopg.connect(conn.conninfo(), password=conn.password) as connection:
        assert connection.execute("SELECT current_database()").fetchone() == (app_pg,)


def test_cancel_while_pg_dump_waits_for_a_lock_stops_it_within_seconds(app_pg, tmp_path):
    source = postgres.open_source(url_for(app_pg), tmp_path)
    cancel = threading.Event()
    with admin(dbname=app_pg) as holder:
        holder.execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        timer = threading.Timer(1.5, cancel.set)
        timer.start()
        started = time.monotonic()
        with pytest.raises(Cancelled):
            backup_to_file(source, tmp_path / "out", tmp_path, cancel=cancel)
        stopped = time.monotonic() - started
        holder.execute("ROLLBACK")
    assert stopped < 1.5 + 8  # promptly after the cancel, with room for a busy machine
    assert not (tmp_path / "out").exists()


def test_a_connection_lost_mid_dump_fails_the_snapshot(make_db, tmp_path):
    big = make_db("lost", populated=True, events=150000)
    source = postgres.open_source(url_for(big), tmp_path)
    terminated: list[int] = []

    def terminate_once(_: bytes) -> None:
        if not terminated:
            with admin() as connection:
                rows = connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                          "WHERE datname = %s AND application_name = 'pg_dump'", (big,)).fetchall()
            terminated.append(len(rows))

    with pytest.raises(SourceError) as caught:
        backup_to_file(source, tmp_path / "out", tmp_path, on_chunk=terminate_once)
    assert terminated == [1]
    assert str(caught.value).startswith(f"pg_dump of {big} failed: pg_dump exited with 1")
    assert not (tmp_path / "out").exists()


def stand_in_pg_restore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    """Point PG_BIN_DIR at the real pg_dump and a pg_restore that reports the real version but runs `body`."""
    tools = tmp_path / "bin"
    tools.mkdir()
    real = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip() or "/usr/lib/postgresql/15/bin")
    (tools / "pg_dump").symlink_to(real / "pg_dump")
    (tools / "pg_restore").write_text("#!/bin/sh\n"
                                      "if [ \"$1\" = --version ]; then exec '%s' --version; fi\n%s\n" % (real / "pg_restore", body))
    (tools / "pg_restore").chmod(0o755)
    monkeypatch.setenv("PG_BIN_DIR", str(tools))


def test_an_archive_the_check_rejects_is_never_published(app_pg, tmp_path, monkeypatch):
    """A pg_restore that gives up half-way (here a stand-in that reads 64 KiB and fails) fails the backup."""
    stand_in_pg_restore(tmp_path, monkeypatch, "head -c 65536 >/dev/null; echo 'pg_restore: error: invalid block type' >&2; exit 1")
    source = postgres.open_source(url_for(app_pg), tmp_path)
    with pytest.raises(IntegrityError, match="pg_restore could not read the whole archive: pg_restore exited with 1: "
                                             "pg_restore: error: invalid block type"):
        backup_to_file(source, tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()


def test_a_pg_restore_that_never_reads_cannot_hold_the_backup_past_a_cancel(app_pg, tmp_path, monkeypatch):
    """A pg_restore that never reads (a stand-in that sleeps) fills the pipe and blocks the feed: a cancel must
    still stop the backup promptly and publish nothing."""
    stand_in_pg_restore(tmp_path, monkeypatch, "exec sleep 600")
    source = postgres.open_source(url_for(app_pg), tmp_path)
    cancel = threading.Event()
    threading.Timer(1.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        backup_to_file(source, tmp_path / "out", tmp_path, cancel=cancel)
    assert time.monotonic() - started < 1.5 + 8
    assert not (tmp_path / "out").exists()


def test_bytes_after_the_end_of_a_complete_archive_are_refused(app_pg, tmp_path):
    raw = tmp_path / "good"
    backup_to_file(postgres.open_source(url_for(app_pg), tmp_path), raw, tmp_path)
    padded = tmp_path / "padded"
    padded.write_bytes(raw.read_bytes() + b"\0" * (4 << 20))
    with pytest.raises(IntegrityError, match="goes on after the end of a complete archive"):
        check_file(padded, tmp_path)


def test_a_table_locked_longer_than_the_lock_wait_fails_the_snapshot_with_a_hint(app_pg, tmp_path, monkeypatch):
    monkeypatch.setattr(postgres, "LOCK_WAIT", "1s")
    source = postgres.open_source(url_for(app_pg), tmp_path)
    with admin(dbname=app_pg) as holder:
        holder.execute("BEGIN; LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(SourceError) as caught:
            backup_to_file(source, tmp_path / "out", tmp_path)
        holder.execute("ROLLBACK")
    message = str(caught.value)
    assert "LOCK TABLE public.messages" in message and "held a table locked for over 1s" in message


def restore_sessions(dbname: str, settle_s: float = 5.0) -> int:
    """Return how many restore sessions are still on `dbname`, after waiting up to `settle_s` for them to go."""
    deadline = time.monotonic() + settle_s
    with admin() as connection:
        while True:
            count = connection.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name "
                                       "LIKE 'backup-worker-restore-%%'", (dbname,)).fetchone()[0]
            if count == 0 or time.monotonic() > deadline:
                return count
            time.sleep(0.1)


@pytest.mark.parametrize("signal_sent", ["SIGTERM", "SIGKILL"])
def test_a_restore_stopped_by_cancel_leaves_the_target_unchanged_and_no_session_behind(app_pg, make_db, tmp_path, monkeypatch, signal_sent):
    """pg_restore answers SIGTERM by cancelling its query; one killed outright (SIGKILL after the grace period)
    leaves a server session waiting on its lock, holding the others it took, so the engine ends that session."""
    if signal_sent == "SIGKILL":
        kill = execute._signal
        monkeypatch.setattr(execute, "_signal", lambda process, _signum: kill(process, signal.SIGKILL))
    raw = tmp_path / "app.pgdump"
    backup_to_file(postgres.open_source(url_for(app_pg), tmp_path), raw, tmp_path)
    target = make_db("cancelled")
    populate(target, events=100)
    before = digests(target)
    cancel = threading.Event()
    with admin(dbname=target) as holder:  # the restore waits on this lock until we cancel it
        holder.execute("BEGIN; LOCK TABLE users IN ACCESS SHARE MODE")
        threading.Timer(1.0, cancel.set).start()
        with pytest.raises(Cancelled, match="stopped before it committed, so the database is unchanged"):
            postgres.open_source(url_for(target), tmp_path).restore(raw, cancel)
        left = restore_sessions(target)
        holder.execute("ROLLBACK")
    assert left == 0  # its server session was ended, not left waiting on the lock with the others it took
    assert digests(target) == before


def test_a_version_warning_reaches_notify_before_the_restore(app_pg, make_db, tmp_path, monkeypatch):
    raw = tmp_path / "app.pgdump"
    backup_to_file(postgres.open_source(url_for(app_pg), tmp_path), raw, tmp_path)
    newer = pg_restore.ArchiveHeader(server="99.1", pg_dump=None)
    monkeypatch.setattr(pg_restore, "archive_header", lambda *_: newer)
    heard: list[str] = []
    notes = postgres.open_source(url_for(make_db("notified")), tmp_path).restore(raw, threading.Event(), notify=heard.append)
    assert notes is None and len(heard) == 1 and "PostgreSQL 99.1" in heard[0]


def test_a_sql_ascii_database_backs_up_and_restores(make_db, tmp_path):
    """psycopg hands text back as bytes from a SQL_ASCII database: the exported snapshot's id must still reach
    pg_dump as text (it once went as "b'…'", and every backup of such a database failed)."""
    name = unique("ascii")
    with admin() as connection:
        connection.execute(sql.SQL("CREATE DATABASE {} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
                           .format(sql.Identifier(name)))
    try:
        with psycopg.connect(url_for(name), autocommit=True) as connection:
            connection.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)")
            connection.execute("INSERT INTO notes (body) SELECT 'note ' || n FROM generate_series(1, 200) AS n")
        raw = tmp_path / "ascii.pgdump"
        assert backup_to_file(postgres.open_source(url_for(name), tmp_path), raw, tmp_path) == "pg_restore read every block"
        fresh = make_db("fresh")
        pg_restore_into(raw, fresh)
        with psycopg.connect(url_for(fresh)) as connection:
            assert connection.execute("SELECT count(*), max(body) FROM notes").fetchone() == (200, "note 99")
    finally:
        drop_database(name)
