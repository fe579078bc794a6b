"""Row counts from pg_dump's custom archive, read as it streams (jobs.engines.pg_archive), checked against
`SELECT count(*)` on real databases and real archives of the installed pg_dump."""

from collections.abc import Callable
from pathlib import Path
import subprocess
import threading

from psycopg import sql
import pytest

from jobs.engines import COUNTS, pg_tools, postgres
from jobs.engines.pg_archive import ArchiveRows, table_key
from tests.postgres.conftest import admin, url_for

CASES = r'''
CREATE SCHEMA "sales.eu";
CREATE SCHEMA other;
CREATE TABLE plain (id int PRIMARY KEY, note text);
INSERT INTO plain SELECT g, 'row ' || g FROM generate_series(1, 2500) g;
CREATE TABLE empty_one (id int);
CREATE TABLE no_columns ();
INSERT INTO no_columns DEFAULT VALUES; INSERT INTO no_columns DEFAULT VALUES; INSERT INTO no_columns DEFAULT VALUES;
CREATE TABLE tricky (id serial PRIMARY KEY, body text, raw bytea);
INSERT INTO tricky (body, raw) VALUES (E'line one\nline two\r\nthree', '\x000a0d5c'), (E'tab\there\\back\\slash', '\x0a'),
  (E'\\.', NULL), ('', NULL), (NULL, NULL), (E'\n\n\n', '\x00'), (repeat(E'x\n', 40000), NULL);
INSERT INTO tricky (body) SELECT repeat('é✓', g % 300) FROM generate_series(1, 700) g;
CREATE TABLE "sales.eu"."orders.2026" (id int, "we""ird" text);
INSERT INTO "sales.eu"."orders.2026" SELECT g, 'o' FROM generate_series(1, 10) g;
CREATE TABLE other."Quoted ""Name""" (id int);
INSERT INTO other."Quoted ""Name""" VALUES (1), (2);
CREATE TABLE other.plain (id int);
INSERT INTO other.plain VALUES (7);
CREATE TABLE measures (at date NOT NULL, value int) PARTITION BY RANGE (at);
CREATE TABLE measures_2025 PARTITION OF measures FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE measures_2026 PARTITION OF measures FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO measures SELECT date '2025-06-01' + g, g FROM generate_series(1, 400) g;
CREATE TABLE lengths (id int, pad text);
INSERT INTO lengths SELECT g, repeat('y', g) FROM generate_series(0, 3000) g;
CREATE TABLE big_rows (id int, blob text);
INSERT INTO big_rows SELECT g, repeat(md5(g::text), 3000) FROM generate_series(1, 30) g;
CREATE MATERIALIZED VIEW summary AS SELECT count(*) AS n FROM plain;
CREATE SEQUENCE counter; SELECT setval('counter', 42);
SELECT lo_from_bytea(0, decode(repeat('00ff0a', 20000), 'hex'));
SELECT lo_from_bytea(0, '\x0a0a0a');
'''


def live_counts(dbname: str) -> dict[str, int]:
    """Return `SELECT count(*)` of every ordinary table (partitions included), keyed as counts.tables keys them."""
    with admin(dbname=dbname) as connection:
        tables = connection.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%'").fetchall()
        return {table_key(schema, name): connection.execute(
            sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(name))).fetchone()[0]
            for schema, name in tables}


def dump(dbname: str, out: Path, *options: str) -> bytes:
    """Write a custom-format archive of `dbname` with the pg_dump the engine picks for the server; return it."""
    source = postgres.open_source(url_for(dbname), Path.cwd())
    tools = source.tools()
    subprocess.run([str(tools.pg_dump), "--format=custom", *options, f"--file={out}", f"--dbname={source.conn.conninfo()}"],
                   check=True, capture_output=True, env=source.conn.env())
    return out.read_bytes()


def counted(archive: bytes, size: int) -> ArchiveRows:
    rows = ArchiveRows()
    for start in range(0, len(archive), size):
        rows.feed(archive[start:start + size])
    return rows


@pytest.fixture
def cases_db(make_db: Callable[..., str]) -> str:
    name = make_db("counts")
    with admin(dbname=name) as connection:
        connection.execute(CASES)
    return name


@pytest.mark.parametrize("size", [1, 3, 7, 64, 4096, 1 << 20])
def test_counts_from_the_archive_equal_select_count_of_every_table_whatever_the_chunk_size(cases_db: str, tmp_path: Path,
                                                                                        size: int) -> None:
    archive = dump(cases_db, tmp_path / "cases.dump", "--compress=0")
    rows = counted(archive, size)
    result = rows.result()
    assert result is not None, rows.problem
    expected = live_counts(cases_db)
    assert result["tables"] == expected
    assert result["total"] == sum(expected.values())
    assert result["unit"] == "rows"
    assert expected['"sales.eu"."orders.2026"'] == 10 and expected['other."Quoted ""Name"""'] == 2
    assert expected["public.empty_one"] == 0 and expected["public.no_columns"] == 3  # empty lines are rows too
    assert expected["public.measures_2025"] + expected["public.measures_2026"] == 400  # the partitions hold the rows
    assert "public.measures" not in result["tables"] and "public.summary" not in result["tables"]
    assert expected["public.lengths"] == 3001  # rows of every length up to 3 KB: some lengths hold a newline byte


