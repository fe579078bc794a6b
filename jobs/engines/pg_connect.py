"""PostgreSQL connection settings from a URL, with the password kept apart, and errors told in one sentence.

libpq parses the URL (through psycopg), so every form it accepts works the same for psycopg, pg_dump and
pg_restore: percent-encoding, host lists, Unix sockets (`?host=/var/run/postgresql`), and query parameters
such as sslmode, sslrootcert, options or application_name. The password is taken out: children get it in
their environment (PGPASSWORD), never on a command line; the rest becomes a `key=value` conninfo string that
is safe to show.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
import os
import re

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from jobs import execute
from jobs.engines import pg_tools
from jobs.errors import SourceError, Unreachable
from jobs.redact import ambiguous_userinfo, mask_url, scrub, url_secrets

log = structlog.get_logger("jobs.engines.pg_connect")

CONNECT_TIMEOUT_S = 10  # libpq waits forever by default; an unreachable server should fail a backup, not hang it
APPLICATION_NAME = "backup-worker"  # what pg_stat_activity shows for our own connections
# PostgreSQL 14 and newer look this often (ms) whether the client of a running statement is still there, so the
# session of a pg_dump or pg_restore that died (with the worker) ends at once instead of when it next talks to
# it; a session waiting for a lock would otherwise keep the locks it holds until that lock comes.
CLIENT_CHECK_MS = 1000
CLIENT_CHECK_SINCE = 14

_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*\Z")
# PostgreSQL's key words that may not be an unquoted database or role name (reserved, or type and function names).
_KEY_WORDS = frozenset("""
all analyse analyze and any array as asc asymmetric authorization binary both case cast check collate collation
column concurrently constraint create cross current_catalog current_date current_role current_schema current_time
current_timestamp current_user default deferrable desc distinct do else end except false fetch for foreign freeze
from full grant group having ilike in initially inner intersect into is isnull join lateral leading left like limit
localtime localtimestamp natural not notnull null offset on only or order outer overlaps placing primary references
returning right select session_user similar some symmetric table tablesample then to trailing true union unique user
using variadic verbose when where window with""".split())


@dataclass(frozen=True)
class Connection:
    """Where a database is and how to reach it; the password is never part of what is printed or passed on."""

    params: Mapping[str, str]  # libpq keywords, without the password
    masked: str  # the URL with its password masked, for people
    password: str | None = field(default=None, repr=False)

    @property
    def dbname(self) -> str:
        return self.params.get("dbname") or self.params.get("user") or "postgres"

    @property
    def host(self) -> str:
        host = self.params.get("host") or self.params.get("hostaddr") or "localhost"
        port = self.params.get("port")
        return f"{host}:{port}" if port else host

    @property
    def hostname(self) -> str:
        """The (first) host, or the socket directory, without the port."""
        host = self.params.get("host") or self.params.get("hostaddr") or "localhost"
        return host.split(",")[0]

    @property
    def port(self) -> str:
        """The (first) port, 5432 by default."""
        return (self.params.get("port") or "5432").split(",")[0]

    @property
    def user(self) -> str:
        return self.params.get("user", "")

    def conninfo(self) -> str:
        """Return the `key=value` connection string without the password: safe on a command line."""
        return make_conninfo(**self.params)

    def env(self) -> dict[str, str]:
        """Return a child's environment carrying the password (PGPASSWORD), if the URL has one."""
        return execute.child_env({"PGPASSWORD": self.password} if self.password else None)

    def secrets(self) -> list[str]:
        return [self.password] if self.password else []


def parse_url(url: str) -> Connection:
    """Given a postgresql:// (or postgres://) URL, return its Connection. Raise ValueError if libpq rejects it."""
    masked = mask_url(url)
    if problem := ambiguous_userinfo(url):  # BACKUP_SOURCE and --target-url alike
        raise ValueError(problem)
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as error:
        raise ValueError(f"{masked} is not a valid PostgreSQL URL: {scrub(str(error), url_secrets(url))}") from None
    if "sslpassword" in params:
        raise ValueError(f"{masked} has an sslpassword, which pg_dump could only get on its command line, where every "
                         "process can read it; use a client key without a passphrase (mode 0600) instead")
    password = params.pop("password", None)
    params = {key: str(value) for key, value in params.items()}
    if not all(port.strip().isdigit() for port in params.get("port", "5432").split(",")):
        raise ValueError(f"{masked} has the port {params['port']!r}; a port is a number like 5432")
    params.setdefault("connect_timeout", str(CONNECT_TIMEOUT_S))
    return Connection(params, masked, str(password) if password else None)


