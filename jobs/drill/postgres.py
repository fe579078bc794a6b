"""A PostgreSQL drill: the proven archive restored by pg_restore, as `restore --target-url` restores one, into a
scratch database, whose rows are then counted exactly.

The scratch database is `<db>_drill_<stamp>` on the source's server (the stamp by the server's clock), created
empty (from template0), marked as made by a drill of this set by its comment (which names the set's full database
name), kept in use by a session of the drill from its creation on (so that no other drill can drop it), and
dropped afterwards (`WITH (FORCE)`: a stopped pg_restore's session goes too), after a failure or a stop as well.
One a killed drill left (SIGKILL, a lost machine) is dropped by a later drill of the set when it is its own (named
and marked for this set, owned by the drill's role), over an hour old by the server's clock and unused (a plain
DROP DATABASE, which PostgreSQL refuses while anyone is connected); any other database named like one is only
warned of. With DRILL_TARGET_URL the drill restores into that database instead (the operator's, perhaps on another
server): it must not be a source database and must hold nothing at all, and the drill empties it afterwards
(`pg_target`). The source database itself is only used to reach its server (CREATE and DROP DATABASE); nothing in
it is read or written.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
import threading
from typing import Any

import psycopg
from psycopg import sql
import structlog

from jobs.backups import Backup
from jobs.drill.pg_target import TARGET_VARIABLE, OperatorTarget, operator_database, why
from jobs.engines import Source, pg_connect
from jobs.engines.pg_archive import table_key
from jobs.engines.pg_connect import Connection, quote_ident
from jobs.engines.pg_restore import Elsewhere, restore_database
from jobs.errors import Cancelled, SourceError

KIND = "pgdump"
NAME_LIMIT = 63  # PostgreSQL's identifier length (NAMEDATALEN - 1)
MARK = "_drill_"
STAMP = "%Y%m%d%H%M%S"
STAMP_DIGITS = 14  # the length of a STAMP
# The comment that marks a scratch database as made by a drill of the set whose database it names (comment_for):
# what a later drill of that set may drop when it was left behind, if the drill's role owns it.
COMMENT = "backup-worker restore drill scratch database of {database}; dropped when its drill ends"
NAME_TRIES = 10  # the scratch database's name: that of this second, else of one of the next nine
LEFTOVER_AGE = timedelta(hours=1)  # a scratch database younger than this may belong to a drill still starting
HOLDER = "backup-worker drill scratch"  # the application_name of the session that keeps the scratch database in use
ELSEWHERE = Elsewhere(f"set {TARGET_VARIABLE} to", "an empty database")  # what a failed restore's advice points at

log = structlog.get_logger("jobs.drill.postgres")


# The rows of every user table of the scratch database, keyed as the manifest's counts are (pg_archive.table_key).
TABLES = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.deptype = 'e')
ORDER BY 1, 2
"""


def scratch_name(database: str, now: datetime) -> str:
    """Return the scratch database's name: `<db>_drill_<stamp>`, the database part shortened to fit 63 bytes."""
    suffix = f"{MARK}{now.strftime(STAMP)}"
    head = database.encode()[:NAME_LIMIT - len(suffix)].decode(errors="ignore")
    return f"{head}{suffix}"


def comment_for(database: str) -> str:
    """Return the comment that marks a scratch database as made by a drill of the set whose database is
    `database`: the full name, double-quoted with quotes doubled, so no two sets' marks are alike."""
    return COMMENT.format(database='"' + database.replace('"', '""') + '"')


def _server_of(source: Source) -> Connection:
    conn = source.sql_database()
    if not isinstance(conn, Connection):
        raise SourceError(f"a PostgreSQL backup is drilled on a PostgreSQL server; the set {source.name()} is a "
                          f"{source.kind} source", stage="scratch")
    return conn


class _NotCreated(Exception):
    """CREATE DATABASE (or the COMMENT marking it) failed: `name` is the name last tried, `error` why."""

    def __init__(self, name: str, error: psycopg.Error) -> None:
        super().__init__(name, error)
        self.name, self.error = name, error


