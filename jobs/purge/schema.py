"""What a retention rule points at in the real database: the table, its batch key (rowid, or any primary key;
none for a PostgreSQL table without one), how its times are stored, the foreign keys that reference it, and what
a delete of its rows takes along through them (cascades_of, for jobs.purge.held). Everything comes from
reflection; statements are SQLAlchemy Core on lightweight, untyped table clauses (values pass to the driver as
they are, no type conversion in between).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from jobs.engines import _sqlite as sqlite_lib, pg_rows
from jobs.purge import triggers
from jobs.purge.kinds import postgres_kind, sqlite_kind
from jobs.purge.rules import OrphanRule, Rule, RuleProblem

ROWID_ALIASES = ("rowid", "_rowid_", "oid")
_RESTRICTS = ("RESTRICT", "NO ACTION")
MAX_DEPTH = 5  # levels of rows below a deleted row checked for being in the backup; a deeper row keeps it
MAX_CASCADES = 64  # foreign keys followed in all for one rule
_SYSTEM_SCHEMAS = ("information_schema",)


@dataclass(frozen=True)
class Reference:
    """A foreign key in another table (or the same one) that points at the rule's table."""

    schema: str | None
    table: str
    columns: tuple[str, ...]
    referred: tuple[str, ...]
    on_delete: str  # CASCADE, SET NULL, SET DEFAULT, RESTRICT or NO ACTION

    @property
    def restricts(self) -> bool:
        return self.on_delete in _RESTRICTS

    def describe(self) -> str:
        """Return e.g. `comments.event_id ON DELETE CASCADE`."""
        table = f"{self.schema}.{self.table}" if self.schema else self.table
        return f"{table}.{','.join(self.columns)} ON DELETE {self.on_delete}"


@dataclass(frozen=True)
class Target:
    """A rule resolved against the database."""

    rule: Rule
    table: sa.TableClause  # every column, untyped (and SQLite's rowid, PostgreSQL's xmin and ctid)
    column: sa.ColumnClause  # the time column (an orphan rule: the column that points at the parent)
    key: tuple[sa.ColumnClause, ...]  # rowid, or the primary key columns; () for a PostgreSQL table without one
    kind: str  # one of kinds.KINDS, or orphan (an orphan rule), thread (a LangGraph table)
    references: tuple[Reference, ...]
    columns: tuple[str, ...] = ()  # the table's own columns, in order
    integer_key: bool = False  # one integer key column (SQLite's rowid): batches may be key ranges
    parent: sa.ColumnClause | None = None  # an orphan rule (kind "orphan"): the parent's column it must match

    @property
    def cascades(self) -> list[str]:
        return [reference.describe() for reference in self.references if not reference.restricts]


@dataclass(frozen=True)
class Cascade:
    """Rows a delete in the parent table removes (ON DELETE CASCADE) or changes (SET NULL, SET DEFAULT) in
    another table, through one foreign key."""

    reference: Reference  # the foreign key, in the referencing table
    table: sa.TableClause  # the referencing table, as Target.table
    key: tuple[str, ...]  # SQLite: how its rows are found in the snapshot (rowid or primary key)
    columns: tuple[str, ...]  # its own columns
    below: "tuple[Cascade, ...] | None"  # what a removal there removes or changes in turn (() for a change);
    # None: the depth limit cut the walk here, so a parent that has rows here is kept


def orphaned(column: sa.ColumnElement[Any], parent: sa.ColumnClause) -> sa.ColumnElement[bool]:
    """Return "the row's `column` is set and matches no row of `parent`'s table" (NULL is not an orphan)."""
    return sa.and_(column.is_not(None), ~sa.exists().where(parent == column))


