"""Table retention as a user runs it, whatever the table's key (uuid, text, composite, none), on exactly the
database the backup read (one parse of BACKUP_SOURCE), and never on text that is only a time of day."""

from datetime import datetime, timedelta, timezone
import json
from pathlib import Path
import sqlite3
import subprocess
import sys
import uuid

import psycopg
import pytest

from tests.conftest import ROOT, run_worker
from tests.purge.conftest import PG_HOST, PG_PORT, PG_USER, make_sqlite, pg_execute

OLD, NEW = 1500, 1000  # more old rows than one batch (1000)

PG_TABLES = {
    "uuid": "CREATE TABLE sessions (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), started_at timestamptz NOT NULL)",
    "text": "CREATE TABLE sessions (id text PRIMARY KEY DEFAULT md5(random()::text), started_at timestamptz NOT NULL)",
    "composite": "CREATE TABLE sessions (region text DEFAULT 'eu', id bigint GENERATED ALWAYS AS IDENTITY, "
                 "started_at timestamptz NOT NULL, PRIMARY KEY (region, id))",
    "none": "CREATE TABLE sessions (started_at timestamptz NOT NULL, body text)",
}
SQLITE_TABLES = {
    "uuid blob, without rowid": "CREATE TABLE sessions (id BLOB PRIMARY KEY DEFAULT (randomblob(16)), "
                                "started_at TEXT NOT NULL) WITHOUT ROWID",
    "text, without rowid": "CREATE TABLE sessions (id TEXT PRIMARY KEY DEFAULT (hex(randomblob(8))), "
                           "started_at TEXT NOT NULL) WITHOUT ROWID",
    "none (rowid)": "CREATE TABLE sessions (started_at TEXT NOT NULL, body TEXT)",
}


def times() -> list[str]:
    now = datetime.now(timezone.utc)
    return [(now - timedelta(days=60) + timedelta(minutes=index)).strftime("%Y-%m-%d %H:%M:%S") for index in range(OLD)] + \
        [(now - timedelta(days=10) + timedelta(minutes=index)).strftime("%Y-%m-%d %H:%M:%S") for index in range(NEW)]


def backup(env: dict[str, str], cwd: Path) -> dict:
    result = run_worker(["backup", "--json"], env, cwd=cwd, timeout=300)
    assert result.code == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("key", list(PG_TABLES))
def test_a_postgres_rule_works_whatever_the_tables_key_and_the_outcome_says_so(
        key: str, pg_url: str, worker_env: dict[str, str], tmp_path: Path) -> None:
    pg_execute(pg_url, PG_TABLES[key])
    with psycopg.connect(pg_url) as connection:
        connection.cursor().executemany("INSERT INTO sessions (started_at) VALUES (%s)",
                                        [(moment + "+00",) for moment in times()])
    env = {**worker_env, "BACKUP_SOURCE": pg_url, "RETENTION_RULES": "sessions.started_at=30d"}

    outcome = backup(env, tmp_path)

    assert outcome["purge_failed"] == [] and "purge_error" not in outcome, outcome
    assert [(rule["deleted"], rule["error"]) for rule in outcome["purge"]] == [(OLD, None)]
    assert outcome["purge"][0]["batches"] == 2
    assert pg_execute(pg_url, "SELECT count(*) FROM sessions") == [(NEW,)]


