"""Table retention through `python -m worker` on a real PostgreSQL database with rows spanning 60 days."""

import json
from pathlib import Path
import shutil
import subprocess
import uuid

import psycopg
import pytest
import zstandard

from tests.conftest import run_worker
from tests.purge.conftest import PG_HOST, PG_PORT, PG_USER, pg_execute

RULES = "events.created_at=30d;audit.days.on_day=30d"
SCHEMA = """
CREATE TABLE events (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL, body text);
CREATE SCHEMA audit;
CREATE TABLE audit.days (id int PRIMARY KEY, on_day date NOT NULL);
INSERT INTO events (created_at, body)
    SELECT now() - make_interval(hours => hour) - interval '30 minutes', 'event ' || hour FROM generate_series(0, 1439) hour;
INSERT INTO audit.days SELECT day, current_date - day FROM generate_series(0, 59) day;
"""


def test_backup_of_a_postgres_source_purges_old_rows_and_the_backup_just_made_holds_them_all(
        pg_url: str, worker_env: dict[str, str], tmp_path: Path) -> None:
    pg_execute(pg_url, SCHEMA)
    env = {**worker_env, "BACKUP_SOURCE": pg_url, "RETENTION_RULES": RULES}

    dry = run_worker(["prune", "--dry-run"], env, cwd=tmp_path)
    assert dry.code == 0, dry.stderr
    assert "table events.created_at=30d: would delete 720 rows" in dry.stdout
    assert pg_execute(pg_url, "SELECT count(*) FROM events") == [(1440,)]

    result = run_worker(["backup", "--json"], env, cwd=tmp_path)
    assert result.code == 0, result.stderr
    outcome = json.loads(result.stdout)
    deleted = {rule["rule"]: rule["deleted"] for rule in outcome["purge"]}
    days_left = pg_execute(pg_url, "SELECT count(*) FROM audit.days")[0][0]
    assert deleted == {"events.created_at=30d": 720, "audit.days.on_day=30d": 60 - days_left}
    assert 28 <= days_left <= 31
    assert pg_execute(pg_url, "SELECT count(*) FROM events") == [(720,)]

    assert pg_restored_count(Path(worker_env["BACKUP_DIR"]) / outcome["artifact"], tmp_path) == (1440, 60)


def pg_restored_count(artifact: Path, tmp_path: Path) -> tuple[int, int]:
    """Restore the artifact with the stock pg_restore into a new database; return its row counts."""
    raw = tmp_path / "dump.pgdump"
    with open(artifact, "rb") as packed, open(raw, "wb") as out:
        zstandard.ZstdDecompressor().copy_stream(packed, out)
    name = f"bw_purge_restored_{uuid.uuid4().hex[:8]}"
    admin = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        subprocess.run([shutil.which("pg_restore") or "pg_restore", "-h", PG_HOST, "-p", PG_PORT, "-U", PG_USER,
                        "-d", name, "--no-owner", str(raw)], check=True, capture_output=True)
        url = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
        return (pg_execute(url, "SELECT count(*) FROM events")[0][0], pg_execute(url, "SELECT count(*) FROM audit.days")[0][0])
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("rule", ["events.nosuch=30d", "audit.nosuch.on_day=30d"])
def test_an_unknown_postgres_table_or_column_is_exit_2_and_nothing_is_deleted(
        pg_url: str, worker_env: dict[str, str], tmp_path: Path, rule: str) -> None:
    pg_execute(pg_url, SCHEMA)
    env = {**worker_env, "BACKUP_SOURCE": pg_url, "RETENTION_RULES": f"{RULES};{rule}"}
    for command in (["backup"], ["config"]):
        result = run_worker(command, env, cwd=tmp_path)
        assert result.code == 2 and f"RETENTION_RULES: {rule}:" in result.stderr, result.stderr
    assert pg_execute(pg_url, "SELECT count(*) FROM events") == [(1440,)]
