"""What a SQLite backup records it holds (`counts`), measured on its snapshot, and what the live database holds
(`has_rows`, the empty-source guard's question): real files, a concurrent writer, tables of cases."""

import json
from pathlib import Path
import signal
import sqlite3
import subprocess
import time

import pytest

from jobs.engines import _sqlite as lib
from jobs.engines.sqlite import SqliteSource
from jobs.errors import Cancelled
from tests.integration.test_sqlite_backup import fill, start_writer


def table_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as connection:
        names = [row[0] for row in connection.execute(
            "SELECT name FROM pragma_table_list WHERE schema = 'main' AND type IN ('table', 'virtual') "
            "AND name NOT LIKE 'sqlite_%'")]
        return {name: connection.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names}


def test_the_manifest_counts_are_those_of_the_backup_while_a_writer_inserts(tmp_path: Path, worker) -> None:
    db = tmp_path / "app.db"
    db.unlink(missing_ok=True)
    fill(db, 20)
    writer, _ = start_writer(db, tmp_path)
    try:
        result = worker("backup", "--no-upload", env={"BACKUP_SOURCE": f"sqlite:///{db}"})
    finally:
        writer.send_signal(signal.SIGTERM)
        writer.wait(30)
    assert result.code == 0, result.stderr
    artifact = tmp_path / "backups" / result.event("job.succeeded")["artifact"]
    counts = json.loads(Path(str(artifact) + ".json").read_text())["counts"]
    restored = tmp_path / "restored.db"
    subprocess.run(["zstd", "-q", "-d", str(artifact), "-o", str(restored)], check=True)
    assert counts["unit"] == "rows"
    assert counts["tables"] == table_counts(restored)
    assert counts["total"] == sum(table_counts(restored).values())
    assert counts["tables"]["ledger"] > 0 and counts["tables"]["events"] == 20 * 1200
    assert table_counts(db)["ledger"] > counts["tables"]["ledger"]  # the writer went on after the snapshot


@pytest.mark.parametrize("case, script, tables, holds", [
    ("no tables at all", "", {}, False),
    ("empty tables", "CREATE TABLE a (x); CREATE TABLE b (y)", {"a": 0, "b": 0}, False),
    ("a row", "CREATE TABLE a (x); CREATE TABLE b (y); INSERT INTO b VALUES (1)", {"a": 0, "b": 1}, True),
    ("SQLite's own bookkeeping is not the app's rows",
     "CREATE TABLE a (id INTEGER PRIMARY KEY AUTOINCREMENT); INSERT INTO a DEFAULT VALUES; DELETE FROM a; "
     "CREATE INDEX ax ON a (id); ANALYZE", {"a": 0}, False),
    ("an empty full-text index", "CREATE VIRTUAL TABLE f USING fts5(body)", {"f": 0}, False),
    ("a full-text index counts its documents",
     "CREATE VIRTUAL TABLE f USING fts5(body); INSERT INTO f VALUES ('a'), ('b')", {"f": 2}, True),
    ("a table with odd names", 'CREATE TABLE "my ""odd"" table.x" (v); INSERT INTO "my ""odd"" table.x" VALUES (1)',
     {'my "odd" table.x': 1}, True),
    ("a view is not a table", "CREATE TABLE a (x); CREATE VIEW v AS SELECT 1 AS one", {"a": 0}, False),
    ("a WITHOUT ROWID table", "CREATE TABLE k (id TEXT PRIMARY KEY) WITHOUT ROWID; INSERT INTO k VALUES ('x')", {"k": 1}, True),
])
def test_counts_and_has_rows_agree_on_what_the_apps_rows_are(tmp_path: Path, case: str, script: str,
                                                             tables: dict[str, int], holds: bool) -> None:
    db = tmp_path / "case.db"
    with sqlite3.connect(db) as connection:
        connection.executescript(script)
    assert lib.count_rows(db, lambda: False) == {"unit": "rows", "total": sum(tables.values()), "tables": tables}, case
    assert SqliteSource(db).has_rows() is holds, case


def test_a_stop_ends_the_count_at_once(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    fill(db, 20)
    began = time.monotonic()
    with pytest.raises(Cancelled, match="row count was interrupted"):
        lib.count_rows(db, lambda: True)
    assert time.monotonic() - began < 1.0


def test_has_rows_of_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    from jobs.errors import SourceError

    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(SourceError, match="cannot read the SQLite database"):
        SqliteSource(bad).has_rows()
