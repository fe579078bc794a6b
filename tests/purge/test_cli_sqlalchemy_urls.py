"""The URL the app already has, for PostgreSQL: DATABASE_URL or BACKUP_SOURCE in SQLAlchemy form works for
`config`, `backup` and `restore --to`, and table retention acts on that very database."""

import json
from pathlib import Path
import subprocess

import pytest

from tests.conftest import run_worker
from tests.purge.conftest import pg_execute
from tests.purge.test_cli_postgres_purge import SCHEMA


@pytest.mark.parametrize("variable", ["DATABASE_URL", "BACKUP_SOURCE"])
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "asyncpg"])
def test_a_sqlalchemy_postgresql_url_configures_backs_up_and_restores(variable: str, driver: str, pg_url: str,
                                                                      worker_env: dict[str, str], tmp_path: Path) -> None:
    pg_execute(pg_url, "CREATE TABLE notes (id int PRIMARY KEY, body text); "
                       "INSERT INTO notes SELECT n, 'note ' || n FROM generate_series(1, 25) n")
    env = {key: value for key, value in worker_env.items() if key != "BACKUP_SOURCE"}
    env[variable] = pg_url.replace("postgresql://", f"postgresql+{driver}://")
    name = pg_url.rsplit("/", 1)[1]

    config = run_worker(["config"], env, cwd=tmp_path)
    assert config.code == 0, config.stderr
    assert f"BACKUP_SETS={name}" in config.stdout.splitlines()
    assert "warning" not in config.stderr  # the preflight found a fitting pg_dump for this very server

    backup = run_worker(["backup", "--json"], env, cwd=tmp_path)
    assert backup.code == 0, backup.stderr
    artifact = json.loads(backup.stdout)["artifact"]
    assert artifact.startswith(f"{name}-") and artifact.endswith(".pgdump.zst")

    target = tmp_path / "restored.pgdump"
    restored = run_worker(["restore", "--latest", "--to", str(target)], env, cwd=tmp_path)
    assert restored.code == 0, restored.stderr
    listing = subprocess.run(["pg_restore", "--list", str(target)], capture_output=True, text=True, check=True).stdout
    assert "TABLE DATA public notes" in listing


def test_table_retention_on_a_psycopg_url_purges_that_same_database(pg_url: str, worker_env: dict[str, str],
                                                                    tmp_path: Path) -> None:
    pg_execute(pg_url, SCHEMA)
    env = {**worker_env, "BACKUP_SOURCE": pg_url.replace("postgresql://", "postgresql+psycopg://"),
           "RETENTION_RULES": "events.created_at=30d"}
    result = run_worker(["backup", "--json"], env, cwd=tmp_path)
    assert result.code == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert [(rule["rule"], rule["deleted"]) for rule in outcome["purge"]] == [("events.created_at=30d", 720)]
    assert pg_execute(pg_url, "SELECT count(*) FROM events") == [(720,)]
