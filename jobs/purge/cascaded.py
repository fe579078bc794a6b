"""Counting the rows a delete takes along through ON DELETE CASCADE, per table, so that the outcome says every row
that went (a session's spec_runs, not "spec_runs: 0 deleted").

The database removes those rows itself and reports none of them (a DELETE's row count is the parent table's
alone). So each batch counts them first, inside the same write transaction and with the same WHERE as its
DELETE: for every table the cascades reach (schema.cascades_of, the walk the held check uses), the distinct rows
linked to the batch's rows through any chain of CASCADE keys. SQLite's write lock, or PostgreSQL's REPEATABLE
READ snapshot (a row that changed meanwhile makes the DELETE fail and the batch run again), make the count the
rows that went. SET NULL / SET DEFAULT change rows without removing them: not counted here (the rule lists
those keys in `cascades`).
"""

from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from jobs.purge.schema import Cascade, Target


def table_name(cascade: Cascade) -> str:
    """Return `[schema.]table` of the table a cascade reaches, as the outcome names it."""
    reference = cascade.reference
    return f"{reference.schema}.{reference.table}" if reference.schema else reference.table


def removals(cascades: tuple[Cascade, ...]) -> list[tuple[Cascade, ...]]:
    """Return every chain of ON DELETE CASCADE keys from the target down (each a path of Cascades, first link
    first): the tables whose rows a delete removes."""
    def walk(level: tuple[Cascade, ...], path: tuple[Cascade, ...]) -> Iterator[tuple[Cascade, ...]]:
        for cascade in level:
            if cascade.reference.on_delete != "CASCADE":
                continue
            yield (*path, cascade)
            yield from walk(cascade.below or (), (*path, cascade))

    return list(walk(cascades, ()))


def _chain_rows(target: Target, path: tuple[Cascade, ...], where: sa.ColumnElement[bool]) -> sa.Select:
    """Return the keys of the last table of `path` reached from the target's rows matching `where`."""
    joined: sa.FromClause = target.table
    parent: sa.FromClause = target.table
    child: sa.FromClause = target.table
    for cascade in path:
        child = cascade.table.alias()
        reference = cascade.reference
        on = sa.and_(*(child.c[mine] == parent.c[theirs]
                       for mine, theirs in zip(reference.columns, reference.referred, strict=True)))
        joined = joined.join(child, on)
        parent = child
    key = path[-1].key or ("ctid",)  # a PostgreSQL table without a primary key: its rows by ctid (one statement)
    return sa.select(*(child.c[name] for name in key)).select_from(joined).where(where)


def count_cascaded(connection: Connection, target: Target, paths: list[tuple[Cascade, ...]],
                   where: sa.ColumnElement[bool]) -> dict[str, int]:
    """Return, per table the cascades reach, how many distinct rows a DELETE of the target's rows matching
    `where` removes with them (tables with none left out). Run it in the DELETE's own transaction, right before
    it."""
    by_table: dict[str, list[tuple[Cascade, ...]]] = {}
    for path in paths:
        by_table.setdefault(table_name(path[-1]), []).append(path)
    counts: dict[str, int] = {}
    for name, chains in by_table.items():
        selects = [_chain_rows(target, path, where) for path in chains]
        rows = sa.union(*selects).subquery() if len(selects) > 1 else selects[0].distinct().subquery()
        count = connection.execute(sa.select(sa.func.count()).select_from(rows)).scalar_one()
        if count:
            counts[name] = count
    return counts


def add(total: dict[str, int], more: dict[str, int]) -> None:
    """Add the per-table counts `more` into `total`."""
    for name, count in more.items():
        total[name] = total.get(name, 0) + count
