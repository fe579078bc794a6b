"""Restoring a pg_dump archive into a PostgreSQL database: pg_restore in one transaction, `--clean --if-exists`,
with the pg_restore that fits both the server and the archive's pg_dump, a warning for a backup from a newer
major, and a bound on lock waits kept from outside (`pg_watch`), so that a failed or stopped restore changes
nothing. Reached through `PostgresSource.restore`, for the configured database and for `--target-url` alike."""

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
import re
import threading
import uuid

import structlog

from jobs import execute
from jobs.engines import pg_connect, pg_tools, pg_watch
from jobs.engines.pg_connect import Connection
from jobs.engines.pg_tools import bin_dir
from jobs.errors import Cancelled, IntegrityError, SourceError

log = structlog.get_logger("jobs.engines.postgres")

# A restore gives up (and rolls back) when a lock it needs stays held this long: an app's open transaction must
# make it fail quickly, not keep it waiting while it holds locks on the tables it already dropped, which block the
# app in turn. pg_restore resets lock_timeout (and statement_timeout) to 0 at the start of every restore, so the
# bound is kept from outside (`pg_watch`). No statement timeout: pg_restore's statements include the data COPY
# and index builds, whose length grows with the data.
RESTORE_LOCK_WAIT_S = 20
IDLE_IN_TRANSACTION = "SELECT pid, state, query FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"


@dataclass(frozen=True)
class Elsewhere:
    """Where else the caller may restore, for the advice of `extension_failure`: how to give it a database's URL
    (words to put before the URL), and what that database must be."""

    to: str
    database: str


TARGET_URL = Elsewhere("use --target-url with", "a database")  # `restore`; a drill has DRILL_TARGET_URL

# The server's words for an extension the restoring role may not create or drop, or that the server lacks, each
# matched in one error line: the name ends at the line's last quote (it may hold quotes), or, unquoted, the line.
_DENIED = re.compile(r'permission denied to create extension "(.+)"')
_NEEDS_CREATE_RIGHT = "Must have CREATE privilege on current database"  # the HINT for a trusted extension
_NOT_OWNER = re.compile(r"must be owner of extension (.+)")
_MISSING = (re.compile(r'extension "(.+)" is not available'),  # PostgreSQL 15 and newer
            re.compile(r'could not open extension control file ".*/(.+)\.control": No such file'))  # older

# What is kept of pg_restore's stderr: its own lines and the server's error lines, never a statement. After an
# error pg_restore prints `Command was: ` and the failing statement, whole and over many lines: the dump's content,
# which may hold secrets (a user mapping's password, a subscription's CONNECTION) and would push the error out of
# the kept lines. The server's `LINE n:` excerpt of it (and its caret), CONTEXT and QUERY lines are dropped too, and
# the DETAIL lines that quote a row or a key's value.
_ERROR_LINE = re.compile(r"(?:pg_restore: |(?:ERROR|FATAL|PANIC|WARNING|DETAIL|HINT): )")
# DETAIL lines that quote the dump's data: a row that breaks a constraint, a key's value (never kept).
_DATA_DETAIL = re.compile(r"DETAIL:\s+(?:Failing row contains|Key \()")
_STATEMENT = re.compile(r"(?:pg_restore: (?:\w+: )?)?(?:Command|Query) was: (.*)")
_NAME = r'(?:[a-z_][a-z0-9_$]*|"(?:[^"]|"")*")'
_HEAD = re.compile(rf"(?:[A-Z]+ )*[A-Z]+(?: {_NAME}(?:\.{_NAME})*)?")  # `CREATE TABLE public.events`
_HEAD_LIMIT = 200


def statement_head(statement: str) -> str:
    """Return the start of an SQL statement as pg_dump writes it: its key words (upper case) and the name after
    them, such as `CREATE USER MAPPING FOR reporting` or `ALTER TABLE ONLY public.events`, never a value or an
    option; "" when it does not start with a key word."""
    match = _HEAD.match(statement.strip())
    return match[0][:_HEAD_LIMIT] if match else ""


class ErrorLines:
    """An `execute` stderr filter for one pg_restore (it keeps state across lines): keeps pg_restore's own lines
    and the server's ERROR, DETAIL, HINT and WARNING lines; of a failing statement, only `Command was: ` and its
    head (`statement_head`), with ` …` when more was cut; drops every other line."""

    def __init__(self) -> None:
        self._statement = False  # inside a statement pg_restore printed: its lines go until pg_restore's next

    def __call__(self, line: str) -> str | None:
        if line.startswith("pg_restore: "):
            self._statement = False
        if statement := _STATEMENT.match(line):
            self._statement = True
            head = statement_head(statement[1])
            cut = statement[1].strip()[len(head):].strip() not in ("", ";")
            return f"Command was: {head}" + (" …" if cut else "") if head else None
        return line if not self._statement and _ERROR_LINE.match(line) and not _DATA_DETAIL.match(line) else None


