"""Drills that fail (issue 22), each with one sentence naming what is wrong, exit 1, a failed `drill` row in the
history, and nothing of the drill left behind: a truncated object in the bucket, a restored copy whose rows differ
from what the manifest recorded, a PostgreSQL restore that fails (also on an extension the restoring role may not
create), a drill target that is not empty, a role that may not create the scratch database."""

import json
from pathlib import Path
import shutil

from psycopg import sql

from tests.conftest import run_worker
from tests.drill.conftest import bucket_key, drill_env, scratch_databases, table_names, temporaries
from tests.postgres.conftest import SCHEMA, admin, digests, url_for


def failed_sentence(result) -> str:
    """Return the one line a failed drill prints on stderr (log lines aside)."""
    assert result.code == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line and not line.startswith("{")]
    assert len(lines) == 1, lines
    assert "Traceback" not in result.stderr
    return lines[0]


def test_a_truncated_artifact_in_the_bucket_fails_the_drill_naming_the_damage(
        tmp_path: Path, worker_env, app_db: Path, moto_endpoint, bucket, s3_client) -> None:
    env = drill_env(worker_env, moto_endpoint, bucket)
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    shutil.rmtree(tmp_path / "backups")
    key = bucket_key(s3_client, bucket, ".sqlite.zst")
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3_client.put_object(Bucket=bucket, Key=key, Body=body[: len(body) // 2])
    sentence = failed_sentence(run_worker(["drill"], env, cwd=tmp_path))
    assert sentence.startswith("app: drill failed at stage verify: the newest backup app-")
    assert f"is {len(body) // 2} bytes but its manifest says {len(body)}" in sentence
    assert "take a backup now" in sentence and "--fallback" not in sentence
    assert temporaries(tmp_path / "backups") == []
    runs = json.loads(run_worker(["history", "--json", "--job", "drill"], env, cwd=tmp_path).stdout)
    assert runs[0]["outcome"] == "failed" and runs[0]["stage"] == "verify"


def test_a_row_count_that_differs_from_the_manifest_fails_the_drill_naming_the_table(
        tmp_path: Path, worker_env, app_db: Path, moto_endpoint, bucket, s3_client) -> None:
    env = drill_env(worker_env, moto_endpoint, bucket)
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    key = bucket_key(s3_client, bucket, ".sqlite.zst.json")
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    manifest["counts"]["tables"]["messages"] = 999
    s3_client.put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest).encode())
    sentence = failed_sentence(run_worker(["drill"], env, cwd=tmp_path))
    assert "failed at stage compare" in sentence
    assert "table messages has 1000 rows, the backup recorded 999" in sentence
    assert run_worker(["drill", "--local"], env, cwd=tmp_path).code == 0  # the volume's manifest is untouched


def test_a_postgresql_restore_that_fails_fails_the_drill_and_leaves_the_target_empty(
        tmp_path: Path, worker_env, make_db, make_role, moto_endpoint, bucket) -> None:
    app = make_db("app", populated=True, events=100)
    target = make_db("target")
    role = make_role("drill")  # a role that may connect to the target but not create anything in it
    with admin(dbname=target) as connection:
        connection.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    env = drill_env(worker_env, moto_endpoint, bucket, BACKUP_SOURCE=url_for(app),
                    DRILL_TARGET_URL=url_for(target, user=role))
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    before = digests(app)
    sentence = failed_sentence(run_worker(["drill"], env, cwd=tmp_path))
    assert "failed at stage restore" in sentence and f"pg_restore into {target}" in sentence
    assert "permission denied" in sentence
    assert table_names(target) == []
    assert digests(app) == before


# A view that really depends on dblink, an extension that is not trusted: only a superuser may create it, so a
# dump holding it (`CREATE EXTENSION IF NOT EXISTS dblink`) restores only as a superuser.
REMOTE_VIEW = ("CREATE VIEW remote_users AS SELECT * FROM dblink('dbname=' || current_database(), "
               "'SELECT id, email FROM users') AS t(id bigint, email text)")


def with_dblink(dbname: str, owner: str | None = None) -> None:
    """Create dblink in `dbname` as a superuser, and the app's schema and a view using dblink (as `owner`)."""
    with admin(dbname=dbname) as connection:
        connection.execute("CREATE EXTENSION dblink")
        if owner:
            connection.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
        connection.execute(SCHEMA.replace("{events}", "100"))
        connection.execute(REMOTE_VIEW)


