"""Real PostgreSQL for the engine's tests: uniquely named databases on the suite's server (dropped afterwards),
and a private server with password (scram-sha-256) authentication for the tests about passwords, since the
suite's server may trust every local connection."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
import glob
import os
from pathlib import Path
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid

import psycopg
from psycopg import sql
import pytest

from jobs.engines import postgres

HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PORT = int(os.environ.get("TEST_PG_PORT", "5432"))
ADMIN = os.environ.get("TEST_PG_USER", "postgres")
CHUNK = 1 << 20


def url_for(dbname: str, user: str = ADMIN, password: str | None = None, host: str = HOST, port: int = PORT, query: str = "") -> str:
    auth = f"{user}:{password}" if password else user
    return f"postgresql://{auth}@{host}:{port}/{dbname}" + (f"?{query}" if query else "")


def admin(port: int = PORT, password: str | None = None, dbname: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(url_for(dbname, password=password, port=port), autocommit=True)


def unique(prefix: str) -> str:
    return f"bw_{prefix}_{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- databases ------------------------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE users (id bigserial PRIMARY KEY, email text UNIQUE NOT NULL, created_at timestamptz NOT NULL, profile jsonb);
CREATE TABLE events (id bigserial PRIMARY KEY, user_id bigint REFERENCES users(id), kind text NOT NULL,
                     payload jsonb NOT NULL, created_at timestamptz NOT NULL);
CREATE INDEX events_kind_created ON events (kind, created_at);
CREATE TABLE messages (id bigserial PRIMARY KEY, user_id bigint REFERENCES users(id), body text NOT NULL, sent_at timestamptz);
CREATE TABLE attachments (id serial PRIMARY KEY, name text NOT NULL, data bytea NOT NULL);
CREATE TABLE empty_table (id int PRIMARY KEY, note text);
CREATE SEQUENCE invoice_numbers START 1000;
SELECT nextval('invoice_numbers') FROM generate_series(1, 5);
INSERT INTO users (email, created_at, profile)
  SELECT 'user' || g || '@example.com', timestamptz '2026-01-01' + g * interval '1 minute',
         jsonb_build_object('name', 'User ' || g, 'tags', jsonb_build_array('a', g % 7), 'quote', 'it''s "quoted"')
  FROM generate_series(1, 500) g;
INSERT INTO events (user_id, kind, payload, created_at)
  SELECT 1 + g % 500, (ARRAY['login', 'click', 'purchase', 'logout'])[1 + g % 4],
         jsonb_build_object('n', g, 'path', '/page/' || (g % 97), 'ua', md5(g::text) || repeat('x', 120)),
         timestamptz '2026-02-01' + g * interval '1 second'
  FROM generate_series(1, {events}) g;
INSERT INTO messages (user_id, body, sent_at)
  SELECT 1 + g % 500, 'message ' || g || E' with a tab\\t, a newline\\n and unicode: żółw ✓ ' || md5(g::text), now()
  FROM generate_series(1, 3000) g;
INSERT INTO attachments (name, data)
  SELECT 'file' || g, decode(repeat(md5(g::text), 64), 'hex') || '\\x00ff00'::bytea FROM generate_series(1, 200) g;
CREATE VIEW active_users AS SELECT u.id, u.email, count(e.id) AS events
  FROM users u JOIN events e ON e.user_id = u.id GROUP BY u.id, u.email;
"""
TABLES = ("users", "events", "messages", "attachments", "empty_table")


def populate(dbname: str, events: int = 20000, port: int = PORT, password: str | None = None) -> None:
    """Fill a database with an app-like schema: JSON, text, bytea, sequences, an index, a view, an empty table."""
    with admin(port, password, dbname) as connection:
        connection.execute(SCHEMA.replace("{events}", str(events)))


def digests(dbname: str, port: int = PORT, password: str | None = None) -> dict[str, object]:
    """Return per table (row count, md5 of every row in id order), the sequence's position and the view's rows."""
    found: dict[str, object] = {}
    with admin(port, password, dbname) as connection:
        for table in TABLES:
            query = sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, '' ORDER BY id), '')) FROM {} t").format(sql.Identifier(table))
            found[table] = connection.execute(query).fetchone()
        found["invoice_numbers"] = connection.execute("SELECT last_value FROM invoice_numbers").fetchone()
        found["active_users"] = connection.execute("SELECT count(*), sum(events) FROM active_users").fetchone()
        found["indexes"] = sorted(r[0] for r in connection.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"))
    return found


def drop_database(dbname: str, port: int = PORT, password: str | None = None) -> None:
    with admin(port, password) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


@pytest.fixture
def make_db() -> Iterator[Callable[..., str]]:
    """Create empty, uniquely named databases on the suite's server; drop them after the test."""
    made: list[str] = []

    def create(prefix: str = "pg", populated: bool = False, **populate_args: object) -> str:
        name = unique(prefix)
        with admin() as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        made.append(name)
        if populated:
            populate(name, **populate_args)  # type: ignore[arg-type]
        return name

    yield create
    for name in made:
        drop_database(name)
        with admin() as connection:  # scratch databases a failed drill test left beside it
            leftovers = connection.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
                                           (f"{name}_drill_",)).fetchall()
        for (leftover,) in leftovers:
            drop_database(leftover)


