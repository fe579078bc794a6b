"""DRILL_TARGET_URL (issue 22, from its review): the drill restores only into an empty database that is not a
source, leaves it as it found it (empty, public as it was), also when reached as a superuser, and never leaves a
copy of the production data in it after a drill that passed."""

import json
from pathlib import Path
import threading

from psycopg import sql
import pytest

from jobs.drill.pg_target import OperatorTarget, operator_database
from jobs.errors import SourceError

from tests.conftest import run_worker
from tests.drill.conftest import table_names
from tests.postgres.conftest import HOST, admin, url_for


def test_a_drill_into_a_target_reached_as_a_superuser_leaves_no_restored_tables_behind(
        tmp_path: Path, worker_env, make_db) -> None:
    """Railway's PostgreSQL hands out the `postgres` role: `DROP OWNED BY CURRENT_USER` fails for it ("required by
    the database system"), only a warning is logged, and the production rows stay in the operator's database; the
    next drill then fails with "not empty"."""
    app = make_db("app", populated=True, events=50)
    target = make_db("target")
    env = {**worker_env, "BACKUP_SOURCE": url_for(app), "DRILL_TARGET_URL": url_for(target)}
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    first = run_worker(["drill", "--json"], env, cwd=tmp_path)
    assert first.code == 0, first.stderr
    assert table_names(target) == [], "the drill left the restored production tables in DRILL_TARGET_URL"
    second = run_worker(["drill", "--json"], env, cwd=tmp_path)
    assert second.code == 0, second.stderr


def test_a_drill_target_holding_no_tables_but_other_objects_is_refused_and_left_as_it_was(
        tmp_path: Path, worker_env, make_db, make_role) -> None:
    """Empty means nothing at all: a target holding a schema with a view, a function, a sequence and a type (no
    table) is refused, named, before anything is restored, and keeps all of it."""
    app = make_db("app", populated=True, events=50)
    target = make_db("target")
    role = make_role("target", owns=target)
    with admin(dbname=target) as connection:
        connection.execute("GRANT ALL ON SCHEMA public TO PUBLIC")
        connection.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        connection.execute("CREATE SCHEMA ops")
        connection.execute("CREATE SEQUENCE ops.ticket_numbers START 1000")
        connection.execute("CREATE FUNCTION ops.answer() RETURNS int LANGUAGE sql AS 'SELECT 42'")
        connection.execute("CREATE VIEW ops.now_view AS SELECT now() AS at")
        connection.execute("CREATE TYPE ops.mood AS ENUM ('ok', 'sad')")
    env = {**worker_env, "BACKUP_SOURCE": url_for(app), "DRILL_TARGET_URL": url_for(target, user=role)}
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    result = run_worker(["drill", "--json"], env, cwd=tmp_path)
    row = next(iter(json.loads(result.stdout)["sources"].values()))
    assert result.code == 1 and row["stage"] == "scratch", row
    assert "is not empty" in row["reason"] and "schema ops" in row["reason"], row["reason"]
    with admin(dbname=target) as connection:
        left = connection.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'ops'").fetchone()[0]
    assert left == 1, "the drill dropped the operator's schema ops (a sequence, a function, a view, a type)"


def test_config_refuses_a_drill_target_url_that_is_the_source_url(tmp_path: Path, worker_env, make_db) -> None:
    app = make_db("app")
    env = {**worker_env, "BACKUP_SOURCE": url_for(app), "DRILL_TARGET_URL": url_for(app)}
    result = run_worker(["config"], env, cwd=tmp_path)
    assert result.code == 2
    assert "DRILL_TARGET_URL names the source database of BACKUP_SOURCE" in result.stderr, result.stderr


