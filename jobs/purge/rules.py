"""RETENTION_RULES, separated by `;` or newlines:
- age rules `TABLE.COLUMN=AGE` (or `SCHEMA.TABLE.COLUMN=AGE`); a column that holds Unix time as a number says its
  unit after a colon: `events.created_at:ms=30d` (`s`, `ms` or `us`);
- LangGraph thread rules `langgraph=AGE` (or `langgraph:SCHEMA=AGE`): whole threads of a LangGraph checkpointer
  whose newest checkpoint is older than AGE;
- orphan rules `TABLE.COLUMN->PARENT.COLUMN` (each side may start with `SCHEMA.`): rows whose COLUMN matches no
  PARENT row go (NULL is not an orphan). A purge runs them after every age rule, whatever their place.
"""

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


@dataclass(frozen=True)
class OrphanRule:
    """Delete rows of `table` whose `column` matches no row of `parent` (by `parent_column`); NULL is kept."""

    table: str
    column: str
    parent: str
    parent_column: str
    schema: str | None = None
    parent_schema: str | None = None

    @property
    def name(self) -> str:
        """Return `[schema.]table.column`."""
        return ".".join(part for part in (self.schema, self.table, self.column) if part)

    def describe(self) -> str:
        """Return the rule as an operator writes it, e.g. `spec_runs.session_id->sessions.id`."""
        parent = ".".join(part for part in (self.parent_schema, self.parent, self.parent_column) if part)
        return f"{self.name}->{parent}"


LANGGRAPH = "langgraph"


@dataclass(frozen=True)
class ThreadRule:
    """Delete whole LangGraph threads whose newest checkpoint is older than `age` (see jobs.purge.langgraph)."""

    age: timedelta
    schema: str | None = None  # PostgreSQL schema (or attached SQLite database) of the saver's tables

    table = "checkpoints"  # the table a thread's age is read from (for messages and duplicate rules)
    column = "thread_id"

    @property
    def name(self) -> str:
        return f"{LANGGRAPH}:{self.schema}" if self.schema else LANGGRAPH

    def describe(self) -> str:
        """Return the rule as an operator writes it, e.g. `langgraph=90d`."""
        return f"{self.name}={format_duration(self.age)}"


Rule = PurgeRule | OrphanRule | ThreadRule


def parse_retention_rules(text: str) -> list[Rule]:
    """Given RETENTION_RULES, return the rules in order. Raise ValueError naming every bad pair and how to write it."""
    rules: list[Rule] = []
    problems: list[str] = []
    seen: dict[tuple[str, str, str, str], str] = {}
    for pair in _SEPARATOR.split(text):
        pair = pair.strip()
        if not pair:
            continue
        try:
            rule = _parse_pair(pair)
        except ValueError as error:
            problems.append(str(error))
            continue
        key = (type(rule).__name__, (rule.schema or "").lower(), rule.table.lower(), rule.column.lower())
        if key in seen:
            problems.append(f"{pair!r} names the same column as {seen[key]!r}; keep one rule per column")
            continue
        seen[key] = pair
        rules.append(rule)
    if problems:
        raise ValueError("; ".join(problems))
    return rules


def in_purge_order(rules: "list[Rule] | tuple[Rule, ...]") -> list[Rule]:
    """Return the rules in the order a purge runs them: the age rules as written, then the orphan rules (so rows
    that lost their parent to an age rule of the same cycle go in that cycle)."""
    return [rule for rule in rules if not isinstance(rule, OrphanRule)] + \
        [rule for rule in rules if isinstance(rule, OrphanRule)]


def _names(pair: str, text: str, how: str) -> list[str]:
    """Return the dotted names of `text`, 2 or 3 plain identifiers. Raise ValueError naming the pair."""
    parts = [part.strip() for part in text.split(".")]
    if len(parts) not in (2, 3):
        raise ValueError(f"{pair!r} does not name a table and a column; write {how}")
    for part in parts:
        if not _IDENTIFIER.fullmatch(part):
            raise ValueError(f"{pair!r}: {part!r} is not a plain table or column name (letters, digits and _, "
                             "not starting with a digit); quoted names are not supported")
    return parts


def _parse_orphan(pair: str) -> OrphanRule:
    how = "TABLE.COLUMN->PARENT.COLUMN like spec_runs.session_id->sessions.id"
    child, _, parent = pair.partition("->")
    if "=" in pair:
        raise ValueError(f"{pair!r} mixes an orphan rule (->) and an age (=); write {how}, or TABLE.COLUMN=AGE")
    if not child.strip() or not parent.strip():
        raise ValueError(f"{pair!r} needs a table and column on both sides of '->'; write {how}")
    *schema, table, column = _names(pair, child, how)
    *parent_schema, parent_table, parent_column = _names(pair, parent, how)
    return OrphanRule(table=table, column=column, parent=parent_table, parent_column=parent_column,
                      schema=schema[0] if schema else None, parent_schema=parent_schema[0] if parent_schema else None)


def _age(pair: str, text: str) -> timedelta:
    try:
        age = parse_duration(text)
    except ValueError as error:
        raise ValueError(f"{pair!r}: {error}") from None
    if not age:
        raise ValueError(f"{pair!r} has an age of zero, which would delete rows just written; give an age like 30d")
    return age


def _parse_threads(pair: str, name: str, age_text: str) -> ThreadRule:
    _, colon, schema = name.partition(":")
    schema = schema.strip()
    if colon and not _IDENTIFIER.fullmatch(schema):
        raise ValueError(f"{pair!r}: {schema!r} is not a plain schema name; write langgraph=AGE, or "
                         "langgraph:SCHEMA=AGE when the saver's tables are in another schema")
    return ThreadRule(age=_age(pair, age_text), schema=schema or None)


def _parse_pair(pair: str) -> Rule:
    if "->" in pair:
        return _parse_orphan(pair)
    name, equals, age_text = pair.partition("=")
    name, age_text = name.strip(), age_text.strip()
    if not equals:
        raise ValueError(f"{pair!r} has no '='; write TABLE.COLUMN=AGE like {_EXAMPLE} (or TABLE.COLUMN->PARENT.COLUMN "
                         "for orphans)")
    if not name:
        raise ValueError(f"{pair!r} has no table and column before '='; write TABLE.COLUMN=AGE like {_EXAMPLE}")
    if not age_text:
        raise ValueError(f"{pair!r} has no age after '='; write TABLE.COLUMN=AGE like {_EXAMPLE}")
    if name.partition(":")[0].strip().lower() == LANGGRAPH:
        return _parse_threads(pair, name, age_text)
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
    *schema, table, column = parts
    return PurgeRule(table=table, column=column, age=_age(pair, age_text), schema=schema[0] if schema else None,
                     unit=unit or None)
