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
