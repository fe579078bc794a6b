"""Fixtures for table retention: SQLite files and PostgreSQL databases with rows spanning 60 days."""

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
import os
from pathlib import Path
import sqlite3
import uuid

import threading

import psycopg
import pytest

from jobs.engines import open_source
from jobs.engines.pg_connect import parse_url
from jobs.engines.postgres import exported_snapshot
from jobs.purge import Held, PgSnapshot

NOW = datetime(2026, 11, 22, 2, 0, 0, tzinfo=timezone.utc)
PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PG_PORT = os.environ.get("TEST_PG_PORT", "5432")
PG_USER = os.environ.get("TEST_PG_USER", "postgres")


ZONES = [timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)), timezone(timedelta(hours=14)),
         timezone(timedelta(hours=-14))]


def iso_variants(moment: datetime, index: int) -> str:
    """Return `moment` as one of the ISO 8601 spellings apps write into SQLite, chosen by `index`."""
    zone = ZONES[(index // 7) % len(ZONES)]
    variants = [
        lambda: moment.strftime("%Y-%m-%d %H:%M:%S"),  # SQLite's CURRENT_TIMESTAMP
        lambda: moment.strftime("%Y-%m-%dT%H:%M:%S"),
        lambda: moment.strftime("%Y-%m-%d %H:%M:%S.%f"),  # SQLAlchemy's DateTime on SQLite
        lambda: moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",  # JavaScript's toISOString()
        lambda: moment.astimezone(zone).isoformat(),  # the same instant written in another zone
        lambda: moment.strftime("%Y-%m-%d %H:%M"),  # minutes only
        lambda: moment.strftime("%Y-%m-%d"),  # a date
    ]
    return variants[index % len(variants)]()


def parse_moment(text: str) -> datetime:
    """The test's own reading of a stored ISO 8601 time (no offset means UTC)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


STEP = timedelta(minutes=37, seconds=13, microseconds=250_000)


def spanning_moments(days: int = 60, step: timedelta = STEP) -> list[datetime]:
    """Moments from NOW back over `days` days, plus a few right around the 30-day cutoff."""
    moments = []
    moment = NOW
    while moment > NOW - timedelta(days=days):
        moments.append(moment)
        moment -= step
    cutoff = NOW - timedelta(days=30)
    moments += [cutoff + timedelta(seconds=delta) for delta in (-3600, -61, -1, -0.5, 0, 0.5, 1, 60, 3600)]
    return moments


def make_sqlite(path: Path, schema: str, wal: bool = True) -> sqlite3.Connection:
    """Create a SQLite file with `schema`; return an autocommit connection (synchronous=OFF: each test row is its own
    transaction, and the tests do not survive power cuts anyway)."""
    db = sqlite3.connect(path, isolation_level=None)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.executescript(schema)
    return db


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'app.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database `bw_purge_<uuid8>`, dropped afterwards; yields its URL."""
    name = f"bw_purge_{uuid.uuid4().hex[:8]}"
    admin = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_execute(url: str, sql: str, params: object = None) -> list[tuple]:
    """Run one statement (or script, without params) on the test database; return its rows, if any."""
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as connection:
        cursor = connection.execute(sql, params) if params is not None else connection.execute(sql)
        return cursor.fetchall() if cursor.description else []


def hold(url: str, cwd: Path | None = None) -> Held:
    """What a backup taken now of the database at `url` would hold, taken the way the engines take it: SQLite, a
    consistent copy of the file beside it (the engine's copy_to); PostgreSQL, an exported snapshot and the
    transactions running right after it."""
    if url.startswith("sqlite"):
        path = open_source(url, cwd or Path.cwd()).path
        copy = path.with_name(f"{path.name}.held-{uuid.uuid4().hex[:8]}")
        open_source(url, cwd or Path.cwd()).copy_to(copy, threading.Event())
        return Held(backup="test", sqlite_file=copy)
    with exported_snapshot(parse_url(url)) as (_, snapshot, running):
        return Held(backup="test", pg_snapshot=PgSnapshot.parse(snapshot, running))
