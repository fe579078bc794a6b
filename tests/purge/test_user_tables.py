"""Whether a database has user tables at all, the question that tells a new database (the purge waits) from one
whose RETENTION_RULES name a table that is not there (a configuration error)."""

from pathlib import Path
import sqlite3

import pytest

from jobs.purge import inspect_rules, parse_retention_rules
from tests.purge.conftest import pg_execute

RULES = parse_retention_rules("events.created_at=30d;sessions.start_time=7d")


@pytest.mark.parametrize(("schema", "has_tables"), [
    ("PRAGMA journal_mode=WAL", False),
    ("PRAGMA user_version=3", False),
    ("CREATE TABLE t (x); DROP TABLE t", False),
    ("CREATE TABLE t (x INTEGER PRIMARY KEY AUTOINCREMENT); DROP TABLE t", False),  # sqlite_sequence stays
    ("CREATE VIEW v AS SELECT 1 AS x", False),
    ("CREATE TABLE users (id INTEGER PRIMARY KEY)", True),
    ("CREATE TABLE sqlitefoo (id INTEGER)", True),  # `sqlite_` only with the underscore
])
def test_sqlite(tmp_path: Path, schema: str, has_tables: bool) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.executescript(schema)
    check = inspect_rules(f"sqlite:///{path}", RULES)
    if has_tables:
        assert check.waiting is None and len(check.problems) == 2
    else:
        assert check.problems == [] and "no tables yet" in check.waiting and "tables events, sessions exist" in check.waiting


@pytest.mark.parametrize(("schema", "has_tables"), [
    ("SELECT 1", False),
    ("CREATE SCHEMA app", False),
    ("CREATE VIEW v AS SELECT 1 AS x", False),
    ("CREATE SEQUENCE s", False),
    ("CREATE TABLE users (id int)", True),
    ("CREATE SCHEMA app; CREATE TABLE app.users (id int)", True),
    ("CREATE TABLE p (at date) PARTITION BY RANGE (at)", True),
])
def test_postgresql(pg_url: str, schema: str, has_tables: bool) -> None:
    pg_execute(pg_url, schema)
    check = inspect_rules(pg_url, RULES)
    assert (check.waiting is None) is has_tables and (len(check.problems) == 2) is has_tables