def quote_ident(name: str) -> str:
    """Return `name` as an SQL identifier an operator may paste into a command: as it is when a plain lower-case
    identifier that is not a key word, else double-quoted with embedded quotes doubled (PostgreSQL folds an
    unquoted name to lower case, so `Deploy` would name the role `deploy`, and rejects `My-App` or `user`)."""
    return name if _PLAIN.match(name) and name not in _KEY_WORDS else '"' + name.replace('"', '""') + '"'


def server_major(server: str) -> int:
    """Given a server version like "15.20" or "9.6.24", return its major number (15, 9); 0 if unreadable."""
    match = re.match(r"\d+", server.strip())
    return int(match[0]) if match else 0


def for_child(conn: Connection, server: str, settings: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """Given a connection, the server's version ("15.20") and session settings (like lock_timeout), return the
    `--dbname` conninfo and the environment of a pg_dump or pg_restore child that connects to it.

    The settings travel in PGOPTIONS, never on a command line: the URL's own `options` (else the worker's
    PGOPTIONS) first, then `settings`, then, on PostgreSQL 14 and newer, client_connection_check_interval, so
    that the server ends the child's session within a second of its death. The password is in PGPASSWORD."""
    params = dict(conn.params)
    own = params.pop("options", None) or os.environ.get("PGOPTIONS", "")
    wanted = dict(settings or {})
    if server_major(server) >= CLIENT_CHECK_SINCE:
        wanted["client_connection_check_interval"] = str(CLIENT_CHECK_MS)
    options = " ".join([own.strip(), *(f"-c {name}={value}" for name, value in wanted.items())]).strip()
    env = conn.env()
    if options:
        env["PGOPTIONS"] = options
    return make_conninfo(**params), env


def connect(conn: Connection) -> psycopg.Connection:
    """Open an autocommit connection. Raise SourceError saying why it failed and what to do: Unreachable when
    the server does not answer (yet), see `unanswered`."""
    try:
        return psycopg.connect(conn.conninfo(), password=conn.password, autocommit=True,
                               fallback_application_name=APPLICATION_NAME)
    except psycopg.Error as error:
        problem = connection_problem(str(error), conn)
        raise (Unreachable if unanswered(str(error)) else SourceError)(problem) from None


# What libpq says when nobody answers yet, as opposed to a server that answered and refused us (password, role,
# database): worth asking again while a database service starts beside the worker.
_UNANSWERED = re.compile(r"Connection refused|timeout expired|timed out|could not translate host name|failed to resolve "
                         r"host|Name or service not known|Temporary failure in name resolution|No route to host|"
                         r"Network is unreachable|the database system is (?:starting up|shutting down|in recovery mode)|"
                         r"server closed the connection unexpectedly", re.IGNORECASE)


def unanswered(message: str) -> bool:
    """Given a libpq/psycopg connection error, return whether the server did not answer (yet), rather than refuse."""
    return _UNANSWERED.search(message) is not None


def snapshot_function(server_version: int) -> str:
    """Given `server_version_num`, return the SQL function that shows the current snapshot as
    `xmin:xmax:xip,…` with 64-bit ids: pg_current_snapshot() from PostgreSQL 13, txid_current_snapshot() before."""
    return "pg_current_snapshot()" if server_version >= 130000 else "txid_current_snapshot()"


def server_version(conn: Connection) -> tuple[str, pg_tools.Major]:
    """Return the server's version ("15.20") and major ((15,)). Raise SourceError if it cannot be reached."""
    with connect(conn) as connection:
        num = connection.info.server_version
    return pg_tools.server_version(num)


def cluster_id(conn: Connection) -> str | None:
    """Return the server's system identifier (the same whatever address reaches it), or None when it cannot be
    read now (unreachable, or pg_control_system() not granted)."""
    try:
        with connect(conn) as connection:
            row = connection.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    except (SourceError, psycopg.Error) as error:
        log.debug("postgres.cluster_unknown", reason=str(error)[:200])
        return None
    return str(row[0]) if row and row[0] else None


def database_size(conn: Connection) -> int:
    """Return the size on disk of the database, in bytes. Raise SourceError if it cannot be reached."""
    with connect(conn) as connection:
        row = connection.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


def end_sessions(conn: Connection, application_name: str) -> None:
    """Terminate the server sessions of `conn`'s user named `application_name` (a killed client's session may
    wait on a lock, holding others, until it next talks to the client). Failures only log: this is cleanup."""
    try:
        with connect(conn) as connection:
            connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE application_name = %s AND pid <> pg_backend_pid()", (application_name,))
    except (SourceError, psycopg.Error) as error:
        log.warning("postgres.end_sessions_failed", application_name=application_name, error=str(error)[:200])


_PROBLEMS: list[tuple[str, str]] = [
    (r"password authentication failed", "PostgreSQL at {host} refused the password of user {user}; check the password in the URL that names this database (BACKUP_SOURCE, DATABASE_URL, or --target-url for a restore)"),
    (r"no password supplied", "PostgreSQL at {host} asks user {user} for a password and the URL has none; add it to the URL (postgresql://USER:PASSWORD@HOST/DB)"),
    (r'database ".*" does not exist', "the database {db} does not exist on {host}; check the database name at the end of the URL, or create it (createdb {db})"),
    (r'role ".*" does not exist', "PostgreSQL at {host} has no user {user}; check the user name in the URL"),
    (r"no pg_hba\.conf entry", "PostgreSQL at {host} does not accept user {user} from this machine (pg_hba.conf: {reason}); allow it there, or check sslmode in the URL"),
    (r"permission denied for database|must have CONNECT", "user {user} may not connect to {db} on {host}; GRANT CONNECT ON DATABASE {db} TO {user}"),
    (r"Connection refused", "cannot connect to PostgreSQL at {host}: connection refused; check the host and port in the URL and that the server is running"),
    (r"timeout expired|timed out", "PostgreSQL at {host} did not answer within the connect timeout ({timeout} s); check the host and port in the URL and the network between us"),
    (r"failed to resolve host|could not translate host name|Name or service not known", "the host name in the URL ({host}) does not resolve; check the URL (on Railway, the private host name only resolves inside the project)"),
    (r"SSL", "cannot connect to PostgreSQL at {host}: {reason}; check sslmode (and sslrootcert) in the URL"),
    (r"too many clients|remaining connection slots", "PostgreSQL at {host} has no free connection slots; try again later, or raise max_connections"),
    (r"starting up|shutting down|in recovery mode", "PostgreSQL at {host} is starting up or shutting down; try again in a minute"),
]


def connection_problem(message: str, conn: Connection) -> str:
    """Given a libpq/psycopg connection error, return one sentence naming the cause and the fix, without secrets."""
    reason = _reason(message, conn)
    fields = {"host": conn.host, "user": conn.user or "(default)", "db": conn.dbname, "reason": reason,
              "timeout": conn.params.get("connect_timeout", CONNECT_TIMEOUT_S)}
    for pattern, sentence in _PROBLEMS:
        if re.search(pattern, message, re.IGNORECASE):
            return sentence.format(**fields)
    return f"cannot connect to PostgreSQL at {conn.host}: {reason}; check BACKUP_SOURCE (or DATABASE_URL)"


def _reason(message: str, conn: Connection) -> str:
    """Return the last, most specific line of a libpq error, without its prefixes and secrets."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = lines[0] if lines else message
    text = re.sub(r"^connection failed:\s*", "", text)
    text = re.sub(r'^connection to server at "[^"]*"(?:\s*\([^)]*\))?, port \d+ failed:\s*', "", text)
    text = re.sub(r"^(FATAL|ERROR):\s*", "", text)
    return scrub(text.rstrip("."), conn.secrets())
