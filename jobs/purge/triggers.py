"""What else a delete sets off: triggers and rewrite rules, which the held check (jobs.purge.held) cannot follow.

A `DELETE` trigger on a rule's table (or on a table its cascades reach, or an `UPDATE` trigger on one whose key
is SET NULL / SET DEFAULT) may delete or change rows that no backup holds: an attachment written after the
snapshot, an audit row. The purge cannot prove such rows are in the backup, so a rule whose delete would fire
one is refused (a configuration problem at start, the rule's error at a purge), naming it.
"""

import re

import sqlalchemy as sa
from sqlalchemy.engine import Connection

DELETE, UPDATE = "DELETE", "UPDATE"
_PG_TYPE_BITS = {DELETE: 8, UPDATE: 16}  # TRIGGER_TYPE_DELETE, TRIGGER_TYPE_UPDATE in pg_trigger.tgtype
_PG_RULE_EVENTS = {DELETE: "4", UPDATE: "2"}  # pg_rewrite.ev_type
_SQLITE_EVENT = {event: re.compile(rf"\b(?:BEFORE|AFTER|INSTEAD\s+OF)?\s*{event}\b", re.IGNORECASE)
                 for event in (DELETE, UPDATE)}


def fired_by(connection: Connection, schema: str | None, table: str, event: str) -> list[str]:
    """Return, sorted, the triggers (and PostgreSQL rules) that an `event` (DELETE or UPDATE) on the table sets off,
    each as `trigger NAME` or `rule NAME`; [] when none."""
    if connection.dialect.name == "sqlite":
        master = f'"{schema}".sqlite_master' if schema else "sqlite_master"
        rows = connection.exec_driver_sql(
            f"SELECT name, sql FROM {master} WHERE type = 'trigger' AND lower(tbl_name) = lower(?)", (table,))
        return sorted(f"trigger {name}" for name, sql in rows
                      if sql and _SQLITE_EVENT[event].search(re.split(r"\sON\s", sql, maxsplit=1, flags=re.IGNORECASE)[0]))
    relation = f"{schema}.{table}" if schema else table
    triggers = connection.execute(sa.text(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(:relation) AND NOT tgisinternal "
        "AND (tgtype & :bit) <> 0"), {"relation": _quoted(relation), "bit": _PG_TYPE_BITS[event]}).scalars()
    rules = connection.execute(sa.text(
        "SELECT rulename FROM pg_rewrite WHERE ev_class = to_regclass(:relation) AND ev_type = :event "
        "AND rulename <> '_RETURN'"), {"relation": _quoted(relation), "event": _PG_RULE_EVENTS[event]}).scalars()
    return sorted([*(f"trigger {name}" for name in triggers), *(f"rule {name}" for name in rules)])


def _quoted(relation: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in relation.split("."))