@contextmanager
def scratch_database(server: Connection, cancel: threading.Event) -> Iterator[Connection]:
    """Create an empty scratch database on `server`'s server and yield how to reach it; drop it on exit, whatever
    happened. A session stays connected to it meanwhile, so no other drill can drop it (a plain DROP DATABASE is
    refused while anyone is connected). Raise SourceError at stage `scratch`: one sentence naming the CREATEDB
    right or DRILL_TARGET_URL when the role may not create databases."""
    with pg_connect.connect(server) as session:
        now = _server_now(session)  # the name's stamp, and a leftover's age, go by the server's clock, not ours
        _clear_leftovers(session, server, now)
        try:
            name = _create(session, server.dbname, now)
        except _NotCreated as failed:
            if isinstance(failed.error, psycopg.errors.InsufficientPrivilege):
                user = quote_ident(server.user or session.info.user)
                raise SourceError(f"the PostgreSQL role {user} may not create databases, so the drill cannot make "
                                  f"its scratch database on {server.host}: grant it with `ALTER ROLE {user} CREATEDB`, "
                                  f"or set {TARGET_VARIABLE} to an empty database the drill may fill and empty",
                                  stage="scratch") from None
            raise SourceError(f"cannot create the drill's scratch database {failed.name} on {server.host}: "
                              f"{why(failed.error, server)}", stage="scratch") from None
    log.info("drill.scratch_created", database=name, host=server.host)
    scratch = replace(server, params={**server.params, "dbname": name})
    try:
        holder = _hold(scratch)
        try:
            yield scratch
        finally:
            holder.close()  # just before the drop: it must not find its own session there
    finally:
        _drop(server, name)


def _server_now(session: psycopg.Connection) -> datetime:
    row = session.execute("SELECT now()").fetchone()
    return row[0].astimezone(timezone.utc)


def _hold(scratch: Connection) -> psycopg.Connection:
    """Connect a session to the scratch database, kept until just before the drill drops it. Raise SourceError."""
    try:
        return pg_connect.connect(replace(scratch, params={**scratch.params, "application_name": HOLDER}))
    except SourceError as error:
        raise SourceError(f"cannot connect to the drill's scratch database {scratch.dbname}: {error}",
                          stage="scratch") from None


def _create(session: psycopg.Connection, database: str, now: datetime) -> str:
    """Create the scratch database, marked as made by a drill of the set whose database is `database`, and return
    its name: that of `now`, or of one of the next seconds when a database of that name exists (a drill started in
    the same second, one a killed drill left). Raise _NotCreated naming the name last tried."""
    for ahead in range(NAME_TRIES):
        name = scratch_name(database, now + timedelta(seconds=ahead))
        try:
            session.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
            break
        except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation) as error:
            # UniqueViolation: a CREATE of the same name at the same moment won the insert into pg_database
            if ahead == NAME_TRIES - 1:
                raise _NotCreated(name, error) from None
        except psycopg.Error as error:
            raise _NotCreated(name, error) from None
    try:
        session.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name),
                                                                        sql.Literal(comment_for(database))))
    except psycopg.Error as error:
        try:  # unmarked, a later drill would never drop it
            session.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        except psycopg.Error as dropping:
            log.warning("drill.scratch_left", database=name, reason=why(dropping)[:200],
                        detail=f"drop it by hand: DROP DATABASE {quote_ident(name)}")
        raise _NotCreated(name, error) from None
    return name


# The databases named as this set's scratch databases are (a prefix, then a 14-digit stamp), with their comment,
# whether the current role owns them, and whether they are older than LEFTOVER_AGE by the server's clock.
LEFTOVERS = """
SELECT datname, shobj_description(oid, 'pg_database'), datdba = (SELECT oid FROM pg_roles WHERE rolname = current_user)
FROM pg_database
WHERE starts_with(datname, %(prefix)s) AND substr(datname, length(%(prefix)s) + 1) ~ %(stamp)s
ORDER BY datname
"""


