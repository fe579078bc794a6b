"""Issue 18 on PostgreSQL, through the command line: a backup records the exact rows of each table, and an emptied
(or recreated, empty) database never becomes the newest backup of a set that holds data."""

from collections.abc import Callable
import json
from pathlib import Path
from typing import Any

from psycopg import sql

from tests.postgres.conftest import HOST, PORT, admin, url_for
from tests.postgres.e2e.conftest import base_env, manifests, s3_settings
from tests.postgres.test_archive_counts import live_counts


def keys(s3_client: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_an_emptied_database_is_refused_at_preflight_and_nothing_is_written_or_uploaded(
        app_pg: str, tmp_path: Path, cli: Callable, moto_endpoint: str, bucket: str, s3_client: Any) -> None:
    env = base_env(tmp_path, url_for(app_pg), **s3_settings(moto_endpoint, bucket))
    first = cli("backup", env=env)
    assert first.code == 0, first.stderr
    (written,) = manifests(tmp_path / "backups")
    assert written["counts"]["tables"] == live_counts(app_pg)  # nobody writes: the live database is the snapshot
    assert written["counts"]["total"] == sum(live_counts(app_pg).values()) > 0
    uploaded = keys(s3_client, bucket)
    with admin(dbname=app_pg) as connection:
        connection.execute("TRUNCATE users, events, messages, attachments, empty_table")

    refused = cli("backup", env=env)
    assert refused.code == 1
    failed = refused.event("job.failed")
    assert failed["stage"] == "preflight"
    assert failed["reason"].startswith(f"the PostgreSQL database {app_pg} at {HOST}:{PORT} holds no rows while the set's "
                                       f"newest backup {written['id']} holds {written['counts']['total']} rows")
    assert f"`python -m worker restore {written['id']} --yes`" in failed["reason"]
    assert len(manifests(tmp_path / "backups")) == 1 and keys(s3_client, bucket) == uploaded


def test_a_database_recreated_empty_is_refused_allowed_on_request_and_restore_latest_brings_back_the_data(
        app_pg: str, tmp_path: Path, cli: Callable, make_db: Callable[..., str]) -> None:
    env = base_env(tmp_path, url_for(app_pg))
    assert cli("backup", env=env).code == 0, "first backup"
    (real,) = manifests(tmp_path / "backups")
    with admin() as connection:  # the service's database is created anew, under the same name
        connection.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(app_pg)))
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(app_pg)))

    refused = cli("backup", env=env)
    assert refused.code == 1 and refused.event("job.failed")["stage"] == "preflight"
    allowed = cli("backup", env={**env, "BACKUP_ALLOW_EMPTY": "true"})
    assert allowed.code == 0, allowed.stderr
    done = allowed.event("job.succeeded")
    assert done["flags"] == ["empty_allowed"]
    empty = next(m for m in manifests(tmp_path / "backups") if m["id"] == done["backup"])
    assert empty["flags"] == ["empty_allowed"] and empty["counts"] == {"unit": "rows", "total": 0, "tables": {}}

    scratch = make_db("scratch")
    restored = cli("restore", "--latest", "--target-url", url_for(scratch), "--yes", env=env)
    assert restored.code == 0, restored.stderr
    assert f"passed over {done['backup']}" in restored.stdout + restored.stderr
    assert f"restored {real['id']}" in restored.stdout
    assert live_counts(scratch) == real["counts"]["tables"]

    pruned = cli("prune", env={**env, "BACKUP_RETENTION_DAYS": "0", "BACKUP_KEEP_MIN": "1"})
    assert pruned.code == 0, pruned.stderr
    assert real["id"] in [m["id"] for m in manifests(tmp_path / "backups")]  # the empty one never fills the slot
    listed = json.loads(cli("list", "--json", env=env).stdout)
    assert all("empty_allowed" not in row["flags"] or row["id"] == done["backup"] for row in listed)