def resolve(connection: Connection, rule: Rule) -> Target:
    """Given a connection and a rule, return its Target. Raise RuleProblem naming the rule and what to fix."""
    inspector = sa.inspect(connection)
    sqlite = connection.dialect.name == "sqlite"
    schema = _schema(inspector, rule, rule.schema)
    table_name = _table(inspector, rule, schema, rule.table)
    columns = inspector.get_columns(table_name, schema=schema)
    names = [column["name"] for column in columns]
    column_name = _pick(names, rule.column)
    if column_name is None:
        raise RuleProblem(f"{rule.describe()}: table {table_name} has no column {rule.column}; "
                          f"its columns are {', '.join(names)}")
    table, key, integer_key = _table_and_key(inspector, schema, table_name, columns, sqlite)
    if sqlite and not key:
        raise RuleProblem(f"{rule.describe()}: table {table_name} has columns named rowid, _rowid_ and oid and no "
                          "primary key, so its rows cannot be told apart; add a primary key")
    declared = next(column["type"] for column in columns if column["name"] == column_name)
    column = table.c[column_name]
    parent = None
    if isinstance(rule, OrphanRule):
        kind, parent = "orphan", _parent(connection, inspector, rule, table, column)
    elif sqlite:
        kind = sqlite_kind(connection, rule, table, column, key, declared)
    else:
        kind = postgres_kind(connection, rule, table, column, key, declared)
    _refuse_side_effects(connection, rule, schema, table_name, triggers.DELETE, "deleting its rows")
    references = _sqlite_references if sqlite else _postgres_references
    return Target(rule=rule, table=table, column=column, key=key, kind=kind,
                  references=tuple(references(connection, inspector, schema, table_name)),
                  columns=tuple(names), integer_key=integer_key, parent=parent)


def table_target(connection: Connection, rule: Rule, schema: str | None, wanted: str, column: str) -> Target:
    """Return a Target for a table a rule deletes from as a whole unit with other tables (a LangGraph saver's):
    its key, its columns, `column` (which must exist). Raise RuleProblem if the table or column is missing, a
    delete there fires a trigger or rule, or a foreign key points at it (its cascades are not followed)."""
    inspector = sa.inspect(connection)
    schema = _schema(inspector, rule, schema)
    name = _table(inspector, rule, schema, wanted)
    columns = inspector.get_columns(name, schema=schema)
    names = [found["name"] for found in columns]
    if column not in names:
        raise RuleProblem(f"{rule.describe()}: table {name} has no column {column}, so it is not a LangGraph "
                          f"checkpointer's table; its columns are {', '.join(names)}")
    sqlite = connection.dialect.name == "sqlite"
    table, key, integer_key = _table_and_key(inspector, schema, name, columns, sqlite)
    _refuse_side_effects(connection, rule, schema, name, triggers.DELETE, "deleting its rows")
    references = tuple((_sqlite_references if sqlite else _postgres_references)(connection, inspector, schema, name))
    if references:
        raise RuleProblem(f"{rule.describe()}: {references[0].describe()} points at table {name}; a thread rule "
                          "deletes only from tables no foreign key points at")
    return Target(rule=rule, table=table, column=table.c[column], key=key, kind="thread", references=(),
                  columns=tuple(names), integer_key=integer_key)


def _parent(connection: Connection, inspector: sa.Inspector, rule: OrphanRule, table: sa.TableClause,
            column: sa.ColumnClause) -> sa.ColumnClause:
    """Return the parent column an orphan rule names (of an alias: the parent may be the table itself). Raise
    RuleProblem if it does not exist or cannot be compared with the rule's column."""
    schema = _schema(inspector, rule, rule.parent_schema)
    name = _table(inspector, rule, schema, rule.parent)
    names = [found["name"] for found in inspector.get_columns(name, schema=schema)]
    column_name = _pick(names, rule.parent_column)
    if column_name is None:
        raise RuleProblem(f"{rule.describe()}: table {name} has no column {rule.parent_column}; its columns are "
                          f"{', '.join(names)}")
    if not _leads_an_index(inspector, schema, name, column_name):
        where = f"{schema}.{name}" if schema else name
        raise RuleProblem(f"{rule.describe()}: {where}.{column_name} has no index, so every batch would read the "
                          f"whole of {name} for each of its rows while it holds the write lock; index it (CREATE "
                          f"INDEX ON {where} ({column_name})) or name the parent's primary key")
    parent = sa.table(name, sa.column(column_name), schema=schema).alias("parent")
    try:  # plans the condition without reading a row: types that cannot be compared fail here
        connection.execute(sa.select(sa.literal(1)).select_from(table).where(
            orphaned(column, parent.c[column_name])).limit(0)).all()
    except sa.exc.DBAPIError as error:
        connection.rollback()
        raise RuleProblem(f"{rule.describe()}: {table.name}.{column.name} cannot be compared with "
                          f"{name}.{column_name} ({str(getattr(error, 'orig', error)).strip().splitlines()[0]}); "
                          "name columns of comparable types") from None
    return parent.c[column_name]


