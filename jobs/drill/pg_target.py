"""DRILL_TARGET_URL: the operator's database a PostgreSQL drill restores into instead of a scratch database.

Before anything is restored, the target is proven to be neither a configured source database (the same host, port
and database name in the URLs, or the same server, by its system identifier, and database name) nor a database
holding anything: no schema besides `public`, and no relation of any kind, routine, type, extension, large
object, publication or other object (`contents`). What the restore made is then exactly every object in the
database, so emptying it afterwards drops every non-system schema (CASCADE) and recreates `public` as it was (its
owner, ACL and comment recorded before the drill), also when the drill role is a superuser; when `public` may not
be dropped (another role owns it), each object in it is dropped instead. The target is proven empty again
afterwards: whatever is left fails the drill, named.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
import threading

import psycopg
from psycopg import sql
import structlog

from jobs.engines import pg_connect
from jobs.engines.pg_connect import Connection
from jobs.errors import SourceError
from jobs.redact import scrub

TARGET_VARIABLE = "DRILL_TARGET_URL"
SHOWN = 3
DEFAULT_EXTENSIONS = ("plpgsql",)  # what CREATE DATABASE gives every database
_NOT_DEFAULT = "extname NOT IN (" + ", ".join(f"'{name}'" for name in DEFAULT_EXTENSIONS) + ")"

log = structlog.get_logger("jobs.drill.pg_target")


@dataclass(frozen=True)
class OperatorTarget:
    """DRILL_TARGET_URL (a secret) and the configured PostgreSQL sources it must never be."""

    url: str = field(repr=False)
    sources: tuple[Connection, ...] = field(default=(), repr=False)


# Schemas that are the system's (and public, judged by what it holds).
_SYSTEM = ("n.nspname IN ('pg_catalog', 'information_schema') OR n.nspname LIKE 'pg\\_toast%' "
           "OR n.nspname LIKE 'pg\\_temp\\_%'")
_NOT_EXTENSION = "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{catalog}'::regclass AND d.objid = x.oid AND d.deptype = 'e')"
_KINDS = {"r": "table", "p": "table", "v": "view", "m": "materialized view", "S": "sequence", "f": "foreign table",
          "c": "type"}  # indexes are not listed (they go with their tables)

# Everything a database holds beyond what CREATE DATABASE gives it: (what, SQL returning one name per row).
CONTENTS: tuple[tuple[str, str], ...] = (
    ("schema", f"SELECT n.nspname FROM pg_namespace n WHERE NOT ({_SYSTEM}) AND n.nspname <> 'public'"),
    ("relation", "SELECT x.relkind::text || ' ' || quote_ident(n.nspname) || '.' || quote_ident(x.relname) "
                 f"FROM pg_class x JOIN pg_namespace n ON n.oid = x.relnamespace WHERE NOT ({_SYSTEM}) AND "
                 "x.relkind NOT IN ('i', 'I', 't') AND " + _NOT_EXTENSION.format(catalog="pg_class")
                 + " ORDER BY x.relkind NOT IN ('r', 'p'), n.nspname, x.relname"),
    ("routine", "SELECT x.oid::regprocedure::text FROM pg_proc x JOIN pg_namespace n ON n.oid = x.pronamespace "
                f"WHERE NOT ({_SYSTEM}) AND " + _NOT_EXTENSION.format(catalog="pg_proc")),
    ("type", "SELECT x.oid::regtype::text FROM pg_type x JOIN pg_namespace n ON n.oid = x.typnamespace "
             f"WHERE NOT ({_SYSTEM}) AND x.typrelid = 0 AND x.typelem = 0 AND "
             + _NOT_EXTENSION.format(catalog="pg_type")),
    ("extension", f"SELECT extname FROM pg_extension WHERE {_NOT_DEFAULT}"),
    ("large object", "SELECT oid::text FROM pg_largeobject_metadata"),
    ("publication", "SELECT pubname FROM pg_publication"),
    ("event trigger", "SELECT evtname FROM pg_event_trigger"),
    ("foreign server", "SELECT srvname FROM pg_foreign_server"),
    ("foreign-data wrapper", "SELECT fdwname FROM pg_foreign_data_wrapper x WHERE "
                             + _NOT_EXTENSION.format(catalog="pg_foreign_data_wrapper")),
    ("collation", "SELECT x.collname FROM pg_collation x JOIN pg_namespace n ON n.oid = x.collnamespace "
                  f"WHERE NOT ({_SYSTEM}) AND " + _NOT_EXTENSION.format(catalog="pg_collation")),
    ("operator", "SELECT x.oprname FROM pg_operator x JOIN pg_namespace n ON n.oid = x.oprnamespace "
                 f"WHERE NOT ({_SYSTEM}) AND " + _NOT_EXTENSION.format(catalog="pg_operator")),
    # Whatever else lives in a schema the clean-up drops (with CASCADE): every object of a schema depends on it,
    # so this catches the kinds not listed above (text search objects, conversions, operator classes, …).
    ("object", "SELECT pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_depend d "
               "JOIN pg_namespace n ON n.oid = d.refobjid WHERE d.refclassid = 'pg_namespace'::regclass "
               f"AND NOT ({_SYSTEM}) AND d.classid NOT IN ('pg_class'::regclass, 'pg_proc'::regclass, "
               "'pg_type'::regclass, 'pg_collation'::regclass, 'pg_operator'::regclass) AND NOT EXISTS (SELECT 1 "
               "FROM pg_depend e WHERE e.classid = d.classid AND e.objid = d.objid AND e.deptype = 'e')"),
)


def _named(what: str, name: str) -> str:
    if what == "object":  # pg_describe_object already says what it is
        return name
    if what == "relation":
        kind, _, qualified = name.partition(" ")
        return f"{_KINDS.get(kind, 'relation')} {qualified}"
    return f"{what} {name}"


def contents(session: psycopg.Connection) -> list[str]:
    """Return what the database of `session` holds beyond what CREATE DATABASE gives it, one phrase per object
    ("schema ops", "view public.v", "routine public.f(integer)", "extension pgcrypto"); [] when it is empty."""
    found: list[str] = []
    for what, query in CONTENTS:
        rows = session.execute(query).fetchall()
        found += [_named(what, str(row[0])) for row in (rows if what == "relation" else sorted(rows))]
    return found


def _phrase(found: list[str]) -> str:
    return ", ".join(found[:SHOWN]) + (f" and {len(found) - SHOWN} more" if len(found) > SHOWN else "")


def why(error: Exception, conn: Connection | None = None) -> str:
    """Return the first line of a database error, scrubbed of the connection's secrets: what a drill's messages
    and log lines quote."""
    text = str(error).strip()
    return scrub(text.splitlines()[0] if text else type(error).__name__, conn.secrets() if conn else [])


def same_database(one: Connection, other: Connection) -> bool:
    """Return whether two connections name the same database by their address: host, port and database name."""
    return (one.hostname.lower(), one.port, one.dbname) == (other.hostname.lower(), other.port, other.dbname)


def _identity(conn: Connection) -> tuple[str, str] | None:
    """Return (the server's system identifier, or failing that its start time; the database name) of `conn`, or
    None when it cannot be reached now."""
    try:
        with pg_connect.connect(conn) as session:
            try:
                row = session.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
                server = f"system {row[0]}"
            except psycopg.Error:
                row = session.execute("SELECT pg_postmaster_start_time()::text").fetchone()
                server = f"started {row[0]}"
            return server, str(session.execute("SELECT current_database()").fetchone()[0])
    except (SourceError, psycopg.Error) as error:
        log.debug("drill.identity_unknown", host=conn.host, reason=why(error, conn)[:200])
        return None


def refuse_source(conn: Connection, sources: Sequence[Connection]) -> None:
    """Raise SourceError at stage `scratch` when the target `conn` is one of the configured source databases: the
    same address and name, or the same server (system identifier) and database name."""
    mine: tuple[str, str] | None = None
    for source in sources:
        same = same_database(conn, source)
        if not same:
            mine = mine or _identity(conn)
            same = mine is not None and _identity(source) == mine
        if same:
            raise SourceError(f"the drill target {conn.masked} ({TARGET_VARIABLE}) is the source database "
                              f"{source.dbname} on {source.host}, which a drill never touches; point "
                              f"{TARGET_VARIABLE} at an empty database of its own (or unset it for a scratch "
                              "database)", stage="scratch")


@dataclass(frozen=True)
class PublicSchema:
    """What `public` was before the drill: its owner, its ACL as (grantee, privilege, grantable) rows (None for
    the default), its comment; None as a whole when the database had no `public` schema."""

    owner: str
    acl: tuple[tuple[str, str, bool], ...] | None
    comment: str | None


def _public(session: psycopg.Connection) -> PublicSchema | None:
    row = session.execute("SELECT n.oid, pg_get_userbyid(n.nspowner), n.nspacl IS NULL, "
                          "obj_description(n.oid, 'pg_namespace') FROM pg_namespace n WHERE n.nspname = 'public'").fetchone()
    if row is None:
        return None
    acl = None
    if not row[2]:
        acl = tuple(session.execute(
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, "
            "a.is_grantable FROM pg_namespace n, aclexplode(n.nspacl) a WHERE n.oid = %s ORDER BY 1, 2",
            (row[0],)).fetchall())
    return PublicSchema(str(row[1]), acl, row[3])


def _recreate_public(session: psycopg.Connection, before: PublicSchema) -> None:
    """Drop `public` with everything in it and create it again as it was, in one transaction."""
    with session.transaction():
        session.execute("DROP SCHEMA public CASCADE")
        session.execute("CREATE SCHEMA public")
        session.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(before.owner)))
        if before.acl is not None:
            session.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
            for grantee, privilege, grantable in before.acl:
                who = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)
                session.execute(sql.SQL("GRANT {} ON SCHEMA public TO {}" + (" WITH GRANT OPTION" if grantable else ""))
                                .format(sql.SQL(privilege), who))
        session.execute(sql.SQL("COMMENT ON SCHEMA public IS {}").format(sql.Literal(before.comment)))


# Each object in public, as the statement that drops it (when public itself may not be dropped).
_IN_PUBLIC = """
SELECT format(CASE x.relkind WHEN 'v' THEN 'DROP VIEW IF EXISTS %s CASCADE'
                             WHEN 'm' THEN 'DROP MATERIALIZED VIEW IF EXISTS %s CASCADE'
                             WHEN 'S' THEN 'DROP SEQUENCE IF EXISTS %s CASCADE'
                             WHEN 'f' THEN 'DROP FOREIGN TABLE IF EXISTS %s CASCADE'
                             WHEN 'c' THEN 'DROP TYPE IF EXISTS %s CASCADE'
                             ELSE 'DROP TABLE IF EXISTS %s CASCADE' END, x.oid::regclass)
FROM pg_class x WHERE x.relnamespace = 'public'::regnamespace AND x.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')
UNION ALL
SELECT format('DROP ROUTINE IF EXISTS %s CASCADE', x.oid::regprocedure) FROM pg_proc x
WHERE x.pronamespace = 'public'::regnamespace
UNION ALL
SELECT format(CASE x.typtype WHEN 'd' THEN 'DROP DOMAIN IF EXISTS %s CASCADE' ELSE 'DROP TYPE IF EXISTS %s CASCADE' END,
              x.oid::regtype)
FROM pg_type x WHERE x.typnamespace = 'public'::regnamespace AND x.typrelid = 0 AND x.typelem = 0
"""


def _drop_in_public(session: psycopg.Connection, conn: Connection) -> None:
    for (statement,) in session.execute(_IN_PUBLIC).fetchall():
        try:
            session.execute(statement)
        except psycopg.Error as error:  # gone with an object dropped before it, or not ours: named afterwards
            log.debug("drill.target_drop_failed", statement=statement, reason=why(error, conn)[:200])


# Database-wide objects a restore may make, and how each is dropped.
_DATABASE_WIDE = (
    (f"SELECT extname FROM pg_extension WHERE {_NOT_DEFAULT}", "DROP EXTENSION IF EXISTS {} CASCADE"),
    ("SELECT pubname FROM pg_publication", "DROP PUBLICATION IF EXISTS {}"),
    ("SELECT evtname FROM pg_event_trigger", "DROP EVENT TRIGGER IF EXISTS {}"),
    ("SELECT srvname FROM pg_foreign_server", "DROP SERVER IF EXISTS {} CASCADE"),
)


def _empty(session: psycopg.Connection, public: PublicSchema | None, conn: Connection) -> None:
    """Drop everything a restore made in the database of `session` (proven empty before it): every non-system
    schema but public, database-wide objects, large objects, then public recreated as it was (or emptied)."""
    for (name,) in session.execute(f"SELECT n.nspname FROM pg_namespace n WHERE NOT ({_SYSTEM}) "
                                   "AND n.nspname <> 'public'").fetchall():
        session.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    for query, drop in _DATABASE_WIDE:
        for (name,) in session.execute(query).fetchall():
            session.execute(sql.SQL(drop).format(sql.Identifier(name)))
    session.execute("SELECT lo_unlink(oid) FROM pg_largeobject_metadata")
    if public is not None:
        try:
            _recreate_public(session, public)
        except psycopg.Error as error:  # another role owns public: drop what is in it instead
            log.info("drill.public_kept", database=conn.dbname, reason=why(error, conn)[:200])
            _drop_in_public(session, conn)


@contextmanager
def operator_database(target: OperatorTarget, cancel: threading.Event) -> Iterator[Connection]:
    """Yield DRILL_TARGET_URL's database once it is proven not to be a source and to be empty; empty it again on
    exit. Raise SourceError at stage `scratch` (a source, not empty, unreachable) before anything is restored,
    and at stage `cleanup` when something the restore made could not be removed (named)."""
    try:
        conn = pg_connect.parse_url(target.url)
    except ValueError as error:
        raise SourceError(f"{TARGET_VARIABLE}: {error}", stage="scratch") from None
    refuse_source(conn, target.sources)
    try:
        with pg_connect.connect(conn) as session:
            found = contents(session)
            public = _public(session)
    except psycopg.Error as error:
        raise SourceError(f"cannot read what the drill target {conn.masked} ({TARGET_VARIABLE}) holds: "
                          f"{why(error, conn)}", stage="scratch") from None
    if found:
        raise SourceError(f"the drill target {conn.masked} ({TARGET_VARIABLE}) is not empty: it holds {_phrase(found)}; "
                          "a drill restores into an empty database and empties it afterwards, so point it at one that "
                          "holds nothing at all", stage="scratch")
    try:
        yield conn
    finally:
        _clean(conn, public)


def _clean(conn: Connection, public: PublicSchema | None) -> None:
    """Empty the target after its drill; raise SourceError at stage `cleanup` naming what is left."""
    try:
        with pg_connect.connect(conn) as session:
            try:
                _empty(session, public, conn)
            except psycopg.Error as error:
                log.warning("drill.target_cleanup_failed", database=conn.dbname, reason=why(error, conn)[:200])
            left = contents(session)
    except (SourceError, psycopg.Error) as error:
        raise SourceError(f"the drill could not empty its target {conn.masked} ({TARGET_VARIABLE}) afterwards: "
                          f"{why(error, conn)}; it may still hold a copy of the backup, so empty it by hand before the "
                          "next drill", stage="cleanup") from None
    if left:
        raise SourceError(f"the drill could not empty its target {conn.masked} ({TARGET_VARIABLE}) afterwards: it still "
                          f"holds {_phrase(left)}; drop them by hand before the next drill", stage="cleanup")
    log.info("drill.target_emptied", database=conn.dbname, host=conn.host)
