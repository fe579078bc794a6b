"""PostgreSQL through the command line when things are not right: secrets, pg_dump versions, unreachable
servers, missing databases; and the run history on PostgreSQL."""

import json
from pathlib import Path
import signal
import subprocess
import sys
import time

import psycopg
from psycopg import sql
import psycopg.rows
import pytest
import zstandard

from tests.conftest import ROOT
from tests.postgres.conftest import admin, drop_database, free_port, populate, unique, url_for
from tests.postgres.e2e.conftest import base_env, manifests, plain_lines
from tests.postgres.test_pg_tools import fake_tools


def cmdlines() -> list[tuple[str, bytes]]:
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            found.append((path.parent.name, path.read_bytes()))
        except OSError:
            continue
    return found


def test_the_password_is_in_no_command_line_output_file_or_catalog_row(password_server, tmp_path, cli):
    secret = password_server.superuser_password
    dbname, target, catalog_db = unique("secret"), unique("secrettarget"), unique("secretcatalog")
    with admin(password_server.port, secret) as connection:
        for name in (dbname, target, catalog_db):
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        populate(dbname, events=150_000, port=password_server.port, password=secret)
        env = base_env(tmp_path, password_server.url(dbname), CATALOG_URL=password_server.url(catalog_db))
        child = subprocess.Popen([sys.executable, "-m", "worker", "backup"], env=env, cwd=tmp_path, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        leaks, dumps_seen = [], 0
        while child.poll() is None:
            for pid, line in cmdlines():
                if secret.encode() in line:
                    leaks.append((pid, line))
                if b"pg_dump\0" in line and dbname.encode() in line:
                    dumps_seen += 1
        out, err = child.communicate()
        assert child.returncode == 0, err
        assert dumps_seen and not leaks  # pg_dump ran while we looked, and no process showed the password

        restored = cli("restore", "--target-url", password_server.url(target), "--yes", env=env)
        assert restored.code == 0, restored.stderr
        listed = cli("list", "--json", env=env)
        shown = cli("config", env=env)
        history = cli("history", "--json", env=env)
        assert json.loads(history.stdout)[0]["job"] == "restore"
        for text in (out, err, restored.stdout, restored.stderr, listed.stdout, shown.stdout, shown.stderr, history.stdout):
            assert secret not in text
        assert "postgres:***@" in shown.stdout
        for path in (tmp_path / "backups").rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert secret.encode() not in data, path
                if path.name.endswith(".zst"):
                    assert secret.encode() not in zstandard.ZstdDecompressor().decompressobj().decompress(data), path
        with admin(password_server.port, secret, catalog_db) as connection:
            connection.row_factory = psycopg.rows.namedtuple_row
            rows = connection.execute("SELECT * FROM runs ORDER BY started_at").fetchall()
        assert [row.job for row in rows] == ["backup", "restore"] and secret not in repr(rows)
    finally:
        for name in (dbname, target, catalog_db):
            drop_database(name, password_server.port, secret)


def test_an_old_pg_dump_first_on_path_is_passed_over_by_the_backup(app_pg, tmp_path, cli):
    marker = tmp_path / "old-pg-dump-was-used"
    old = fake_tools(tmp_path / "old-bin", "11.22", marker)
    env = base_env(tmp_path, url_for(app_pg))
    env["PATH"] = f"{old}:{env['PATH']}"
    done = cli("backup", env=env)
    assert done.code == 0, done.stderr
    assert not marker.exists()
    (manifest,) = manifests(tmp_path / "backups")
    assert manifest["versions"]["pg_dump"].split(".")[0] == manifest["versions"]["server"].split(".")[0] != "11"


def test_pg_bin_dir_with_only_older_clients_fails_the_backup_naming_the_fix_and_config_and_status_say_so(app_pg, tmp_path, cli):
    fakes = fake_tools(tmp_path / "fakes", "11.22")
    env = base_env(tmp_path, url_for(app_pg), PG_BIN_DIR=str(fakes))
    with admin() as connection:
        major = connection.info.server_version // 10000

    failed = cli("backup", env=env)
    assert failed.code == 1
    (sentence,) = plain_lines(failed)
    assert f"install the PostgreSQL {major} client" in sentence and f"postgresql-client-{major}" in sentence
    assert not list((tmp_path / "backups").glob("*.zst*"))

    for command in ("config", "status"):
        told = cli(command, env=env)
        assert told.code in (0, 1)
        warnings = [line for line in plain_lines(told) if line.startswith("warning:")]
        assert len(warnings) == 1 and f"install the PostgreSQL {major} client" in warnings[0], command
    assert cli("config", env=env).code == 0


@pytest.mark.parametrize("problem", ["unreachable", "missing database"])
def test_an_unreachable_server_or_a_missing_database_fails_in_one_sentence_and_leaves_no_artifact(problem, tmp_path, cli):
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/app" if problem == "unreachable" else url_for(unique("missing"))
    env = base_env(tmp_path, url)
    failed = cli("backup", env=env)
    assert failed.code == 1
    (sentence,) = plain_lines(failed)
    assert ("connection refused" if problem == "unreachable" else "does not exist") in sentence
    assert sorted(path.name for path in (tmp_path / "backups").iterdir() if not path.name.startswith(".")) == ["catalog.db"]
    told = cli("config", env=env)
    assert told.code == 0 and any(line.startswith("warning: ") for line in plain_lines(told))


def test_a_postgresql_catalog_url_records_every_run(app_pg, make_db, tmp_path, cli):
    catalog_db = make_db("catalog")
    env = base_env(tmp_path, url_for(app_pg), CATALOG_URL=url_for(catalog_db).replace("postgresql://", "postgres://"))
    assert cli("config", env=env).code == 0  # postgres:// is accepted too (psycopg 3 through SQLAlchemy)
    assert cli("backup", env=env).code == 0
    assert cli("verify", env=env).code == 0
    history = json.loads(cli("history", "--json", env=env).stdout)
    assert [(run["job"], run["outcome"]) for run in history] == [("verify", "succeeded"), ("backup", "succeeded")]
    with admin(dbname=catalog_db) as connection:
        assert connection.execute("SELECT count(*) FROM runs").fetchone() == (2,)
    assert not (tmp_path / "backups" / "catalog.db").exists()


def test_run_logs_a_missing_pg_dump_as_an_error_at_start_and_keeps_running(app_pg, tmp_path):
    env = base_env(tmp_path, url_for(app_pg), PG_BIN_DIR=str(fake_tools(tmp_path / "fakes", "11.22")))
    child = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env, cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    events = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            if line.startswith("{"):
                events.append(json.loads(line))
                if events[-1]["event"] == "job.failed":
                    break
        assert child.poll() is None  # still running
    finally:
        child.send_signal(signal.SIGTERM)
        child.communicate(timeout=30)
    names = [event["event"] for event in events]
    assert names.index("preflight.problem") < names.index("worker.started")
    problem = next(event for event in events if event["event"] == "preflight.problem")
    assert problem["level"] == "error" and "install the PostgreSQL" in problem["problem"]
    failed = next(event for event in events if event["event"] == "job.failed")  # the catch-up backup names the fix
    assert "install the PostgreSQL" in failed["reason"]


@pytest.mark.parametrize("written", ["Pw1kQ#?:ü:Xq9zR", "Pw1kQ%20%23%3F%25%40%2FXq9zR"], ids=["as-written", "percent-encoded"])
def test_a_password_with_a_hash_question_mark_colon_or_any_encoded_character_connects_and_is_never_shown(
        password_server, tmp_path, cli, written):
    from urllib.parse import unquote

    user, dbname = unique("oddpw"), unique("oddpw")
    secret = password_server.superuser_password
    with admin(password_server.port, secret) as connection:
        connection.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(user), sql.Literal(unquote(written))))
        connection.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(dbname), sql.Identifier(user)))
    try:
        env = base_env(tmp_path, f"postgresql://{user}:{written}@127.0.0.1:{password_server.port}/{dbname}")
        results = [cli(command, env=env) for command in ("backup", "config", "list", "history")]
        assert results[0].code == 0, results[0].stderr
        assert f"postgresql://{user}:***@127.0.0.1" in results[1].stdout
        assert not [half for half in ("Pw1kQ", "Xq9zR") for r in results if half in r.stdout + r.stderr]
    finally:
        drop_database(dbname, password_server.port, secret)
        with admin(password_server.port, secret) as connection:
            connection.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))