def _leads_an_index(inspector: sa.Inspector, schema: str | None, table: str, column: str) -> bool:
    """Return whether `column` is the first column of the table's primary key, of a unique constraint or of an
    index: a lookup of one value there is an index search, not a scan of the table."""
    primary = inspector.get_pk_constraint(table, schema=schema).get("constrained_columns") or []
    keys = [primary, *(found.get("column_names") or [] for found in inspector.get_unique_constraints(
        table, schema=schema)), *(found.get("column_names") or [] for found in inspector.get_indexes(
            table, schema=schema))]
    return any(key and key[0] == column for key in keys)


def cascades_of(connection: Connection, target: Target) -> tuple[Cascade, ...]:
    """Return the foreign keys through which deleting the target's rows removes or changes rows elsewhere, each
    with what follows from it: MAX_DEPTH levels of ON DELETE CASCADE below the target, MAX_CASCADES keys in all.
    Where the walk stops, the Cascade has `below=None`: rows there keep their parents (a cycle of keys, such as
    replies to replies, ends at the depth limit too)."""
    inspector = sa.inspect(connection)
    sqlite = connection.dialect.name == "sqlite"
    find = _sqlite_references if sqlite else _postgres_references
    budget = [MAX_CASCADES]

    def walk(references: tuple[Reference, ...], depth: int) -> tuple[Cascade, ...]:
        found = []
        for reference in references:
            if reference.restricts:
                continue  # nothing follows: the delete is refused (see delete.blocked_by)
            budget[0] -= 1
            event = triggers.DELETE if reference.on_delete == "CASCADE" else triggers.UPDATE
            _refuse_side_effects(connection, target.rule, reference.schema, reference.table, event,
                                 f"{event.lower()}s there through {reference.describe()}")
            columns = inspector.get_columns(reference.table, schema=reference.schema)
            table, key, _ = _table_and_key(inspector, reference.schema, reference.table, columns, sqlite)
            below: tuple[Cascade, ...] | None = ()
            if depth > MAX_DEPTH or budget[0] < 0:
                below = None  # the walk stops here: a parent that has rows here is kept
            elif reference.on_delete == "CASCADE":
                below = walk(tuple(find(connection, inspector, reference.schema, reference.table)), depth + 1)
            found.append(Cascade(reference=reference, table=table, key=tuple(part.name for part in key),
                                 columns=tuple(column["name"] for column in columns), below=below))
        return tuple(found)

    return walk(target.references, 1)


def _refuse_side_effects(connection: Connection, rule: Rule, schema: str | None, table: str, event: str,
                         how: str) -> None:
    """Raise RuleProblem when an `event` on the table fires triggers or rules (see jobs.purge.triggers)."""
    fired = triggers.fired_by(connection, schema, table, event)
    if fired:
        where = f"{schema}.{table}" if schema else table
        raise RuleProblem(f"{rule.describe()}: {how} fires {', '.join(fired)} on {where}, which may change rows no "
                          "backup holds; table retention refuses such tables: drop the rule, or do this cleanup in "
                          "the app")


def fits(connection: Connection, rule: Rule) -> None:
    """Raise RuleProblem when an age or orphan rule does not fit the database (see resolve and cascades_of)."""
    cascades_of(connection, resolve(connection, rule))


def check(connection: Connection, rules: Sequence[Rule],
          fitting: Callable[[Connection, Rule], None] = fits) -> list[str]:
    """Return one problem per rule that does not fit the database, in rule order: `fitting` raises RuleProblem for
    a rule that does not (`fits` by default)."""
    problems = []
    for rule in rules:
        try:
            fitting(connection, rule)
        except RuleProblem as problem:
            problems.append(str(problem))
        finally:
            if connection.in_transaction():
                connection.commit()
    return problems


def has_user_tables(connection: Connection) -> bool:
    """Return whether the database holds any table of the app's own, by the engine's one definition
    (jobs.engines._sqlite.user_tables, jobs.engines.pg_rows.user_tables). A database without one is new: its
    migrations (or a restore) have not run yet."""
    raw = connection.connection.driver_connection
    if connection.dialect.name == "sqlite":
        return bool(sqlite_lib.user_tables(raw))
    return bool(pg_rows.user_tables(raw))


# --- names ------------------------------------------------------------------------------------------------------

def _pick(names: list[str], wanted: str) -> str | None:
    """Return `wanted` as the database spells it: the exact name, else the one name equal to it ignoring case."""
    if wanted in names:
        return wanted
    folded = [name for name in names if name.lower() == wanted.lower()]
    return folded[0] if len(folded) == 1 else None


