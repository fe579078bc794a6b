"""Counting the rows a delete takes along through ON DELETE CASCADE, per table, so that the outcome says every row
that went (a session's spec_runs, not "spec_runs: 0 deleted").

The database removes those rows itself and reports none of them (a DELETE's row count is the parent table's
alone). So each batch counts them with the same WHERE as its DELETE: for every table the cascades reach
(schema.cascades_of, the walk the held check uses), the distinct rows linked to the batch's rows through any
chain of CASCADE keys. SQLite counts right before the DELETE, under the same write lock; PostgreSQL counts in the
DELETE's own statement (one snapshot, taken at the DELETE; a row that changed meanwhile makes the DELETE fail in
REPEATABLE READ and the batch run again). A self-referencing key (replies to comments) reaches the rule's own
table: there a row the DELETE removes itself is not counted again (`settle`). SET NULL / SET DEFAULT change rows
without removing them: not counted here (the rule lists those keys in `cascades`).
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


def cascade_counts(target: Target, paths: list[tuple[Cascade, ...]],
                   where: sa.ColumnElement[bool]) -> dict[str, sa.ScalarSelect[int]]:
    """Return, per table the cascades reach, the query of how many distinct rows there a DELETE of the target's
    rows matching `where` removes. The target's own table (a self-referencing key: replies to comments) counts the
    rows `where` matches too, which the DELETE may remove itself or through the cascade, whichever comes first:
    `settle` takes the DELETE's own count off it."""
    by_table: dict[str, list[tuple[Cascade, ...]]] = {}
    for path in paths:
        by_table.setdefault(table_name(path[-1]), []).append(path)
    queries = {}
    for name, chains in by_table.items():
        selects = [_chain_rows(target, path, where) for path in chains]
        if _is_target(target, chains[0][-1]):
            key = chains[0][-1].key or ("ctid",)
            selects.append(sa.select(*(target.table.c[column] for column in key)).where(where))
        rows = sa.union(*selects).subquery() if len(selects) > 1 else selects[0].distinct().subquery()
        queries[name] = sa.select(sa.func.count()).select_from(rows).scalar_subquery()
    return queries


def count_cascaded(connection: Connection, target: Target, paths: list[tuple[Cascade, ...]],
                   where: sa.ColumnElement[bool]) -> dict[str, int]:
    """Return the counts of cascade_counts (before `settle`). Run it in the DELETE's own transaction, right before
    it, under the write lock (SQLite), or as a dry run's estimate."""
    return {name: connection.execute(sa.select(query)).scalar_one()
            for name, query in cascade_counts(target, paths, where).items()}


def settle(target: Target, counts: dict[str, int], deleted: int) -> dict[str, int]:
    """Return the rows removed by cascade per table (tables with none left out), given cascade_counts' counts and
    the rows the DELETE itself reported: a row the DELETE removed itself is never counted again as cascaded."""
    own = table_name_of(target)
    settled = {name: count - deleted if name == own else count for name, count in counts.items()}
    return {name: count for name, count in settled.items() if count > 0}


def table_name_of(target: Target) -> str:
    """Return `[schema.]table` of the target, as table_name names the tables cascades reach."""
    table = target.table
    return f"{table.schema}.{table.name}" if table.schema else table.name


def _is_target(target: Target, cascade: Cascade) -> bool:
    return (cascade.reference.schema, cascade.reference.table) == (target.table.schema, target.table.name)


def add(total: dict[str, int], more: dict[str, int]) -> None:
    """Add the per-table counts `more` into `total`."""
    for name, count in more.items():
        total[name] = total.get(name, 0) + count
