"""Backup, list, verify and restore of PostgreSQL through the command line, compared table by table."""

import json
from pathlib import Path

from tests.postgres.conftest import admin, digests, url_for
from tests.postgres.e2e.conftest import base_env, manifests, plain_lines, s3_settings


def change_rows(dbname: str) -> None:
    """Change the data without changing the schema: what an app does between two backups."""
    with admin(dbname=dbname) as connection:
        connection.execute("DELETE FROM events WHERE id % 3 = 0; UPDATE users SET email = email || '.changed' WHERE id < 50;"
                           "INSERT INTO messages (user_id, body) VALUES (1, 'written after the backup');"
                           "SELECT nextval('invoice_numbers')")


def test_backup_list_verify_then_restore_into_a_fresh_database_matches_table_by_table(app_pg, make_db, tmp_path, cli):
    env = base_env(tmp_path, url_for(app_pg))
    backup = cli("backup", "--json", env=env)
    assert backup.code == 0, backup.stderr
    done = json.loads(backup.stdout)
    assert done["artifact"].endswith(".pgdump.zst") and done["verified"] == "pg_restore read every block"
    (manifest,) = manifests(tmp_path / "backups")
    assert manifest["format"]["kind"] == "pgdump" and "reason" not in manifest
    assert manifest["versions"]["pg_dump"].split(".")[0] == manifest["versions"]["server"].split(".")[0]

    listed = cli("list", "--json", env=env)
    assert listed.code == 0 and [row["id"] for row in json.loads(listed.stdout)] == [manifest["id"]]
    verified = cli("verify", env=env)
    assert verified.code == 0 and "pg_restore read every block" in verified.stdout

    fresh = make_db("fresh")
    asked = cli("restore", "--target-url", url_for(fresh), env=env)  # no terminal, no --yes: refused, names both
    assert asked.code == 2 and manifest["id"] in asked.stderr and fresh in asked.stderr and "ago" in asked.stderr
    restored = cli("restore", "--target-url", url_for(fresh), "--yes", env=env)
    assert restored.code == 0, restored.stderr
    assert f"restored {manifest['id']}" in restored.stdout
    assert digests(fresh) == digests(app_pg)
    assert len(manifests(tmp_path / "backups")) == 1  # a restore into another database takes no safety backup


def test_restore_over_the_source_takes_a_pre_restore_safety_backup_that_brings_back_the_state_before(app_pg, tmp_path, cli):
    env = base_env(tmp_path, url_for(app_pg))
    assert cli("backup", env=env).code == 0
    backed_up = digests(app_pg)
    (first,) = manifests(tmp_path / "backups")
    change_rows(app_pg)
    changed = digests(app_pg)
    assert changed != backed_up

    restored = cli("restore", first["id"], "--yes", env=env)
    assert restored.code == 0, restored.stderr
    assert digests(app_pg) == backed_up
    safety = [m for m in manifests(tmp_path / "backups") if m.get("reason") == "pre-restore"]
    assert len(safety) == 1 and safety[0]["verified"]["result"] == "ok"
    notice = restored.stderr.index(f"safety backup {safety[0]['id']}")
    assert notice < restored.stderr.index('"pg_restore.start"')  # the id is printed before the restore begins
    assert safety[0]["id"] in restored.stdout

    back = cli("restore", safety[0]["id"], "--yes", env=env)
    assert back.code == 0, back.stderr
    assert digests(app_pg) == changed


def test_a_restore_that_fails_leaves_the_source_unchanged_and_names_the_safety_backup(app_pg, tmp_path, cli):
    env = base_env(tmp_path, url_for(app_pg))
    assert cli("backup", env=env).code == 0
    change_rows(app_pg)
    with admin(dbname=app_pg) as connection:  # a newer object that depends on a table: --clean cannot drop it
        connection.execute("CREATE VIEW recent_events AS SELECT id, kind FROM events WHERE id > 100")
    before = digests(app_pg)

    failed = cli("restore", "--latest", "--yes", env=env)
    assert failed.code == 1
    notice, sentence = plain_lines(failed)
    safety = [m for m in manifests(tmp_path / "backups") if m.get("reason") == "pre-restore"]
    assert len(safety) == 1 and notice.startswith(f"safety backup {safety[0]['id']}")
    print(sentence)
    assert "rolled back" in sentence and "unchanged" in sentence and safety[0]["id"] in sentence
    assert digests(app_pg) == before


def test_a_restore_needing_an_extension_the_target_role_may_not_create_names_it_and_the_fix(
        app_pg, make_db, make_role, tmp_path, cli):
    """The drill's sentence (tests/drill/test_drill_failures.py) comes from the same place: pg_restore.restore_failure."""
    target = make_db("extto")
    with admin(dbname=app_pg) as connection:  # dblink is not trusted: only a superuser may create it
        connection.execute("CREATE EXTENSION dblink")
    role = make_role("ext", owns=target)
    try:
        env = base_env(tmp_path, url_for(app_pg))
        assert cli("backup", env=env).code == 0
        failed = cli("restore", "--latest", "--target-url", url_for(target, user=role), "--yes", env=env)
        assert failed.code == 1
        (sentence,) = plain_lines(failed)
        assert (f"pg_restore into {target} on 127.0.0.1:5432 failed and its transaction was rolled back, so the database "
                f"is unchanged: the backup needs the PostgreSQL extension dblink, which the role {role} may not create on "
                "127.0.0.1:5432 (it is not a trusted extension: only a superuser may create it); to restore as a "
                "superuser, use --target-url with a superuser's URL of a database") in sentence
        with admin(dbname=target) as connection:
            assert connection.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace").fetchone() == (0,)
    finally:
        with admin(dbname=app_pg) as connection:
            connection.execute("DROP EXTENSION dblink")