def test_an_archive_of_a_database_without_tables_counts_nothing(make_db: Callable[..., str], tmp_path: Path) -> None:
    archive = dump(make_db("bare"), tmp_path / "bare.dump", "--compress=0")
    assert counted(archive, 4096).result() == {"unit": "rows", "total": 0, "tables": {}}


@pytest.mark.parametrize("cut", [1, 5, 11, 200, -6, -1])
def test_an_archive_cut_short_gives_no_counts_and_says_why(cases_db: str, tmp_path: Path, cut: int) -> None:
    archive = dump(cases_db, tmp_path / "cases.dump", "--compress=0")
    rows = counted(archive[:cut] if cut > 0 else archive[:len(archive) + cut], 4096)
    assert rows.result() is None
    assert rows.problem
    nothing = ArchiveRows()
    assert nothing.result() is None and "cut short" in (nothing.problem or "")


@pytest.mark.parametrize("case, change, why", [
    ("a version after the ones pg_dump 17 writes", lambda a: a[:6] + bytes([17]) + a[7:], "archive version 1.17"),
    ("a version before pg_dump 9.6", lambda a: a[:6] + bytes([11]) + a[7:], "archive version 1.11"),
    ("not an archive at all", lambda a: b"-- plain SQL\n" + a, "PGDMP"),
    ("bytes after the end", lambda a: a + b"\x01", "follow the end"),
])
def test_an_archive_this_worker_cannot_read_gives_no_counts_and_a_reason(cases_db: str, tmp_path: Path, case: str,
                                                                         change: Callable[[bytes], bytes], why: str) -> None:
    archive = dump(cases_db, tmp_path / "cases.dump", "--compress=0")
    rows = counted(change(archive), 1 << 16)
    assert rows.result() is None, case
    assert why in (rows.problem or ""), (case, rows.problem)


@pytest.mark.parametrize("options, why", [(("--compress=1",), "compressed"), (("--compress=0", "--inserts"), "COPY")])
def test_archives_the_worker_never_writes_give_no_counts(cases_db: str, tmp_path: Path, options: tuple[str, ...],
                                                         why: str) -> None:
    rows = counted(dump(cases_db, tmp_path / "other.dump", *options), 1 << 16)
    assert rows.result() is None and why in (rows.problem or "")


@pytest.mark.parametrize("schema, table, key", [
    ("public", "users", "public.users"),
    ("public", "Users", 'public."Users"'),
    ("a.b", "c", '"a.b".c'),
    ("a", "b.c", 'a."b.c"'),
    ("s", 'say "hi"', 's."say ""hi"""'),
    ("s", "with space", 's."with space"'),
    ("s", "9lives", 's."9lives"'),
    ("s", "_ok$1", "s._ok$1"),
])
def test_table_keys_quote_what_would_be_ambiguous(schema: str, table: str, key: str) -> None:
    assert table_key(schema, table) == key


def test_the_engine_records_the_counts_of_its_snapshot_while_a_writer_inserts(app_pg: str, tmp_path: Path,
                                                                          make_db: Callable[..., str]) -> None:
    """The counts are the snapshot's: a writer inserting throughout the dump changes the live table, not them."""
    source = postgres.open_source(url_for(app_pg), tmp_path)
    stop = threading.Event()

    def write() -> None:
        with admin(dbname=app_pg) as connection:
            while not stop.is_set():
                connection.execute("INSERT INTO events (user_id, kind, payload, created_at) VALUES (1, 'w', '{}', now())")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    seen: dict = {}
    try:
        with source.snapshot(tmp_path, threading.Event()) as snap:
            out = tmp_path / "app.dump"
            with out.open("wb") as handle:
                while chunk := snap.stream.read(1 << 16):
                    snap.check.feed(chunk)
                    handle.write(chunk)
            snap.check.finish()
            seen = dict(snap.details)
            snap.check.close()
    finally:
        stop.set()
        writer.join()
    counts = seen[COUNTS]
    restored = make_db("restored")
    tools = pg_tools.newest(None)
    subprocess.run([str(tools.pg_restore), "--no-owner", f"--dbname={url_for(restored)}", str(out)], check=True,
                   capture_output=True)
    assert counts["tables"] == live_counts(restored)
    assert counts["total"] == sum(live_counts(restored).values())
    assert live_counts(app_pg)["public.events"] > counts["tables"]["public.events"]  # the writer went on