def _clear_leftovers(session: psycopg.Connection, server: Connection, now: datetime) -> None:
    """Drop the scratch databases of this set that a killed drill left, when they are the drill's own (the comment
    names this set's database and the current role owns them), over LEFTOVER_AGE old by their stamp and the
    server's clock `now`, and unused; warn of the other databases named like one."""
    prefix = scratch_name(server.dbname, now)[:-STAMP_DIGITS]
    try:
        rows = session.execute(LEFTOVERS, {"prefix": prefix, "stamp": f"^[0-9]{{{STAMP_DIGITS}}}$"}).fetchall()
    except psycopg.Error as error:
        log.warning("drill.scratch_leftovers_unknown", host=server.host, reason=why(error, server),
                    detail="the scratch databases a killed drill left (if any) were not looked for")
        return
    for leftover, comment, owned in rows:
        kept_because = _not_droppable(leftover, comment, owned, server.dbname, now)
        if kept_because is None:
            try:
                session.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(leftover)))  # refused if in use
                log.info("drill.scratch_leftover_dropped", database=leftover, host=server.host)
                continue
            except psycopg.Error as error:
                kept_because = f"it could not be dropped: {why(error, server)}"
        log.warning("drill.scratch_leftover", database=leftover, host=server.host, kept_because=kept_because,
                    detail="a drill that was killed may have left it; if so, drop it by hand: "
                           f"DROP DATABASE {quote_ident(leftover)}")


def _not_droppable(leftover: str, comment: str | None, owned: bool, database: str, now: datetime) -> str | None:
    """Return why the database `leftover` (named like a scratch database of the set whose database is `database`)
    is not dropped, or None. `owned`: the current role owns it; `now`: the server's clock."""
    if comment != comment_for(database):
        return ("it does not carry the drill's mark for this set (a database the drill did not create, another "
                "set's, or an older worker's)")
    if not owned:
        return "another role owns it (a drill's scratch database is owned by the drill's role)"
    try:
        made = datetime.strptime(leftover[-STAMP_DIGITS:], STAMP).replace(tzinfo=timezone.utc)
    except ValueError:
        return "the stamp in its name is not a time"
    if now - made < LEFTOVER_AGE:
        return (f"it is under {LEFTOVER_AGE.seconds // 3600} h old or dated ahead of the server's clock (another "
                "drill of this set may be using it)")
    return None


def _drop(server: Connection, name: str) -> None:
    """Drop the scratch database `name` (its sessions ended first). Failures only warn, naming what to drop."""
    try:
        with pg_connect.connect(server) as session:
            force = " WITH (FORCE)" if session.info.server_version >= 130000 else ""
            session.execute(sql.SQL("DROP DATABASE IF EXISTS {}" + force).format(sql.Identifier(name)))
        log.info("drill.scratch_dropped", database=name, host=server.host)
    except (SourceError, psycopg.Error) as error:
        log.warning("drill.scratch_left", database=name, host=server.host,
                    reason=why(error, server)[:200], detail=f"drop it by hand: DROP DATABASE {quote_ident(name)}")


def count_rows(conn: Connection, cancel: threading.Event) -> dict[str, Any]:
    """Return the exact rows of each user table of the database `conn`, as the manifest records counts."""
    tables: dict[str, int] = {}
    with pg_connect.connect(conn) as session:
        for schema, table in session.execute(TABLES).fetchall():
            if cancel.is_set():
                raise Cancelled("the worker is stopping; the drill's row count was interrupted")
            query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
            tables[table_key(schema, table)] = session.execute(query).fetchone()[0]
    return {"unit": "rows", "total": sum(tables.values()), "tables": tables}


def restore_and_count(raw: Path, backup: Backup, source: Source, operator: OperatorTarget | None,
                      cancel: threading.Event) -> tuple[list[str], dict[str, Any]]:
    """Restore the proven archive `raw` into a scratch database (see the module docstring) and count its rows;
    the scratch database is gone (or emptied) on return, whatever happened. Raise SourceError (the scratch
    target, the restore) or Cancelled."""
    target = operator_database(operator, cancel) if operator else scratch_database(_server_of(source), cancel)
    with target as conn:
        try:
            restore_database(raw, conn, cancel, None, ELSEWHERE)
            counts = count_rows(conn, cancel)
        except psycopg.Error as error:
            raise SourceError(f"cannot count the rows restored into {conn.dbname}: {why(error, conn)}", stage="restore") from None
    return [f"pg_restore into {'the drill target' if operator else 'a scratch database'}", "rows counted"], counts