def test_a_dump_needing_an_extension_the_role_may_not_create_fails_the_drill_naming_it_and_leaves_no_scratch_database(
        tmp_path: Path, worker_env, make_db, make_role, moto_endpoint, bucket) -> None:
    app = make_db("extapp")
    # the app's role: owns its database, may create databases, is no superuser
    role = make_role("ext", "LOGIN CREATEDB", owns=app)
    try:
        with_dblink(app, owner=role)
        env = drill_env(worker_env, moto_endpoint, bucket, BACKUP_SOURCE=url_for(app, user=role))
        assert run_worker(["backup"], env, cwd=tmp_path).code == 0
        before = digests(app)
        sentence = failed_sentence(run_worker(["drill"], env, cwd=tmp_path))
        assert f"failed at stage restore: pg_restore into {app}_drill_" in sentence
        assert "its transaction was rolled back" in sentence
        assert (f"the backup needs the PostgreSQL extension dblink, which the role {role} may not create on "
                "127.0.0.1:5432 (it is not a trusted extension: only a superuser may create it); to restore as a "
                "superuser, set DRILL_TARGET_URL to a superuser's URL of an empty database") in sentence
        assert "permission denied" not in sentence and "Command was" not in sentence
        assert scratch_databases(app) == []
        assert digests(app) == before
        runs = json.loads(run_worker(["history", "--json", "--job", "drill"], env, cwd=tmp_path).stdout)
        assert runs[0]["outcome"] == "failed" and runs[0]["stage"] == "restore"
        assert "the PostgreSQL extension dblink" in json.dumps(runs[0])
    finally:
        with admin(dbname=app) as connection:
            connection.execute("DROP EXTENSION IF EXISTS dblink CASCADE")


def test_a_drill_target_whose_role_may_not_create_the_extension_fails_naming_it_and_is_left_empty(
        tmp_path: Path, worker_env, make_db, make_role, moto_endpoint, bucket) -> None:
    app = make_db("extapp")
    with_dblink(app)
    target = make_db("target")
    role = make_role("ext", owns=target)  # the target's owner: may fill it, but not with dblink
    try:
        env = drill_env(worker_env, moto_endpoint, bucket, BACKUP_SOURCE=url_for(app),
                        DRILL_TARGET_URL=url_for(target, user=role))
        assert run_worker(["backup"], env, cwd=tmp_path).code == 0
        before = digests(app)
        sentence = failed_sentence(run_worker(["drill"], env, cwd=tmp_path))
        assert f"failed at stage restore: pg_restore into {target} on 127.0.0.1:5432 failed" in sentence
        assert (f"the backup needs the PostgreSQL extension dblink, which the role {role} may not create" in sentence
                and "set DRILL_TARGET_URL to a superuser's URL of an empty database" in sentence)
        assert table_names(target) == []
        with admin(dbname=target) as connection:
            assert connection.execute("SELECT extname FROM pg_extension").fetchall() == [("plpgsql",)]
        assert scratch_databases(app) == []
        assert digests(app) == before
        runs = json.loads(run_worker(["history", "--json", "--job", "drill"], env, cwd=tmp_path).stdout)
        assert runs[0]["outcome"] == "failed" and runs[0]["stage"] == "restore"
    finally:
        with admin(dbname=app) as connection:
            connection.execute("DROP EXTENSION IF EXISTS dblink CASCADE")


def test_a_drill_target_that_is_not_empty_is_refused_and_left_as_it_was(
        tmp_path: Path, worker_env, make_db, moto_endpoint, bucket) -> None:
    app = make_db("app", populated=True, events=100)
    occupied = make_db("occupied", populated=True, events=10)
    env = drill_env(worker_env, moto_endpoint, bucket, BACKUP_SOURCE=url_for(app), DRILL_TARGET_URL=url_for(occupied))
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    before = digests(occupied)
    sentence = failed_sentence(run_worker(["drill"], env, cwd=tmp_path))
    assert "failed at stage scratch" in sentence
    assert f"the drill target postgresql://{'postgres'}@" in sentence and "is not empty: it holds table public.attachments" in sentence
    assert digests(occupied) == before


def test_a_role_without_createdb_is_told_the_right_or_drill_target_url(
        tmp_path: Path, worker_env, make_db, make_role, moto_endpoint, bucket) -> None:
    app = make_db("owned")
    role = make_role("nocreate", "LOGIN NOCREATEDB", owns=app)
    with admin(dbname=app) as connection:
        connection.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        connection.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        connection.execute("INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 50) g")
    env = drill_env(worker_env, moto_endpoint, bucket, BACKUP_SOURCE=url_for(app, user=role))
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    sentence = failed_sentence(run_worker(["drill"], env, cwd=tmp_path))
    assert f"the PostgreSQL role {role} may not create databases" in sentence
    assert f"ALTER ROLE {role} CREATEDB" in sentence and "DRILL_TARGET_URL" in sentence
    assert scratch_databases(app) == []