@dataclass(frozen=True)
class ArchiveHeader:
    server: str | None  # "Dumped from database version"
    pg_dump: str | None  # "Dumped by pg_dump version"


def archive_header(pg_restore: Path, raw: Path, cancel: threading.Event) -> ArchiveHeader:
    """Return the versions recorded in a custom archive's header (`pg_restore --list`). Raise IntegrityError."""
    try:
        completed = execute.run([str(pg_restore), "--list", str(raw)], cancel=cancel, timeout=300)
    except execute.Timeout:
        raise Cancelled("the worker is stopping; reading the archive header was interrupted") from None
    if completed.code != 0:
        raise IntegrityError(f"pg_restore cannot read the archive {raw.name}: {completed.failure}")

    def field_of(label: str) -> str | None:
        match = re.search(rf"^;\s*{label}:\s*(\S+)", completed.stdout, re.MULTILINE)
        return match[1] if match else None

    return ArchiveHeader(field_of("Dumped from database version"), field_of("Dumped by pg_dump version"))


def version_warning(backup_server: str | None, target_server: str) -> str | None:
    """Return a warning when a backup comes from a newer PostgreSQL major than the target runs, else None."""
    backup = pg_tools.parse_version(f"(PostgreSQL) {backup_server}") if backup_server else None
    target = pg_tools.parse_version(f"(PostgreSQL) {target_server}")
    if backup is None or target is None or backup[1] <= target[1]:
        return None
    return (f"the backup comes from PostgreSQL {backup[0]} and the target runs {target[0]}, an older major: objects "
            f"or settings new in {pg_tools.major_text(backup[1])} may fail to restore (the restore is one "
            "transaction, so a failure changes nothing)")


def restore_database(raw: Path, conn: Connection, cancel: threading.Event,
                     notify: Callable[[str], None] | None, elsewhere: Elsewhere = TARGET_URL) -> list[str]:
    """Restore the proven archive `raw` into the database `conn`, replacing the objects it holds, in one
    transaction; return the notes for the user (a version warning), which also go to `notify` before anything
    changes. Raise SourceError (unreachable, refused, the restore failed: `restore_failure`, whose advice names
    `elsewhere`) or Cancelled; when it raises, the database is unchanged (the transaction was rolled back)."""
    target_text, target_major = pg_connect.server_version(conn)
    available = pg_tools.installed(bin_dir())
    header = archive_header(pg_tools.newest(bin_dir()).pg_restore, raw, cancel)
    dumped_by = pg_tools.parse_version(f"(PostgreSQL) {header.pg_dump}") if header.pg_dump else None
    needed = max(target_major, dumped_by[1]) if dumped_by else target_major
    tools = pg_tools.choose(needed, available) or pg_tools.newest(bin_dir())
    notes = [note for note in [version_warning(header.server, target_text)] if note]
    for note in notes:
        log.warning("restore.note", note=note)
        if notify is not None:
            notify(note)
    session = f"{pg_connect.APPLICATION_NAME}-restore-{uuid.uuid4().hex[:12]}"  # to find its server session
    restoring = replace(conn, params={**conn.params, "application_name": session})
    conninfo, env = pg_connect.for_child(restoring, target_text)
    args = [str(tools.pg_restore), "--clean", "--if-exists", "--no-owner", "--no-acl", "--exit-on-error",
            "--single-transaction", "--no-password", f"--dbname={conninfo}", str(raw)]
    log.info("pg_restore.start", database=conn.dbname, host=conn.host, pg_restore=tools.version, server=target_text,
             lock_wait_limit_s=RESTORE_LOCK_WAIT_S)
    try:
        with pg_watch.watching(conn, session, RESTORE_LOCK_WAIT_S) as watch:
            completed = execute.run(args, env=env, secrets=conn.secrets(), timeout=None, cancel=cancel,
                                    stderr_filter=ErrorLines())
    except execute.Timeout:
        pg_connect.end_sessions(conn, session)  # else it may hold its locks until its current statement ends
        raise Cancelled(f"the worker is stopping; the restore into {conn.dbname} was stopped before it committed, "
                        "so the database is unchanged") from None
    if completed.code != 0:
        raise SourceError(restore_failure(conn.dbname, conn.host, completed.failure, watch.holders, user=conn.user,
                                          elsewhere=elsewhere), stage="restore")
    return notes


