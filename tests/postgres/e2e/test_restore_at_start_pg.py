"""RESTORE_ON_START=if-missing with PostgreSQL (and beside SQLite), as a user runs it: `python -m worker run`
against the suite's real server, after the database was dropped and created again empty."""

from pathlib import Path
import sqlite3
import sys
import time

from psycopg import sql
import pytest

from tests.conftest import make_app_db
from tests.e2e.started import Started, started_workers
from tests.postgres.conftest import admin, digests, free_port, url_for
from tests.postgres.e2e.conftest import base_env, manifests

RESTORE = {"RESTORE_ON_START": "if-missing"}


def recreate_empty(dbname: str) -> None:
    """What losing a database service and creating it again leaves: a database of the same name, no tables."""
    with admin() as connection:
        connection.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname)))
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


def user_tables(dbname: str) -> int:
    with admin(dbname=dbname) as connection:
        return connection.execute("SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')").fetchone()[0]


started = pytest.fixture(started_workers, name="started")


def start(started: list[Started], env: dict[str, str], cwd: Path, *args: str) -> Started:
    worker = Started(["run", *args], env, cwd)
    started.append(worker)
    return worker


def test_a_dropped_and_recreated_database_is_restored_at_start_table_by_table(app_pg, tmp_path, cli, started) -> None:
    env = base_env(tmp_path, url_for(app_pg))
    assert cli("backup", env=env).code == 0
    (made,) = manifests(tmp_path / "backups")
    before = digests(app_pg)
    recreate_empty(app_pg)
    assert user_tables(app_pg) == 0

    worker = start(started, {**env, **RESTORE}, tmp_path)
    restored = worker.wait_for("restore.on_start")
    assert restored["backup"] == made["id"] and restored["location"] == "local" and restored["set"] == app_pg
    worker.wait_for("worker.started")
    assert worker.stop() == 0
    assert digests(app_pg) == before
    assert [m["id"] for m in manifests(tmp_path / "backups")] == [made["id"]]  # no safety backup of an empty database


def test_retention_rules_naming_a_table_are_checked_after_the_restore_not_before(app_pg, tmp_path, cli, started) -> None:
    env = base_env(tmp_path, url_for(app_pg), RETENTION_RULES="events.created_at=3650d")
    assert cli("backup", env=env).code == 0
    before = digests(app_pg)
    recreate_empty(app_pg)

    worker = start(started, {**env, **RESTORE}, tmp_path)
    worker.wait_for("restore.on_start")
    worker.wait_for("worker.started")
    assert worker.stop() == 0
    assert digests(app_pg) == before


def test_a_database_that_holds_tables_is_left_alone(app_pg, tmp_path, cli, started) -> None:
    env = base_env(tmp_path, url_for(app_pg))
    assert cli("backup", env=env).code == 0
    with admin(dbname=app_pg) as connection:
        connection.execute("INSERT INTO messages (user_id, body) VALUES (1, 'written after the backup')")
    before = digests(app_pg)

    worker = start(started, {**env, **RESTORE}, tmp_path)
    worker.wait_for("restore.on_start_not_needed", set=app_pg)
    worker.wait_for("worker.started")
    assert worker.stop() == 0
    assert "restore.on_start" not in worker.names()
    assert digests(app_pg) == before


def test_first_deploy_an_empty_database_and_no_backup_starts_normally_and_takes_its_first_backup(make_db, tmp_path,
                                                                                                 started) -> None:
    fresh = make_db("fresh")
    env = {**base_env(tmp_path, url_for(fresh)), **RESTORE}

    worker = start(started, env, tmp_path)
    worker.wait_for("restore.on_start_no_backup", set=fresh)
    worker.wait_for("worker.started")
    done = worker.wait(lambda e: e.get("event") in ("job.succeeded", "job.failed") and e.get("job") == "backup", 90,
                       "the first backup's outcome")
    assert done["event"] == "job.succeeded", done
    assert worker.stop() == 0
    assert len(manifests(tmp_path / "backups")) == 1