@pytest.fixture
def make_role() -> Iterator[Callable[..., str]]:
    """Create uniquely named roles on the suite's server (optionally owning a database); drop them after the test,
    with whatever they own or were granted. Works before or after make_db drops its databases."""
    made: list[str] = []

    def create(prefix: str = "role", options: str = "LOGIN", owns: str | None = None) -> str:
        name = unique(prefix)
        with admin() as connection:
            connection.execute(sql.SQL("CREATE ROLE {} " + options).format(sql.Identifier(name)))
            made.append(name)
            if owns:
                connection.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(owns), sql.Identifier(name)))
        return name

    yield create
    failures: list[Exception] = []
    for name in reversed(made):
        try:
            drop_role(name)
        except psycopg.Error as error:  # drop the other roles all the same
            failures.append(error)
    if failures:
        raise failures[0]


def drop_role(role: str) -> None:
    """Drop `role`: the databases it owns go back to postgres (a drill's scratch database it left is dropped), what
    it owns or was granted inside any database is dropped or revoked (DROP OWNED BY), then the role itself."""
    with admin() as connection:
        owned = [row[0] for row in connection.execute(
            "SELECT datname FROM pg_database WHERE datdba = (SELECT oid FROM pg_roles WHERE rolname = %s)", (role,))]
        for dbname in owned:
            if "_drill_" in dbname:  # a scratch database a failed drill left
                connection.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname)))
            else:
                connection.execute(sql.SQL("ALTER DATABASE {} OWNER TO postgres").format(sql.Identifier(dbname)))
        depending = [row[0] for row in connection.execute(
            "SELECT DISTINCT d.datname FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid "
            "WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = %s)",
            (role,))]
    for dbname in sorted(set(depending) | {"postgres"}):
        with admin(dbname=dbname) as connection:
            connection.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with admin() as connection:
        connection.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def app_pg(make_db: Callable[..., str]) -> str:
    """A populated app database on the suite's server; its name."""
    return make_db("app", populated=True)


# --- a private server that checks passwords -------------------------------------------------------------------

@dataclass
class PasswordServer:
    port: int
    superuser_password: str

    def url(self, dbname: str, user: str = "postgres", password: str | None = None) -> str:
        return url_for(dbname, user, password or self.superuser_password, port=self.port)


def _server_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return Path(found[0]).parent
    if shutil.which("pg_config"):
        return Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
    pytest.fail("the PostgreSQL server binaries (initdb, pg_ctl) are needed for the password tests: apt-get install postgresql")


@pytest.fixture(scope="session")
def password_server() -> Iterator[PasswordServer]:
    """A throwaway PostgreSQL cluster on a free port that requires scram-sha-256 passwords over TCP."""
    bindir = _server_bin()
    root = Path(tempfile.mkdtemp(prefix="bw-pgauth-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    secret = "Sup3r-" + uuid.uuid4().hex
    pwfile = root / "pwfile"
    pwfile.write_text(secret + "\n")
    os.chmod(pwfile, 0o600)
    if as_user:
        shutil.chown(pwfile, "postgres", "postgres")
    data, port = root / "data", free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
                    f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync", "--no-instructions"], check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=16MB -c max_connections=30"
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
                   check=True, capture_output=True)
    try:
        yield PasswordServer(port, secret)
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


# --- a tiny pipeline: what jobs/pipeline.py does with a Snapshot, minus zstd ----------------------------------

def backup_to_file(source: postgres.PostgresSource, out: Path, workdir: Path, cancel: threading.Event | None = None,
                   on_chunk: Callable[[bytes], None] | None = None) -> str:
    """Read the snapshot's stream chunk by chunk, feed the check, write a temporary file; publish it only after
    the check passed. Return what the check proved."""
    cancel = cancel or threading.Event()
    temp = out.with_name(".tmp-" + out.name)
    try:
        with source.snapshot(workdir, cancel) as snap:
            try:
                with temp.open("wb") as handle:
                    while chunk := snap.stream.read(CHUNK):
                        snap.check.feed(chunk)
                        handle.write(chunk)
                        if on_chunk:
                            on_chunk(chunk)
                passed = snap.check.finish()
            finally:
                snap.check.close()
        temp.rename(out)
        return passed
    finally:
        temp.unlink(missing_ok=True)


def check_file(raw: Path, workdir: Path, cancel: threading.Event | None = None, chunk: int = CHUNK) -> str:
    """Feed an existing raw archive to the engine's checker, as verify and restore do."""
    with postgres.checker(workdir, cancel or threading.Event()) as check:
        with raw.open("rb") as handle:
            while data := handle.read(chunk):
                check.feed(data)
        return check.finish()