def restore_failure(database: str, host: str, failure: str, holders: str | None = None, user: str = "",
                    elsewhere: Elsewhere = TARGET_URL) -> str:
    """Given pg_restore's failure text and, when the lock watch stopped it, the sessions that held the lock it
    waited for, return one sentence: the transaction was rolled back, so the database is unchanged; for a lock
    wait, which statement waited, who held the lock and what to do; for an extension the role `user` may not
    create (or drop), or that the server lacks, which one and what to do (`extension_failure`); else pg_restore's
    own words. Only its error lines are read and told (`ErrorLines`, again here for a text kept without it), and
    of the failing statement only its head. The one place a failed pg_restore becomes a sentence, for `restore`
    and a drill alike."""
    exited, lines = _error_lines(failure)
    errors = " | ".join(line for line in lines if not line.startswith("Command was: "))
    if holders is None and "lock timeout" not in errors:
        told = " | ".join(lines)
        cause = extension_failure(database, host, errors, user, elsewhere) or (f"{exited}: {told}" if told else exited)
        return (f"pg_restore into {database} on {host} failed and its transaction was rolled back, so the database is "
                f"unchanged: {cause}")
    command = next((statement_head(line[len("Command was: "):]) for line in lines if line.startswith("Command was: ")), "")
    doing = f" for {command}" if command else ""
    held = f" ({holders})" if holders else ""
    return (f"pg_restore into {database} on {host} waited over {RESTORE_LOCK_WAIT_S} s for a lock{doing} held by another "
            f"session{held}, so it was stopped and rolled back and the database is unchanged; an app's open transaction "
            f"usually holds it: find the session with {IDLE_IN_TRANSACTION}, stop the app's writers (or end that "
            "session) and try again")


def _error_lines(failure: str) -> tuple[str, list[str]]:
    """Split `execute`'s failure text of a pg_restore (`pg_restore exited with 1: line | line`) into its head and
    the lines `ErrorLines` keeps."""
    head = re.match(r"\S+ (?:exited with -?\d+|was killed by [^:|]+|is still running)(?:: |$)", failure)
    exited, rest = (head[0].removesuffix(": "), failure[head.end():]) if head else ("pg_restore failed", failure)
    keep = ErrorLines()
    return exited, [kept for line in rest.split(" | ") if (kept := keep(line.strip()))]


def extension_failure(database: str, host: str, failure: str, user: str, elsewhere: Elsewhere) -> str | None:
    """Return the cause and the fix when pg_restore failed on an extension (see `restore_failure`), else None.
    `failure` is pg_restore's error lines joined by " | ", without the statement (`ErrorLines`)."""
    role = f"the role {user}" if user else "the restoring role"
    as_superuser = f"to restore as a superuser, {elsewhere.to} a superuser's URL of {elsewhere.database}"
    lines = failure.split(" | ")

    def found(pattern: re.Pattern[str]) -> str | None:
        name = next((match[1].strip() for line in lines if (match := pattern.search(line))), None)
        return pg_connect.quote_ident(name) if name else None  # `"my ext"`, as SQL would name it

    if denied := found(_DENIED):
        if _NEEDS_CREATE_RIGHT in failure:
            grant = (f"grant it with `GRANT CREATE ON DATABASE {pg_connect.quote_ident(database)} TO "
                     f"{pg_connect.quote_ident(user)}`" if user else
                     "grant that right to the role the restore connects as")
            return (f"the backup needs the PostgreSQL extension {denied}, which {role} may not create without the "
                    f"CREATE right on the database {database}: {grant}, or, {as_superuser}")
        return (f"the backup needs the PostgreSQL extension {denied}, which {role} may not create on {host} (it is "
                f"not a trusted extension: only a superuser may create it); {as_superuser}")
    if owner := found(_NOT_OWNER):
        return (f"the restore drops the PostgreSQL extension {owner} and creates it again, but {role} does not own "
                f"it in {database} (another role, usually a superuser, created it); {as_superuser}")
    for pattern in _MISSING:
        if missing := found(pattern):
            return (f"the backup needs the PostgreSQL extension {missing}, which the server at {host} does not have "
                    "installed: install the package that provides it on that server (postgresql-contrib for the "
                    "contrib extensions, such as dblink or hstore) and try again, or "
                    f"{elsewhere.to} the URL of {elsewhere.database} on a server that has it")
    return None
