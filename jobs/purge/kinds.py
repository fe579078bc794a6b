"""How a rule's column stores time, judged from its declared type and, where the type does not say it, from the
values it holds: ISO 8601 text, Unix time as a number (seconds, or the unit the rule names: `:ms`, `:us`),
timestamp with or without time zone, or date. A number column without a unit is read as seconds on SQLite (the
sample must agree) and refused on PostgreSQL, where the type alone cannot say the unit.
"""

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from jobs.purge.rules import UNIT_NAMES, UNITS, PurgeRule, RuleProblem

SAMPLE = 200  # values read from each end of the table (in key order) to tell how a column stores time
UNIX_MIN = 10**8  # 1973-03-03 in seconds: a smaller number is a counter or an id, not a time
UNIX_MAX = 10**11  # year 5138 in seconds: a larger number is a time in a smaller unit
MILLISECONDS = UNIX_MAX  # kept for readers of the old name: seconds end where milliseconds begin
KINDS = {
    "text": "ISO 8601 text",
    "unix": "Unix time (SQLite number, in the rule's unit, seconds by default)",
    "epoch": "Unix time (PostgreSQL number, in the rule's unit)",
    "timestamptz": "timestamp with time zone",
    "timestamp": "timestamp without time zone (read as UTC)",
    "date": "date",
}
ISO_8601 = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?")
# What SQLite text must start with to be read as a time at all: a date. SQLite's datetime() also reads a time of
# day alone ('12:30' is 2000-01-01 12:30), a Julian day number written as text and 'now'; none of those is a date.
DATE_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*"


def unit_of(value: float) -> str | None:
    """Return the unit (a key of UNITS) in which `value` is a Unix time between 1973 and 5138, or None."""
    return next((unit for unit, per in UNITS.items() if UNIX_MIN * per <= value < UNIX_MAX * per), None)


def check_numbers(rule: PurgeRule, column: str, numbers: list[Any]) -> None:
    """Raise RuleProblem when a sampled number is not a Unix time in the rule's unit (seconds without one),
    naming the unit it looks like and the rule written with it."""
    stated = rule.unit or "s"
    for value in numbers:
        guess = unit_of(value)
        if guess == stated:
            continue
        where = f"{rule.describe()}: column {column} holds {value!r}"
        if guess is not None:
            raise RuleProblem(f"{where}, which looks like {UNIT_NAMES[guess]}, not {UNIT_NAMES[stated]}; write "
                              f"{rule.with_unit(guess)}")
        when = "before 1973" if value < UNIX_MIN * UNITS[stated] else "after the year 5138"
        raise RuleProblem(f"{where}, which is not a Unix time in {UNIT_NAMES[stated]} (it would be {when}); name "
                          "the column that holds the row's time, or its unit (:s, :ms or :us)")


def _sample(connection: Connection, columns: list[Any], table: sa.TableClause, column: sa.ColumnClause,
            key: tuple[sa.ColumnClause, ...]) -> list[Any]:
    """Return up to SAMPLE rows of `columns` from each end of the table in key order (any SAMPLE without a key)."""
    sample = sa.select(*columns).select_from(table).where(column.is_not(None))
    if not key:
        return list(connection.execute(sample.limit(SAMPLE)))
    return [*connection.execute(sample.order_by(*key).limit(SAMPLE)),
            *connection.execute(sample.order_by(*(part.desc() for part in key)).limit(SAMPLE))]


def postgres_kind(connection: Connection, rule: PurgeRule, table: sa.TableClause, column: sa.ColumnClause,
                  key: tuple[sa.ColumnClause, ...], declared: Any) -> str:
    """Return how a PostgreSQL column stores time, by its type; a number column needs the rule's unit, and a
    sample of its values must be times in that unit. Raise RuleProblem otherwise."""
    if isinstance(declared, (sa.DateTime, sa.Date)):
        if rule.unit:
            raise RuleProblem(f"{rule.describe()}: column {column.name} is of type {declared}, not a number; "
                              f"write {rule.with_unit(None)} without a unit")
        if isinstance(declared, sa.DateTime):
            return "timestamptz" if declared.timezone else "timestamp"
        return "date"
    if isinstance(declared, (sa.Integer, sa.Numeric)):
        if not rule.unit:
            raise RuleProblem(f"{rule.describe()}: column {column.name} is of type {declared}; say the unit of the "
                              f"Unix time it holds, e.g. {rule.with_unit('s')} (or :ms, :us)")
        check_numbers(rule, column.name, [row[0] for row in _sample(connection, [column], table, column, key)])
        return "epoch"
    raise RuleProblem(f"{rule.describe()}: column {column.name} is of type {declared}; retention needs "
                      "timestamp, timestamp with time zone, date, or a number with its unit (e.g. :ms)")


def affinity(declared: str) -> str:
    """Given a declared SQLite column type, return its affinity by SQLite's rules: integer, text, blob, real or
    numeric."""
    declared = declared.upper()
    if "INT" in declared:
        return "integer"
    if any(word in declared for word in ("CHAR", "CLOB", "TEXT")):
        return "text"
    if "BLOB" in declared or not declared:
        return "blob"
    if any(word in declared for word in ("REAL", "FLOA", "DOUB")):
        return "real"
    return "numeric"


def sqlite_kind(connection: Connection, rule: PurgeRule, table: sa.TableClause, column: sa.ColumnClause,
                key: tuple[sa.ColumnClause, ...], declared: Any) -> str:
    """Decide from a sample of stored values (both ends of the table) whether the column holds ISO 8601 text or
    Unix time (in the rule's unit, seconds by default); the declared type decides only for an empty column.
    Raise RuleProblem for anything else, and when the values contradict the rule's unit."""
    declared_name = "" if isinstance(declared, sa.types.NullType) else str(declared)
    rows = _sample(connection, [sa.func.typeof(column), column, sa.func.datetime(column)], table, column, key)
    where = f"{rule.describe()}: column {column.name}"
    texts = [(value, parsed) for storage, value, parsed in rows if storage == "text"]
    numbers = [value for storage, value, _ in rows if storage in ("integer", "real")]
    if any(storage == "blob" for storage, _, _ in rows):
        raise RuleProblem(f"{where} holds binary values; retention reads ISO 8601 text or Unix time")
    if texts and numbers:
        raise RuleProblem(f"{where} mixes text and numbers (e.g. {texts[0][0]!r} and {numbers[0]!r}); "
                          "store every time one way, ISO 8601 text or Unix time")
    if texts and rule.unit:
        raise RuleProblem(f"{where} holds text ({texts[0][0]!r}), not a number in {UNIT_NAMES[rule.unit]}; write "
                          f"{rule.with_unit(None)} without a unit for ISO 8601 text")
    for value, parsed in texts:
        if parsed is None or not ISO_8601.fullmatch(value):
            raise RuleProblem(f"{where} holds {value!r}, which is not an ISO 8601 time; retention reads text like "
                              "2026-11-22 02:00:00 (T, fractions and +HH:MM offsets allowed) or Unix time")
    check_numbers(rule, column.name, numbers)
    if texts:
        return "text"
    if numbers:
        return "unix"
    if "BLOB" in declared_name.upper():
        raise RuleProblem(f"{where} is declared {declared_name}; retention reads ISO 8601 text or Unix time")
    if rule.unit:
        return "unix"
    return "unix" if affinity(declared_name) in ("integer", "real") else "text"