def test_an_archive_the_counter_cannot_read_still_makes_a_backup_without_counts(app_pg: str, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Failing soft: pg_restore's proof decides; the counts are only left out."""
    monkeypatch.setattr("jobs.engines.pg_archive.LAST", (1, 13))  # as if pg_dump wrote a version newer than we read
    source = postgres.open_source(url_for(app_pg), tmp_path)
    with source.snapshot(tmp_path, threading.Event()) as snap:
        while chunk := snap.stream.read(1 << 16):
            snap.check.feed(chunk)
        assert snap.check.finish() == postgres.CHECK
        snap.check.close()
        assert COUNTS not in snap.details


def test_has_rows_sees_a_row_in_any_user_table_and_nothing_in_system_or_extension_tables(make_db: Callable[..., str],
                                                                                      tmp_path: Path) -> None:
    name = make_db("rows")
    source = postgres.open_source(url_for(name), tmp_path)
    assert source.has_rows() is False  # a fresh database
    with admin(dbname=name) as connection:
        connection.execute("CREATE SCHEMA app; CREATE TABLE app.t (id int); CREATE TABLE public.u (id int)")
    assert source.has_rows() is False  # tables, no rows
    with admin(dbname=name) as connection:
        connection.execute("INSERT INTO app.t VALUES (1)")
    assert source.has_rows() is True
    with admin(dbname=name) as connection:
        connection.execute("TRUNCATE app.t")
    assert source.has_rows() is False


def test_has_rows_of_an_unreachable_server_raises_a_source_error(tmp_path: Path) -> None:
    from jobs.errors import SourceError
    from tests.postgres.conftest import free_port

    source = postgres.open_source(url_for("nothing", port=free_port()), tmp_path)
    with pytest.raises(SourceError):
        source.has_rows()


# --- the other archive versions: pg_dump 9.6 to 14 (1.12 to 1.14), 16 (1.15) and 17 (1.16) --------------------------
# Only pg_dump 15 (archive 1.14) is installed here, so its archive is rewritten into the layouts the other versions
# write, field by field as their pg_backup_archiver.c WriteHead/WriteToc do: 1.12/1.13 have no table access method,
# 1.15 writes the compression as one byte, 1.16 adds the relation kind (an integer) after the access method.

class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, count: int) -> bytes:
        self.at += count
        return self.data[self.at - count:self.at]

    def integer(self) -> bytes:
        return self.take(5)  # sign and 4 bytes: pg_dump 15 here writes intSize 4

    def string(self) -> bytes:
        raw = self.integer()
        return raw + (b"" if raw[0] else self.take(int.from_bytes(raw[1:], "little")))


def as_version(archive: bytes, minor: int) -> bytes:
    """Rewrite a 1.14 archive of pg_dump 15 as archive version 1.`minor` (12 to 16)."""
    reader = _Reader(archive)
    head = bytearray(reader.take(11))
    assert head[5:7] == bytes([1, 14]) and head[8] == 4, "the installed pg_dump writes archive 1.14 with 4-byte integers"
    head[6] = minor
    out = [bytes(head)]
    compression = reader.integer()
    out.append(compression[1:2] if minor >= 15 else compression)  # 0 either way: --compress=0
    out += [reader.integer() for _ in range(7)] + [reader.string() for _ in range(3)]
    count = reader.integer()
    out.append(count)
    for _ in range(int.from_bytes(count[1:], "little")):
        out += [reader.integer(), reader.integer()] + [reader.string() for _ in range(4)]  # id, dumper, oids, tag, desc
        out += [reader.integer()] + [reader.string() for _ in range(5)]  # section, defn, drop, copy, namespace, tablespace
        tableam = reader.string()
        if minor >= 14:
            out.append(tableam)
        if minor >= 16:
            out.append(b"\x00" + ord("r").to_bytes(4, "little"))  # relkind
        out += [reader.string(), reader.string()]  # owner, WITH OIDS
        while True:
            dependency = reader.string()
            out.append(dependency)
            if dependency[0]:
                break
        out.append(reader.take(1 + archive[9]))  # the offset: flag and offSize bytes
    return b"".join(out) + archive[reader.at:]


@pytest.mark.parametrize("minor", [12, 13, 14, 15, 16])
def test_every_archive_version_pg_dump_96_to_17_writes_is_counted(cases_db: str, tmp_path: Path, minor: int) -> None:
    archive = as_version(dump(cases_db, tmp_path / "cases.dump", "--compress=0"), minor)
    rows = counted(archive, 4096)
    assert rows.version == (1, minor)
    result = rows.result()
    assert result is not None, rows.problem
    assert result["tables"] == live_counts(cases_db)