def test_restore_from_s3_latest_into_a_database_works_on_an_empty_volume_without_a_source(
        app_pg, make_db, tmp_path, cli, moto_endpoint, bucket):
    s3 = s3_settings(moto_endpoint, bucket)
    backup = cli("backup", env=base_env(tmp_path, url_for(app_pg), **s3))
    assert backup.code == 0, backup.stderr
    assert backup.event("job.succeeded")["uploaded"]

    empty = tmp_path / "new-volume"
    env = {**base_env(empty, None, **s3)}
    target = make_db("froms3")
    restored = cli("restore", "--from-s3", "--latest", "--target-url", url_for(target), "--yes", env=env)
    assert restored.code == 0, restored.stderr
    assert "from s3" in restored.stdout
    assert digests(target) == digests(app_pg)
    assert not list((empty / "backups").glob("*.zst*"))  # nothing was kept on the volume


def test_a_corrupt_artifact_is_refused_by_verify_and_never_reaches_the_restore_target(app_pg, make_db, tmp_path, cli):
    env = base_env(tmp_path, url_for(app_pg))
    assert cli("backup", env=env).code == 0
    (manifest,) = manifests(tmp_path / "backups")
    artifact = tmp_path / "backups" / manifest["artifact"]
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))

    verified = cli("verify", env=env)
    assert verified.code == 1 and "SHA-256" in verified.stderr
    target = make_db("untouched")
    with admin(dbname=target) as connection:
        connection.execute("CREATE TABLE users (note text); INSERT INTO users VALUES ('still here')")
    refused = cli("restore", "--target-url", url_for(target), "--yes", env=env)
    assert refused.code == 1 and "SHA-256" in refused.stderr
    over = cli("restore", "--yes", env=env)
    assert over.code == 1 and "SHA-256" in over.stderr
    with admin(dbname=target) as connection:
        assert connection.execute("SELECT note FROM users").fetchall() == [("still here",)]
    assert len(manifests(tmp_path / "backups")) == 1  # a refused backup needs no safety backup


def test_a_backup_from_a_newer_server_major_warns_before_asking(app_pg, make_db, tmp_path, cli):
    env = base_env(tmp_path, url_for(app_pg))
    assert cli("backup", env=env).code == 0
    path = next((tmp_path / "backups").glob("*.json"))
    manifest = json.loads(path.read_text())
    manifest["versions"]["server"] = "99.1"
    path.write_text(json.dumps(manifest))
    asked = cli("restore", "--target-url", url_for(make_db("older")), env=env)
    assert asked.code == 2
    assert asked.stderr.index("warning: the backup comes from PostgreSQL 99.1") < asked.stderr.index("refusing without confirmation")


def test_target_url_is_for_pgdump_backups_and_postgresql_urls_only(tmp_path, cli, app_db):
    env = base_env(tmp_path, f"sqlite:///{app_db}")
    assert cli("backup", env=env).code == 0
    wrong_kind = cli("restore", "--target-url", url_for("postgres"), "--yes", env=env)
    assert wrong_kind.code == 2 and "backup of kind sqlite" in wrong_kind.stderr and "--to PATH" in wrong_kind.stderr
    wrong_url = cli("restore", "--target-url", "mysql://db/app", "--yes", env=env)
    assert wrong_url.code == 2 and "postgresql://" in wrong_url.stderr


def test_an_unreachable_target_fails_before_anything_is_asked(app_pg, tmp_path, cli):
    env = base_env(tmp_path, url_for(app_pg))
    assert cli("backup", env=env).code == 0
    failed = cli("restore", "--target-url", "postgresql://postgres@127.0.0.1:1/nowhere", env=env)
    assert failed.code == 1
    assert plain_lines(failed) == ["cannot connect to PostgreSQL at 127.0.0.1:1: connection refused; check the host and "
                                   "port in the URL and that the server is running"]


def test_a_target_url_whose_password_hides_the_host_is_refused_without_showing_it(tmp_path, cli):
    env = {"BACKUP_DIR": str(tmp_path / "backups")}
    for url in ("postgresql://app:Zq@xv@127.0.0.1:5432/app", "postgresql://app:Zq/xv@127.0.0.1:5432/app"):
        result = cli("restore", "--latest", "--target-url", url, "--yes", env=env)
        assert result.code == 2 and "--target-url" in result.stderr and "percent-encoded" in result.stderr
        assert "Zq" not in result.stdout + result.stderr and "xv" not in result.stdout + result.stderr


def test_the_same_server_under_another_address_is_the_same_source(app_pg: str, cli, tmp_path: Path) -> None:
    """The server's system identifier, not the URL's host, says which database made a backup: switching from
    127.0.0.1 to localhost (on Railway, from the public to the private address) changes nothing."""
    from tests.postgres.conftest import url_for

    via_ip = url_for(app_pg)
    first = cli("backup", env=base_env(tmp_path, via_ip))
    assert first.code == 0, first.stderr
    second = cli("backup", env=base_env(tmp_path, via_ip.replace("127.0.0.1", "localhost")))
    assert second.code == 0, second.stderr
    manifest = json.loads((tmp_path / "backups" / f"{second.event('job.succeeded')['artifact']}.json").read_text())
    assert manifest["source"]["cluster"] and manifest["source"]["host"] == "localhost"
