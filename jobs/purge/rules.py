"""RETENTION_RULES: `TABLE.COLUMN=AGE` pairs (or `SCHEMA.TABLE.COLUMN=AGE`), separated by `;` or newlines. A column
that holds Unix time as a number says its unit after a colon: `events.created_at:ms=30d` (`s`, `ms` or `us`)."""

from dataclasses import dataclass
from datetime import timedelta
import re

from jobs.durations import format_duration, parse_duration

_EXAMPLE = "events.created_at=30d"
_SEPARATOR = re.compile(r"[;\n]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000}  # a Unix time column's unit: how many per second
UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds"}


class RuleProblem(ValueError):
    """A rule does not fit the database; the message is one sentence that starts with the rule."""


@dataclass(frozen=True)
class PurgeRule:
    """Delete rows of `table` whose `column` is older than `age`."""

    table: str
    column: str
    age: timedelta
    schema: str | None = None  # PostgreSQL schema (or an attached SQLite database); None: the default one
    unit: str | None = None  # one of UNITS: the column holds Unix time in that unit; None: judged from the data

    @property
    def name(self) -> str:
        """Return `[schema.]table.column`."""
        return ".".join(part for part in (self.schema, self.table, self.column) if part)

    @property
    def scale(self) -> int:
        """Return how many units of the column make a second (1 without a unit)."""
        return UNITS[self.unit] if self.unit else 1

    def describe(self) -> str:
        """Return the rule as an operator writes it, e.g. `events.created_at=30d` or `events.at:ms=30d`."""
        unit = f":{self.unit}" if self.unit else ""
        return f"{self.name}{unit}={format_duration(self.age)}"

    def with_unit(self, unit: str | None) -> str:
        """Return the rule written with another unit (`None`: none), for messages that say how to fix it."""
        return PurgeRule(self.table, self.column, self.age, self.schema, unit).describe()


def parse_retention_rules(text: str) -> list[PurgeRule]:
    """Given RETENTION_RULES, return the rules in order. Raise ValueError naming every bad pair and how to write it."""
    rules: list[PurgeRule] = []
    problems: list[str] = []
    seen: dict[tuple[str | None, str, str], str] = {}
    for pair in _SEPARATOR.split(text):
        pair = pair.strip()
        if not pair:
            continue
        try:
            rule = _parse_pair(pair)
        except ValueError as error:
            problems.append(str(error))
            continue
        key = ((rule.schema or "").lower(), rule.table.lower(), rule.column.lower())
        if key in seen:
            problems.append(f"{pair!r} names the same column as {seen[key]!r}; keep one rule per column")
            continue
        seen[key] = pair
        rules.append(rule)
    if problems:
        raise ValueError("; ".join(problems))
    return rules


def _parse_pair(pair: str) -> PurgeRule:
    name, equals, age_text = pair.partition("=")
    name, age_text = name.strip(), age_text.strip()
    if not equals:
        raise ValueError(f"{pair!r} has no '='; write TABLE.COLUMN=AGE like {_EXAMPLE}")
    if not name:
        raise ValueError(f"{pair!r} has no table and column before '='; write TABLE.COLUMN=AGE like {_EXAMPLE}")
    if not age_text:
        raise ValueError(f"{pair!r} has no age after '='; write TABLE.COLUMN=AGE like {_EXAMPLE}")
    name, colon, unit = name.partition(":")
    name, unit = name.strip(), unit.strip()
    if colon and unit not in UNITS:
        raise ValueError(f"{pair!r}: {unit!r} is not a unit; write TABLE.COLUMN:UNIT=AGE with s, ms or us "
                         "(Unix time in seconds, milliseconds or microseconds), like events.created_at:ms=30d")
    parts = [part.strip() for part in name.split(".")]
    if len(parts) not in (2, 3):
        raise ValueError(f"{pair!r} does not name a table and a column; write TABLE.COLUMN=AGE "
                         f"(or SCHEMA.TABLE.COLUMN=AGE) like {_EXAMPLE}")
    for part in parts:
        if not _IDENTIFIER.fullmatch(part):
            raise ValueError(f"{pair!r}: {part!r} is not a plain table or column name (letters, digits and _, "
                             "not starting with a digit); quoted names are not supported")
    try:
        age = parse_duration(age_text)
    except ValueError as error:
        raise ValueError(f"{pair!r}: {error}") from None
    if not age:
        raise ValueError(f"{pair!r} has an age of zero, which would delete rows just written; give an age like 30d")
    *schema, table, column = parts
    return PurgeRule(table=table, column=column, age=age, schema=schema[0] if schema else None, unit=unit or None)