def _schema(inspector: sa.Inspector, rule: Rule, wanted: str | None) -> str | None:
    if wanted is None:
        return None
    schema = _pick(inspector.get_schema_names(), wanted)
    if schema is None:
        raise RuleProblem(f"{rule.describe()}: the database has no schema {wanted}")
    return None if schema == inspector.default_schema_name else schema


def _table(inspector: sa.Inspector, rule: Rule, schema: str | None, wanted: str) -> str:
    table = _pick(inspector.get_table_names(schema=schema), wanted)
    if table is not None:
        return table
    if _pick(inspector.get_view_names(schema=schema), wanted) is not None:
        raise RuleProblem(f"{rule.describe()}: {wanted} is a view; name the table it reads from")
    where = "" if schema or inspector.dialect.name == "sqlite" else f" in schema {inspector.default_schema_name}"
    raise RuleProblem(f"{rule.describe()}: the database has no table {wanted}{where}; check the name in "
                      "RETENTION_RULES (SCHEMA.TABLE.COLUMN names a table in another schema)")


def _table_and_key(inspector: sa.Inspector, schema: str | None, name: str, columns: list[dict[str, Any]],
                   sqlite: bool) -> tuple[sa.TableClause, tuple[sa.ColumnClause, ...], bool]:
    """Return the table (every column, untyped, plus the system columns retention uses), the columns batches are
    chosen and deleted by (SQLite's rowid, else the primary key; none for a PostgreSQL table without one, whose
    batches go by ctid) and whether that key is one integer column."""
    names = [column["name"] for column in columns]
    system: list[str] = []
    if sqlite and inspector.get_table_options(name, schema=schema).get("sqlite_with_rowid", True):
        taken = {column.lower() for column in names}
        system = [alias for alias in ROWID_ALIASES if alias not in taken][:1]
    elif not sqlite:
        system = ["xmin", "ctid"]  # no user column may have these names in PostgreSQL
    table = sa.table(name, *(sa.column(column) for column in (*names, *system)), schema=schema)
    if sqlite and system:
        return table, (table.c[system[0]],), True
    primary = inspector.get_pk_constraint(name, schema=schema).get("constrained_columns") or []
    types = {column["name"]: column["type"] for column in columns}
    integer = len(primary) == 1 and isinstance(types.get(primary[0]), sa.Integer)
    return table, tuple(table.c[column] for column in primary), integer


# --- foreign keys pointing at the table -------------------------------------------------------------------------

def _sqlite_references(connection: Connection, inspector: sa.Inspector, schema: str | None,
                       table: str) -> list[Reference]:
    # SQLAlchemy does not reflect ON DELETE for SQLite; the table-valued pragma says it, table name as a parameter.
    primary = inspector.get_pk_constraint(table, schema=schema).get("constrained_columns") or []
    found = []
    for other in inspector.get_table_names(schema=schema):
        arguments = [other] if schema is None else [other, schema]
        pragma = sa.func.pragma_foreign_key_list(*arguments).table_valued(
            "id", "seq", "table", "from", "to", "on_delete")
        keys: dict[int, list[Any]] = {}
        for row in connection.execute(sa.select(pragma).order_by(pragma.c.id, pragma.c.seq)):
            if row.table.lower() == table.lower():
                keys.setdefault(row.id, []).append(row)
        for rows in keys.values():
            referred = tuple(row.to for row in rows) if all(row.to for row in rows) else tuple(primary)
            found.append(Reference(schema=schema, table=other, columns=tuple(row._mapping["from"] for row in rows),
                                   referred=referred, on_delete=(rows[0].on_delete or "NO ACTION").upper()))
    return found


def _postgres_references(connection: Connection, inspector: sa.Inspector, schema: str | None,
                         table: str) -> list[Reference]:
    default = inspector.default_schema_name
    found = []
    for other_schema in inspector.get_schema_names():
        if other_schema in _SYSTEM_SCHEMAS or other_schema.startswith("pg_"):
            continue
        listed = None if other_schema == default else other_schema
        for (_, other), keys in inspector.get_multi_foreign_keys(schema=listed).items():
            for foreign in keys:
                referred_schema = foreign.get("referred_schema")
                if referred_schema == default:
                    referred_schema = None
                if foreign["referred_table"] != table or referred_schema != schema:
                    continue
                found.append(Reference(schema=listed, table=other, columns=tuple(foreign["constrained_columns"]),
                                       referred=tuple(foreign["referred_columns"]),
                                       on_delete=(foreign.get("options", {}).get("ondelete") or "NO ACTION").upper()))
    return found
