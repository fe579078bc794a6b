"""Review of issue 22 (DRILL_TARGET_URL): the drill must leave the operator's database as it found it, and must
never leave a copy of the production data in it after a drill that passed."""

import json
from pathlib import Path
import uuid

from psycopg import sql

from tests.conftest import run_worker
from tests.drill.conftest import table_names
from tests.postgres.conftest import admin, url_for


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


def test_a_drill_target_holding_no_tables_keeps_the_views_functions_and_sequences_it_had(
        tmp_path: Path, worker_env, make_db) -> None:
    """The target is judged empty on its tables only, then everything the role owns in it is dropped: an operator's
    view, function, sequence or type that was there before the drill is destroyed with the drill's tables."""
    app = make_db("app", populated=True, events=50)
    target = make_db("target")
    role = f"bw_target_{uuid.uuid4().hex[:8]}"
    with admin() as connection:
        connection.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        connection.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(target), sql.Identifier(role)))
    try:
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
        assert json.loads(result.stdout)["outcome"] in ("succeeded", "failed")
        with admin(dbname=target) as connection:
            left = connection.execute(
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'ops'").fetchone()[0]
        assert left == 1, "the drill dropped the operator's schema ops (a sequence, a function, a view, a type)"
    finally:
        with admin() as connection:
            connection.execute(sql.SQL("ALTER DATABASE {} OWNER TO postgres").format(sql.Identifier(target)))
        with admin(dbname=target) as connection:
            connection.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with admin() as connection:
            connection.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            connection.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_drill_target_url_naming_the_source_database_is_refused_and_the_source_left_alone(
        tmp_path: Path, worker_env, make_db) -> None:
    """DRILL_TARGET_URL is only checked for tables. Pointed at the source database itself (a copy-paste of
    DATABASE_URL), a source that holds no table yet (views, functions, sequences: an app before its first
    migration with data, or one that keeps its logic in SQL) is restored over by pg_restore --clean and then
    emptied by DROP OWNED BY CURRENT_USER: the drill writes to the source it promises never to touch."""
    app = make_db("app")
    role = f"bw_self_{uuid.uuid4().hex[:8]}"
    with admin() as connection:
        connection.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(sql.Identifier(role)))
        connection.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(app), sql.Identifier(role)))
    try:
        with admin(dbname=app) as connection:
            connection.execute("GRANT ALL ON SCHEMA public TO PUBLIC")
            connection.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            connection.execute("CREATE SEQUENCE public.invoice_numbers START 5000")
            connection.execute("SELECT nextval('public.invoice_numbers')")
            connection.execute("CREATE FUNCTION public.tax(x numeric) RETURNS numeric LANGUAGE sql AS 'SELECT x * 0.2'")
        env = {**worker_env, "BACKUP_SOURCE": url_for(app, user=role), "DRILL_TARGET_URL": url_for(app, user=role)}
        assert run_worker(["backup"], env, cwd=tmp_path).code == 0
        result = run_worker(["drill"], env, cwd=tmp_path)
        with admin(dbname=app) as connection:
            functions = connection.execute("SELECT count(*) FROM pg_proc WHERE proname = 'tax'").fetchone()[0]
            sequences = connection.execute("SELECT count(*) FROM pg_class WHERE relname = 'invoice_numbers'").fetchone()[0]
        assert (functions, sequences) == (1, 1), "the drill emptied the source database"
        assert result.code == 1 and "DRILL_TARGET_URL" in result.stderr
    finally:
        with admin() as connection:
            connection.execute(sql.SQL("ALTER DATABASE {} OWNER TO postgres").format(sql.Identifier(app)))
        with admin(dbname=app) as connection:
            connection.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with admin() as connection:
            connection.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            connection.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
