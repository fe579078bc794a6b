"""Fixtures for the drill tests: databases on the suite's PostgreSQL server, private redis-servers, a moto
bucket, and the helpers that tell what a drill left behind."""

from pathlib import Path

from tests.postgres.conftest import admin, make_db, make_role  # noqa: F401
from tests.s3.conftest import (aws_env, boto_session, bucket, client_for, moto_endpoint, s3_client,  # noqa: F401
                               s3_endpoint, s3_server)
from tests.e2e.test_restore_at_start import PREFIX, s3_env


def drill_env(worker_env: dict[str, str], endpoint: str, bucket_name: str, **extra: str) -> dict[str, str]:
    """The worker's environment with the bucket configured (and `extra` variables)."""
    return {**worker_env, **s3_env(endpoint, bucket_name), **extra}


def scratch_databases(of: str) -> list[str]:
    """Return the databases on the suite's server named as a drill names the scratch databases of `of`."""
    with admin() as connection:
        return [row[0] for row in connection.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (f"{of}_drill_",)).fetchall()]


def temporaries(backup_dir: Path) -> list[str]:
    """Return the temporary files and directories (ours start with `.tmp-`) left in the backup directory."""
    return sorted(path.name for path in backup_dir.iterdir() if path.name.startswith(".tmp-")) if backup_dir.exists() else []


def bucket_key(client, bucket_name: str, suffix: str) -> str:
    """Return the one key in the bucket ending with `suffix`."""
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=bucket_name, Prefix=PREFIX)["Contents"]]
    found = [key for key in keys if key.endswith(suffix)]
    assert len(found) == 1, keys
    return found[0]


def table_names(url_dbname: str) -> list[str]:
    with admin(dbname=url_dbname) as connection:
        return [row[0] for row in connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')").fetchall()]