def test_a_drill_target_url_reaching_the_source_database_by_another_address_is_refused_and_the_source_left_alone(
        tmp_path: Path, worker_env, make_db) -> None:
    """A copy-paste of DATABASE_URL with another host spelling (localhost for 127.0.0.1): the same server (its system
    identifier) and database name, so the drill refuses before restoring; the source (no table yet, but a sequence
    and a function) keeps everything."""
    app = make_db("app")
    with admin(dbname=app) as connection:
        connection.execute("CREATE SEQUENCE public.invoice_numbers START 5000")
        connection.execute("SELECT nextval('public.invoice_numbers')")
        connection.execute("CREATE FUNCTION public.tax(x numeric) RETURNS numeric LANGUAGE sql AS 'SELECT x * 0.2'")
    other_host = "localhost" if HOST != "localhost" else "127.0.0.1"
    env = {**worker_env, "BACKUP_SOURCE": url_for(app), "DRILL_TARGET_URL": url_for(app, host=other_host)}
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    result = run_worker(["drill"], env, cwd=tmp_path)
    with admin(dbname=app) as connection:
        functions = connection.execute("SELECT count(*) FROM pg_proc WHERE proname = 'tax'").fetchone()[0]
        sequences = connection.execute("SELECT count(*) FROM pg_class WHERE relname = 'invoice_numbers'").fetchone()[0]
    assert (functions, sequences) == (1, 1), "the drill emptied the source database"
    assert result.code == 1 and "DRILL_TARGET_URL" in result.stderr and "is the source database" in result.stderr, result.stderr


def test_a_drill_into_a_target_restores_public_as_it_was(tmp_path: Path, worker_env, make_db, make_role) -> None:
    """Emptying the target recreates `public` with the owner, ACL and comment it had before the drill."""
    app = make_db("app", populated=True, events=20)
    target = make_db("target")
    role = make_role("public", options="")
    with admin(dbname=target) as connection:
        connection.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
        connection.execute("COMMENT ON SCHEMA public IS 'the operator''s public'")
        before = connection.execute("SELECT nspowner, nspacl::text, obj_description(oid, 'pg_namespace') "
                                    "FROM pg_namespace WHERE nspname = 'public'").fetchone()
    env = {**worker_env, "BACKUP_SOURCE": url_for(app), "DRILL_TARGET_URL": url_for(target)}
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    result = run_worker(["drill", "--json"], env, cwd=tmp_path)
    assert result.code == 0, result.stdout
    with admin(dbname=target) as connection:
        after = connection.execute("SELECT nspowner, nspacl::text, obj_description(oid, 'pg_namespace') "
                                   "FROM pg_namespace WHERE nspname = 'public'").fetchone()
    assert after == before
    assert table_names(target) == []


def test_a_drill_into_a_target_owned_by_a_plain_role_is_emptied_and_public_kept_as_it_was(
        tmp_path: Path, worker_env, make_db, make_role) -> None:
    """A target reached as a role without superuser rights that owns the database (public belongs to
    pg_database_owner on PostgreSQL 15 and newer): emptied all the same, public's owner unchanged."""
    app = make_db("app", populated=True, events=30)
    target = make_db("target")
    role = make_role("owner", owns=target)
    with admin(dbname=target) as connection:
        connection.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
        before = connection.execute("SELECT nspowner, nspacl::text FROM pg_namespace WHERE nspname = 'public'").fetchone()
    env = {**worker_env, "BACKUP_SOURCE": url_for(app), "DRILL_TARGET_URL": url_for(target, user=role)}
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    result = run_worker(["drill", "--json"], env, cwd=tmp_path)
    assert result.code == 0, result.stdout
    assert table_names(target) == []
    with admin(dbname=target) as connection:
        after = connection.execute("SELECT nspowner, nspacl::text FROM pg_namespace WHERE nspname = 'public'").fetchone()
    assert after == before
    assert run_worker(["drill"], env, cwd=tmp_path).code == 0  # empty again: the next drill runs


def test_a_target_that_cannot_be_emptied_fails_the_drill_naming_what_is_left(make_db, make_role) -> None:
    """The drill's role may not drop what another role made in public (public owned by postgres): the emptying
    fails, one sentence at stage `cleanup` names the table left behind, and the drill never passes."""
    target = make_db("target")
    role = make_role("plain")
    try:
        with admin(dbname=target) as connection:
            connection.execute("ALTER SCHEMA public OWNER TO postgres")
            connection.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
        operator = OperatorTarget(url_for(target, user=role))
        with pytest.raises(SourceError) as raised:
            with operator_database(operator, threading.Event()):
                with admin(dbname=target) as connection:  # not the drill's: its role cannot drop it
                    connection.execute("CREATE TABLE public.kept (id int)")
        assert raised.value.stage == "cleanup"
        assert "could not empty its target" in str(raised.value) and "table public.kept" in str(raised.value)
    finally:
        with admin(dbname=target) as connection:
            connection.execute("DROP TABLE IF EXISTS public.kept")