@pytest.mark.parametrize("key", list(SQLITE_TABLES))
def test_a_sqlite_rule_works_whatever_the_tables_key_and_the_outcome_says_so(
        key: str, worker_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = make_sqlite(path, SQLITE_TABLES[key])
    db.executemany("INSERT INTO sessions (started_at) VALUES (?)", [(moment,) for moment in times()])
    db.close()
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{path}", "RETENTION_RULES": "sessions.started_at=30d"}

    outcome = backup(env, tmp_path)

    assert outcome["purge_failed"] == [] and "purge_error" not in outcome, outcome
    assert [(rule["deleted"], rule["error"]) for rule in outcome["purge"]] == [(OLD, None)]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM sessions").fetchone() == (NEW,)


# --- one parse of BACKUP_SOURCE -----------------------------------------------------------------------------------

def events(path: Path) -> int:
    db = make_sqlite(path, "CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL);")
    db.executemany("INSERT INTO events (created_at) VALUES (?)", [(moment,) for moment in times()])
    db.close()
    return OLD + NEW


def count(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM events").fetchone()[0]


def test_a_sqlite_url_with_a_percent_sign_purges_the_file_the_backup_read_and_no_other(
        worker_env: dict[str, str], tmp_path: Path) -> None:
    named = tmp_path / "a%20b.db"  # what BACKUP_SOURCE names, read as the backup reads it
    other = tmp_path / "a b.db"  # what a second parser that decodes %20 would open
    events(named), events(other)
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{tmp_path}/a%20b.db", "RETENTION_RULES": "events.created_at=30d"}

    outcome = backup(env, tmp_path)

    assert outcome["purged_rows"] == OLD and outcome["purge_failed"] == []
    assert count(named) == NEW and count(other) == OLD + NEW


@pytest.fixture
def twin_databases() -> tuple[str, str]:
    """Two databases, `X+p` and `X p`: libpq reads `?dbname=X+p` as the first, SQLAlchemy as the second."""
    base = f"bw_purge_{uuid.uuid4().hex[:8]}"
    names = (f"{base}+p", f"{base} p")
    admin = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        for name in names:
            connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield names
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            for name in names:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_postgres_url_that_sqlalchemy_and_libpq_read_differently_purges_the_database_the_backup_read(
        twin_databases: tuple[str, str], worker_env: dict[str, str], tmp_path: Path) -> None:
    backed_up, other = twin_databases
    for name in twin_databases:
        url = psycopg.conninfo.make_conninfo(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=name)
        pg_execute(url, "CREATE TABLE events (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL)")
        with psycopg.connect(url) as connection:
            connection.cursor().executemany("INSERT INTO events (created_at) VALUES (%s)",
                                            [(moment + "+00",) for moment in times()])
    source = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres?dbname={backed_up}"
    env = {**worker_env, "BACKUP_SOURCE": source, "RETENTION_RULES": "events.created_at=30d"}

    outcome = backup(env, tmp_path)

    def left(name: str) -> int:
        url = psycopg.conninfo.make_conninfo(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=name)
        return pg_execute(url, "SELECT count(*) FROM events")[0][0]

    assert outcome["purged_rows"] == OLD and outcome["purge_failed"] == []
    assert (left(backed_up), left(other)) == (NEW, OLD + NEW)


# --- a time of day is not a date ------------------------------------------------------------------------------------

def test_text_that_is_only_a_time_of_day_is_not_a_date_and_is_never_deleted(
        worker_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    clock = ["12:30", "12:30:00", "00:00", "23:59:59.5", "12:30Z", "T12:30"]
    db = make_sqlite(path, "CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL);")
    moments = times()
    # in the middle of the table, where the start-up check's sample (both ends) does not look
    middle = moments[: OLD // 2] + clock + moments[OLD // 2:]
    db.executemany("INSERT INTO events (created_at) VALUES (?)", [(moment,) for moment in middle])
    db.close()
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{path}", "RETENTION_RULES": "events.created_at=30d"}

    dry = run_worker(["prune", "--dry-run"], env, cwd=tmp_path)
    assert dry.code == 0 and f"would delete {OLD} rows" in dry.stdout, dry.stdout + dry.stderr
    outcome = backup(env, tmp_path)

    assert outcome["purged_rows"] == OLD
    with sqlite3.connect(path) as db:
        left = [row[0] for row in db.execute("SELECT created_at FROM events WHERE created_at NOT GLOB '2*-*' ORDER BY id")]
    assert left == clock


# --- review of issue 17: partitions and side effects ----------------------------------------------------------

def test_a_partitioned_table_without_a_key_loses_only_its_old_rows(pg_url: str, worker_env: dict[str, str], tmp_path: Path) -> None:
    """A ctid names a row within one partition only: every partition numbers its rows from (0,1)."""
    pg_execute(pg_url, "CREATE TABLE events (created_at timestamptz NOT NULL, payload text) PARTITION BY RANGE (created_at)")
    pg_execute(pg_url, "CREATE TABLE events_old PARTITION OF events FOR VALUES FROM ('2000-01-01') TO ('2026-01-01')")
    pg_execute(pg_url, "CREATE TABLE events_new PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2100-01-01')")
    pg_execute(pg_url, "INSERT INTO events SELECT timestamptz '2020-01-01' + n * interval '1 day', 'old' FROM generate_series(1, 5) n")
    pg_execute(pg_url, "INSERT INTO events SELECT now() - n * interval '1 minute', 'new' FROM generate_series(1, 5) n")
    env = {**worker_env, "BACKUP_SOURCE": pg_url, "RETENTION_RULES": "events.created_at=30d"}

    outcome = backup(env, tmp_path)

    assert [(rule["deleted"], rule["error"]) for rule in outcome["purge"]] == [(5, None)]
    assert pg_execute(pg_url, "SELECT payload, count(*) FROM events GROUP BY payload") == [("new", 5)]


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_a_rule_whose_delete_fires_a_trigger_is_refused_at_start(engine: str, pg_url: str, worker_env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    """A delete trigger may remove rows no backup holds (an attachment written after the snapshot)."""
    if engine == "sqlite":
        path = tmp_path / "app.db"
        db = make_sqlite(path, "CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL)")
        db.execute("CREATE TABLE attachments (event_id INTEGER, body TEXT)")
        db.execute("CREATE TRIGGER drop_attachments AFTER DELETE ON events BEGIN "
                   "DELETE FROM attachments WHERE event_id = old.id; END")
        db.execute("INSERT INTO events (created_at) VALUES ('2020-01-01 00:00:00')")
        db.commit()
        db.close()
        source = f"sqlite:///{path}"
    else:
        pg_execute(pg_url, "CREATE TABLE events (id serial PRIMARY KEY, created_at timestamptz NOT NULL)")
        pg_execute(pg_url, "CREATE TABLE attachments (event_id int, body text)")
        pg_execute(pg_url, "CREATE FUNCTION drop_attachments() RETURNS trigger LANGUAGE plpgsql AS "
                           "$$ BEGIN DELETE FROM attachments WHERE event_id = old.id; RETURN old; END $$")
        pg_execute(pg_url, "CREATE TRIGGER drop_attachments AFTER DELETE ON events FOR EACH ROW EXECUTE FUNCTION drop_attachments()")
        pg_execute(pg_url, "INSERT INTO events (created_at) VALUES ('2020-01-01')")
        source = pg_url
    env = {**worker_env, "BACKUP_SOURCE": source, "RETENTION_RULES": "events.created_at=30d"}
    result = run_worker(["backup"], env, cwd=tmp_path)
    assert result.code == 2
    assert "drop_attachments" in result.stderr and "RETENTION_RULES" in result.stderr


@pytest.mark.parametrize("below", ["a partition's trigger", "an inheritance grandchild's rule"])
def test_a_trigger_or_rule_on_a_partition_or_child_of_the_table_is_refused_at_start(
        below: str, pg_url: str, worker_env: dict[str, str], tmp_path: Path) -> None:
    """A delete on the table reaches its partitions' and children's rows, and fires what is set on them."""
    pg_execute(pg_url, "CREATE TABLE attachments (event_id int, body text)")
    if below == "a partition's trigger":
        pg_execute(pg_url, "CREATE TABLE events (id int, created_at timestamptz NOT NULL) PARTITION BY RANGE (created_at)")
        pg_execute(pg_url, "CREATE TABLE events_old PARTITION OF events FOR VALUES FROM ('2000-01-01') TO ('2026-01-01')")
        pg_execute(pg_url, "CREATE FUNCTION drop_attachments() RETURNS trigger LANGUAGE plpgsql AS "
                           "$$ BEGIN DELETE FROM attachments WHERE event_id = old.id; RETURN old; END $$")
        pg_execute(pg_url, "CREATE TRIGGER drop_attachments AFTER DELETE ON events_old FOR EACH ROW "
                           "EXECUTE FUNCTION drop_attachments()")
        named = "trigger drop_attachments on events_old"
    else:
        pg_execute(pg_url, "CREATE TABLE events (id int, created_at timestamptz NOT NULL)")
        pg_execute(pg_url, "CREATE TABLE events_child () INHERITS (events)")
        pg_execute(pg_url, "CREATE TABLE events_grandchild () INHERITS (events_child)")
        pg_execute(pg_url, "CREATE RULE drop_attachments AS ON DELETE TO events_grandchild "
                           "DO ALSO DELETE FROM attachments WHERE event_id = old.id")
        named = "rule drop_attachments on events_grandchild"
    pg_execute(pg_url, "INSERT INTO events (id, created_at) VALUES (1, '2020-01-01')")
    env = {**worker_env, "BACKUP_SOURCE": pg_url, "RETENTION_RULES": "events.created_at=30d"}
    result = run_worker(["backup"], env, cwd=tmp_path)
    assert result.code == 2, result.stdout + result.stderr
    assert named in result.stderr and "RETENTION_RULES" in result.stderr


def test_an_insert_trigger_whose_body_deletes_is_no_delete_trigger(worker_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = make_sqlite(path, "CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL)")
    db.execute("CREATE TABLE seen (n INTEGER)")
    db.execute("create trigger trim_seen after insert on events begin delete from seen; end")
    db.execute("INSERT INTO events (created_at) VALUES ('2020-01-01 00:00:00')")
    db.commit()
    db.close()
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{path}", "RETENTION_RULES": "events.created_at=30d"}
    assert backup(env, tmp_path)["purged_rows"] == 1


def test_a_cycle_whose_clock_is_a_year_ahead_deletes_no_row_by_age(worker_env: dict[str, str], tmp_path: Path) -> None:
    """Ages count from the newest backup before the cycle's own (as backup retention does), not from a wall clock
    that jumped."""
    path = tmp_path / "app.db"
    db = make_sqlite(path, "CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL)")
    now = datetime.now(timezone.utc)
    db.executemany("INSERT INTO events (created_at) VALUES (?)",
                   [((now - timedelta(days=day, hours=12)).strftime("%Y-%m-%d %H:%M:%S"),) for day in range(60)])
    db.commit()
    db.close()
    env = {**worker_env, "BACKUP_SOURCE": f"sqlite:///{path}", "RETENTION_RULES": "events.created_at=30d"}
    assert backup(env, tmp_path)["purged_rows"] == 30  # days 30..59: a normal night
    ahead = subprocess.run([sys.executable, str(ROOT / "tests" / "fake_clock.py"), "backup", "--json"],
                           env={**env, "CLOCK_OFFSET_S": str(365 * 86400)}, cwd=tmp_path, text=True, capture_output=True,
                           timeout=300)
    assert ahead.returncode == 0, ahead.stderr
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM events").fetchone() == (30,)