def test_several_sets_are_each_restored_on_their_own_and_one_without_backups_starts_normally(app_pg, tmp_path, cli,
                                                                                           started) -> None:
    notes = make_app_db(tmp_path / "notes.db", rows=321)
    env = base_env(tmp_path, url_for(app_pg), BACKUP_SOURCE_NOTES=f"sqlite:///{notes}")
    assert cli("backup", env=env).code == 0
    before = digests(app_pg)
    recreate_empty(app_pg)
    notes.unlink()
    for suffix in ("-wal", "-shm"):
        notes.with_name(notes.name + suffix).unlink(missing_ok=True)
    later = tmp_path / "later.db"  # a set added since: no backup of it anywhere, and its file is not there yet

    worker = start(started, {**env, **RESTORE, "BACKUP_SOURCE_LATER": f"sqlite:///{later}"}, tmp_path)
    pg_restored = worker.wait_for("restore.on_start", set=app_pg)
    notes_restored = worker.wait_for("restore.on_start", set="notes")
    assert pg_restored["backup"] != notes_restored["backup"]
    worker.wait_for("restore.on_start_no_backup", set="later")
    worker.wait_for("worker.started")
    assert worker.stop() == 0
    assert digests(app_pg) == before
    with sqlite3.connect(f"file:{notes}?mode=ro", uri=True) as connection:
        assert connection.execute("SELECT count(*) FROM messages").fetchone()[0] == 321


def test_a_server_that_does_not_answer_is_retried_then_run_exits_1_with_one_sentence(tmp_path) -> None:
    port = free_port()  # nothing listens there
    env = {**base_env(tmp_path, f"postgresql://postgres@127.0.0.1:{port}/app"), **RESTORE}
    # The 60 s limit, shortened for this test through the module constant (the same code path as `python -m worker`).
    program = ("import sys; import jobs.recover as recover; recover.SERVER_WAIT_S = 3; "
               "from worker.start import main; sys.exit(main(['run']))")
    began = time.monotonic()
    worker = Started([], env, tmp_path, python=["-c", program])
    try:
        code = worker.finish(60)
    finally:
        worker.kill()
    assert code == 1
    assert 2.5 < time.monotonic() - began < 30
    (sentence,) = [line for line in "".join(worker.stderr).splitlines() if line.strip()]
    assert "3 s" in sentence and f"127.0.0.1:{port}" in sentence
    assert len([e for e in worker.events if e.get("event") == "restore.on_start_waiting"]) >= 1
    assert "worker.started" not in worker.names()


def test_sigterm_while_waiting_for_the_server_stops_at_once_and_starts_nothing(tmp_path, started) -> None:
    env = {**base_env(tmp_path, f"postgresql://postgres@127.0.0.1:{free_port()}/app"), **RESTORE}
    worker = start(started, env, tmp_path, "--exec", f"{sys.executable} -c 'open(\"started\", \"w\")'")
    worker.wait_for("restore.on_start_waiting")
    began = time.monotonic()
    assert worker.stop() == 0
    assert time.monotonic() - began < 5
    assert "worker.started" not in worker.names() and "app.started" not in worker.names()
    assert not (tmp_path / "started").exists()


def _cluster(root: Path, name: str, port: int) -> Path:
    """initdb a private cluster (a new system identifier) and start it on `port`; return its data directory."""
    import os
    import shutil
    import subprocess

    from tests.postgres.conftest import _server_bin

    bindir, data = _server_bin(), root / name
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres", "postgres")
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync",
                    "--no-instructions"], check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=16MB"
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / f"{name}.log"),
                    "-w", "start"], check=True, capture_output=True)
    return data


def _stop(data: Path) -> None:
    import os
    import subprocess

    from tests.postgres.conftest import _server_bin

    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*as_user, str(_server_bin() / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                   capture_output=True)


def test_a_database_service_recreated_with_a_new_cluster_is_restored_at_start_as_its_own(tmp_path, cli, started) -> None:
    """The recipe's case for real: the service lost its volume, so its server is a new cluster (initdb: a new system
    identifier) at the same host, port and database. Its backups are this source's, not a live neighbour's."""
    import tempfile

    root, port = Path(tempfile.mkdtemp(prefix="bw-recreated-")), free_port()
    url = url_for("shop", port=port)
    first = _cluster(root, "old", port)
    try:
        with admin(port) as connection:
            connection.execute("CREATE DATABASE shop")
        with admin(port, dbname="shop") as connection:
            connection.execute("CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 100)")
        env = base_env(tmp_path, url)
        assert cli("backup", env=env).code == 0
        (made,) = manifests(tmp_path / "backups")
        assert made["source"].get("cluster")
        _stop(first)
        second = _cluster(root, "new", port)
        try:
            with admin(port) as connection:
                connection.execute("CREATE DATABASE shop")  # the platform creates the database again, empty
            worker = start(started, {**env, **RESTORE}, tmp_path)
            restored = worker.wait_for("restore.on_start", 60)
            assert restored["backup"] == made["id"]
            worker.wait_for("worker.started")
            assert worker.stop() == 0
            with admin(port, dbname="shop") as connection:
                assert connection.execute("SELECT count(*) FROM orders").fetchone()[0] == 100
            assert cli("backup", env=env).code == 0  # the set was taken over: the next backup is not refused
        finally:
            _stop(second)
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