@pytest.mark.parametrize("made, kept", [
    ("CREATE TEXT SEARCH CONFIGURATION public.fr (COPY = french)",
     "SELECT count(*) FROM pg_ts_config WHERE cfgname = 'fr'"),
    ("CREATE TEXT SEARCH DICTIONARY public.simple_fr (TEMPLATE = simple)",
     "SELECT count(*) FROM pg_ts_dict WHERE dictname = 'simple_fr'"),
    ("CREATE CONVERSION public.latin_to_utf FOR 'LATIN1' TO 'UTF8' FROM iso8859_1_to_utf8",
     "SELECT count(*) FROM pg_conversion WHERE conname = 'latin_to_utf'"),
])
def test_a_drill_target_whose_public_holds_any_other_object_is_refused_and_keeps_it(
        made: str, kept: str, tmp_path: Path, worker_env, make_db) -> None:
    """The drill empties its target by dropping `public` with everything in it: a target whose public holds an
    object of a kind the emptiness check did not list (a text search configuration, a dictionary, a conversion)
    passed as empty, and the drill's clean-up dropped the operator's object."""
    app = make_db("app", populated=True, events=20)
    target = make_db("target")
    with admin(dbname=target) as connection:
        connection.execute(made)
    env = {**worker_env, "BACKUP_SOURCE": url_for(app), "DRILL_TARGET_URL": url_for(target)}
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    result = run_worker(["drill", "--json"], env, cwd=tmp_path)
    row = next(iter(json.loads(result.stdout)["sources"].values()))
    assert result.code == 1 and row["stage"] == "scratch" and "is not empty" in row["reason"], row
    with admin(dbname=target) as connection:
        assert connection.execute(kept).fetchone()[0] == 1, "the drill dropped the operator's object"


def test_a_failing_drill_into_a_password_bearing_drill_target_url_never_shows_the_password(
        tmp_path: Path, worker_env, make_db) -> None:
    """The drill target's sentences (not empty, a source, unreachable) name the target by its masked URL: its
    password reaches no output, log line, JSON or history row."""
    app = make_db("app", populated=True, events=20)
    occupied = make_db("occupied", populated=True, events=5)
    secret = "S3cretTargetPassw0rd"
    env = {**worker_env, "BACKUP_SOURCE": url_for(app), "DRILL_TARGET_URL": url_for(occupied, password=secret)}
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    result = run_worker(["drill", "--json"], env, cwd=tmp_path)
    row = next(iter(json.loads(result.stdout)["sources"].values()))
    assert result.code == 1 and row["stage"] == "scratch" and "is not empty" in row["reason"], row
    assert "postgres:***@" in row["reason"]  # the target is named, its password masked
    unreachable = run_worker(["drill"], {**env, "DRILL_TARGET_URL": url_for(occupied, password=secret, port=1)},
                             cwd=tmp_path)
    assert unreachable.code == 1
    history = run_worker(["history", "--json", "--job", "drill"], env, cwd=tmp_path)
    for output in (result.stdout, result.stderr, unreachable.stdout, unreachable.stderr, history.stdout):
        assert secret not in output


def test_a_drill_target_url_written_as_an_app_writes_it_with_a_driver_is_accepted_and_drilled_into(
        tmp_path: Path, worker_env, make_db) -> None:
    """DRILL_TARGET_URL is read as BACKUP_SOURCE and `restore --target-url` are (jobs.engines.source_url): a
    SQLAlchemy URL `postgresql+psycopg://…`, as apps write theirs, passed the scheme check and was then refused as
    "not a valid PostgreSQL URL"."""
    app = make_db("app", populated=True, events=20)
    target = make_db("target")
    driver_url = url_for(target).replace("postgresql://", "postgresql+psycopg://", 1)
    env = {**worker_env, "BACKUP_SOURCE": url_for(app), "DRILL_TARGET_URL": driver_url}
    assert run_worker(["config"], env, cwd=tmp_path).code == 0
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    result = run_worker(["drill", "--json"], env, cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert table_names(target) == []
