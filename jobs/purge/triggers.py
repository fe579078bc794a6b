"""What else a delete sets off: triggers and rewrite rules, which the held check (jobs.purge.held) cannot follow.

A `DELETE` trigger on a rule's table (or on a table its cascades reach, or an `UPDATE` trigger on one whose key
is SET NULL / SET DEFAULT) may delete or change rows that no backup holds: an attachment written after the
snapshot, an audit row. The purge cannot prove such rows are in the backup, so a rule whose delete would fire
one is refused (a configuration problem at start, the rule's error at a purge), naming it. On PostgreSQL that
includes the triggers and rules of the table's partitions and inheritance children, at any depth: the delete
reaches their rows.
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
    # The table and every partition or inheritance child below it: a delete on the table reaches their rows too.
    # A trigger a partition got from its parent's (tgparentid, PostgreSQL 13+, read through to_jsonb so older
    # servers answer) is named once, on the parent.
    tree = ("WITH RECURSIVE tree(oid) AS (SELECT to_regclass(:relation)::oid UNION "
            "SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.oid) ")
    triggers = connection.execute(sa.text(
        tree + "SELECT t.tgname, t.tgrelid = to_regclass(:relation)::oid, t.tgrelid::regclass::text FROM pg_trigger t "
        "JOIN tree ON t.tgrelid = tree.oid WHERE NOT t.tgisinternal AND (t.tgtype & :bit) <> 0 "
        "AND (t.tgrelid = to_regclass(:relation)::oid OR coalesce(to_jsonb(t) ->> 'tgparentid', '0') = '0')"),
        {"relation": _quoted(relation), "bit": _PG_TYPE_BITS[event]}).all()
    rules = connection.execute(sa.text(
        tree + "SELECT r.rulename, r.ev_class = to_regclass(:relation)::oid, r.ev_class::regclass::text FROM pg_rewrite r "
        "JOIN tree ON r.ev_class = tree.oid WHERE r.ev_type = :event AND r.rulename <> '_RETURN'"),
        {"relation": _quoted(relation), "event": _PG_RULE_EVENTS[event]}).all()
    return sorted([*(f"trigger {name}{'' if own else f' on {where}'}" for name, own, where in triggers),
                   *(f"rule {name}{'' if own else f' on {where}'}" for name, own, where in rules)])


def _quoted(relation: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in relation.split("."))
