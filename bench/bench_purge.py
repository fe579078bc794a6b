"""Benchmark table retention (issue 12): our batched purge against one `DELETE … WHERE created_at < cutoff`.

Usage: python bench/bench_purge.py [--rows 10000000] [--old 1000000] [--engines sqlite,postgres]
                                   [--batch-size 1000] [--pause SECONDS] [--workdir DIR] [--keep] [--pg-url URL]

Builds once per engine a table `events (id, created_at, kind, payload)` with an index on created_at: `--rows`
rows in time order, the first `--old` of them older than 30 days (SQLite: ISO 8601 text as CURRENT_TIMESTAMP writes
it, in a WAL-mode file; PostgreSQL: timestamptz, vacuumed and analyzed). Then, for each engine, on a fresh copy of
that table each time (SQLite: a file copy; PostgreSQL: CREATE DATABASE … TEMPLATE):

1. quiet: wall time of `purge()` (rule events.created_at=30d; every row checked against what the backup holds:
   SQLite the template file as the raw snapshot, PostgreSQL a snapshot exported after the copy) and of the
   single DELETE, no other writer;
2. under a writer: the same two while another process commits small transactions (SQLite:
   tests/integration/writer.py on the same file; PostgreSQL: this script with --pg-writer, inserting into events
   and bumping a counter row), reporting the p50 / p99 / max latency of the commits that overlap each run;
3. counting (what `prune --dry-run` does): `count_rows()` against `SELECT count(*) … WHERE created_at < cutoff`,
   and, for SQLite, the same count with datetime(created_at) alone (no index-usable prefilter).

Prints markdown tables and writes them to bench/out/purge-<UTC timestamp>.md. The work directory (under /tmp by
default) and the PostgreSQL databases `bw_bench_purge_*` are removed at the end unless --keep.
"""

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
import math
import os
from pathlib import Path
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from jobs.engines.pg_connect import parse_url  # noqa: E402
from jobs.engines.postgres import exported_snapshot  # noqa: E402
from jobs.purge import Held, PgSnapshot, count_rows, parse_retention_rules, purge  # noqa: E402

WRITER = ROOT / "tests" / "integration" / "writer.py"
NOW = datetime(2026, 11, 22, 2, 0, 0, tzinfo=timezone.utc)
CUTOFF = NOW - timedelta(days=30)
RULE = parse_retention_rules("events.created_at=30d")
OLD_SPAN_S = 60 * 86400  # old rows spread over the 60 days before the cutoff, new rows over the 30 days after
NEW_SPAN_S = 30 * 86400 - 60


@dataclass
class Latency:
    commits: int
    p50: float
    p99: float
    max: float


@dataclass
class Run:
    what: str
    wall: float
    deleted: int
    latency: Latency | None = None


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of `values` (p in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class Writer:
    """A writer process; `window(t0, t1)` gives the latencies of the commits overlapping [t0, t1]."""

    def __init__(self, args: list[str], out: Path) -> None:
        self.args, self.out = args, out
        self.samples: list[tuple[float, float]] = []

    def __enter__(self) -> "Writer":
        ready = Path(str(self.out) + ".ready")
        ready.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, *self.args, str(self.out)])
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the writer did not start (exit {self.proc.returncode})")
            time.sleep(0.01)
        time.sleep(0.5)  # a baseline of ordinary commits first
        return self

    def __exit__(self, *_: object) -> None:
        time.sleep(0.3)
        self.proc.send_signal(signal.SIGTERM)
        if self.proc.wait(timeout=300) != 0:
            raise RuntimeError(f"the writer failed (exit {self.proc.returncode})")
        for line in self.out.read_text().splitlines():
            at, ms = line.split()
            self.samples.append((float(at), float(ms)))

    def window(self, t0: float, t1: float) -> Latency:
        inside = [ms for at, ms in self.samples if at >= t0 and at - ms / 1000 <= t1]
        if not inside:
            return Latency(0, math.nan, math.nan, math.nan)
        return Latency(len(inside), percentile(inside, 50), percentile(inside, 99), max(inside))


def pg_writer(url: str, out: str) -> None:
    """The PostgreSQL app writer: one insert into events and one counter update per transaction, until SIGTERM."""
    import psycopg

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    samples = []
    with psycopg.connect(url) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS totals (k int PRIMARY KEY, n bigint)")
        connection.execute("INSERT INTO totals VALUES (1, 0) ON CONFLICT DO NOTHING")
        connection.commit()
        Path(out + ".ready").touch()
        while not stopping.is_set():
            began = time.perf_counter()
            connection.execute("INSERT INTO events (created_at, kind, payload) VALUES (now(), 'view', %s)", ("x" * 60,))
            connection.execute("UPDATE totals SET n = n + 1 WHERE k = 1")
            connection.commit()
            samples.append((time.time(), (time.perf_counter() - began) * 1000))
            time.sleep(0.002)
    with open(out, "w") as handle:
        handle.writelines(f"{at:.6f} {ms:.3f}\n" for at, ms in samples)


# --- SQLite --------------------------------------------------------------------------------------------------

def build_sqlite(path: Path, rows: int, old: int) -> None:
    """Write the events table in C (a recursive CTE), in time order, then switch the file to WAL mode."""
    start = int(CUTOFF.timestamp()) - OLD_SPAN_S
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, kind TEXT NOT NULL, payload TEXT)")
    fill = ("WITH RECURSIVE s(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM s WHERE i < ?) "
            "INSERT INTO events (created_at, kind, payload) "
            "SELECT datetime(? + i * ? / ?, 'unixepoch'), 'view', hex(randomblob(30)) FROM s")
    db.execute(fill, (0, old - 1, start, OLD_SPAN_S, old))
    db.execute(fill, (0, rows - old - 1, int(CUTOFF.timestamp()) + 60, NEW_SPAN_S, rows - old))
    db.execute("CREATE INDEX events_created_at ON events (created_at)")
    db.execute("PRAGMA journal_mode=WAL")
    db.close()


def sqlite_runs(template: Path, work: Path, batch_size: int, pause: float | None) -> tuple[list[Run], list[Run]]:
    url = lambda path: f"sqlite:///{path}"  # noqa: E731

    def fresh(name: str) -> Path:
        target = work / f"{name}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(str(target) + suffix).unlink(missing_ok=True)
        shutil.copyfile(template, target)
        warm(target)
        return target

    def ours(path: Path) -> int:
        # What the backup of this copy holds: the template it was copied from, as the raw snapshot would be.
        held = Held("bench", sqlite_file=template)
        [result] = purge(url(path), RULE, NOW, threading.Event(), held=held, batch_size=batch_size, pause=pause)
        assert result.error is None, result.error
        return result.deleted

    def single(path: Path) -> int:
        db = sqlite3.connect(path, timeout=600, isolation_level=None)
        try:
            return db.execute("DELETE FROM events WHERE created_at < ?", (CUTOFF.strftime("%Y-%m-%d %H:%M:%S"),)).rowcount
        finally:
            db.close()

    runs = measure({"ours (batched purge)": ours, "single DELETE": single}, fresh,
                   lambda path: Writer([str(WRITER), str(path)], work / "writer.txt"))
    path = fresh("count")
    counts = [timed("count_rows (prefilter + datetime)", lambda: count_rows(url(path), RULE[0], NOW))]
    db = sqlite3.connect(path)
    stamp = CUTOFF.strftime("%Y-%m-%d %H:%M:%S")
    counts.append(timed("count, plain created_at < cutoff", lambda: db.execute(
        "SELECT count(*) FROM events WHERE created_at < ?", (stamp,)).fetchone()[0]))
    counts.append(timed("count, datetime(created_at) < cutoff only", lambda: db.execute(
        "SELECT count(*) FROM events WHERE typeof(created_at) = 'text' AND datetime(created_at) < ?", (stamp,)).fetchone()[0]))
    db.close()
    return runs, counts


def warm(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(1 << 24):
            pass


# --- PostgreSQL ----------------------------------------------------------------------------------------------

def build_postgres(admin: str, template: str, rows: int, old: int) -> None:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{template}"')
    with psycopg.connect(_database(admin, template), autocommit=True) as connection:
        connection.execute("CREATE TABLE events (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL, "
                           "kind text NOT NULL, payload text)")
        start = CUTOFF - timedelta(seconds=OLD_SPAN_S)
        connection.execute("INSERT INTO events (created_at, kind, payload) SELECT %s + (i::bigint * %s / %s) * interval '1 second', "
                           "'view', md5(i::text) || md5((i + 1)::text) FROM generate_series(0, %s) i",
                           (start, OLD_SPAN_S, max(old, 1), old - 1))
        connection.execute("INSERT INTO events (created_at, kind, payload) SELECT %s + (i::bigint * %s / %s) * interval '1 second', "
                           "'view', md5(i::text) || md5((i + 1)::text) FROM generate_series(0, %s) i",
                           (CUTOFF + timedelta(seconds=60), NEW_SPAN_S, max(rows - old, 1), rows - old - 1))
        connection.execute("CREATE INDEX events_created_at ON events (created_at)")
        connection.execute("VACUUM ANALYZE events")


def _database(admin: str, name: str) -> str:
    return admin.rsplit("/", 1)[0] + "/" + name


def postgres_runs(admin: str, template: str, work: Path, batch_size: int,
                  pause: float | None) -> tuple[list[Run], list[Run]]:
    import psycopg

    made: list[str] = []
    helds: dict[str, Held] = {}

    def fresh(name: str) -> str:
        database = f"{template}_{name.replace(' ', '_')}"
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            connection.execute(f'CREATE DATABASE "{database}" TEMPLATE "{template}"')
        made.append(database)
        url = _database(admin, database)
        with exported_snapshot(parse_url(url)) as (_, snapshot, running):  # what a backup taken now would hold
            helds[url] = Held("bench", pg_snapshot=PgSnapshot.parse(snapshot, running))
        return url

    def ours(url: str) -> int:
        [result] = purge(url, RULE, NOW, threading.Event(), held=helds[url], batch_size=batch_size, pause=pause)
        assert result.error is None, result.error
        return result.deleted

    def single(url: str) -> int:
        with psycopg.connect(url) as connection:
            return connection.execute("DELETE FROM events WHERE created_at < %s", (CUTOFF,)).rowcount

    try:
        runs = measure({"ours (batched purge)": ours, "single DELETE": single}, fresh,
                       lambda url: Writer([__file__, "--pg-writer", url], work / "pg-writer.txt"))
        url = fresh("count")
        counts = [timed("count_rows", lambda: count_rows(url, RULE[0], NOW))]
        with psycopg.connect(url) as connection:
            counts.append(timed("count, plain created_at < cutoff", lambda: connection.execute(
                "SELECT count(*) FROM events WHERE created_at < %s", (CUTOFF,)).fetchone()[0]))
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            for database in made:
                connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return runs, counts


# --- measuring -----------------------------------------------------------------------------------------------

def measure(methods: dict[str, Callable[[object], int]], fresh: Callable[[str], object],
            writer: Callable[[object], Writer]) -> list[Run]:
    """Each method on a fresh copy, quiet and then under the writer."""
    runs = []
    for what, method in methods.items():
        target = fresh(f"quiet {what.split()[0]}")
        runs.append(timed(f"{what}, quiet", lambda method=method, target=target: method(target)))
        print(f"  {runs[-1].what}: {runs[-1].wall:.2f} s, {runs[-1].deleted} rows", flush=True)
    for what, method in methods.items():
        target = fresh(f"writer {what.split()[0]}")
        with writer(target) as running:
            began = time.time()
            run = timed(f"{what}, under a writer", lambda method=method, target=target: method(target))
            ended = time.time()
        run.latency = running.window(began, ended)
        runs.append(run)
        print(f"  {run.what}: {run.wall:.2f} s, writer p99 {run.latency.p99:.1f} ms", flush=True)
    return runs


def timed(what: str, work: Callable[[], int]) -> Run:
    began = time.perf_counter()
    value = work()
    return Run(what, time.perf_counter() - began, value)


def report(engine: str, rows: int, old: int, batch_size: int, pause: float | None, runs: list[Run],
           counts: list[Run]) -> str:
    pause_text = "default pause" if pause is None else f"pause {pause:g} s"
    lines = [f"### {engine}: {old:,} old rows of {rows:,}, batch {batch_size}, {pause_text}", "",
             "| run | wall s | rows | writer commits | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        latency = run.latency
        cells = (["-"] * 4 if latency is None else
                 [str(latency.commits), f"{latency.p50:.1f}", f"{latency.p99:.1f}", f"{latency.max:.1f}"])
        lines.append(f"| {run.what} | {run.wall:.2f} | {run.deleted:,} | " + " | ".join(cells) + " |")
    by_name = {run.what: run for run in runs}
    for condition in ("quiet", "under a writer"):
        ours, single = by_name[f"ours (batched purge), {condition}"], by_name[f"single DELETE, {condition}"]
        lines.append(f"\nwall ratio ours / single DELETE, {condition}: **{ours.wall / single.wall:.2f}**")
    lines += ["", "| dry-run count | s | rows |", "|---|---|---|"]
    lines += [f"| {run.what} | {run.wall:.3f} | {run.deleted:,} |" for run in counts]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--old", type=int, default=1_000_000)
    parser.add_argument("--engines", default="sqlite,postgres")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--pause", type=float, help="seconds between batches (default: purge()'s own choice)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
                        help="a database to connect to for CREATE DATABASE (default: the local server)")
    parser.add_argument("--pg-writer", nargs=2, metavar=("URL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pg_writer:
        pg_writer(*args.pg_writer)
        return
    if not 0 < args.old < args.rows:
        parser.error("--old must be between 0 and --rows")
    work = Path(tempfile.mkdtemp(prefix="bench-purge-", dir=args.workdir))
    sections = [f"## Table retention benchmark, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "",
                f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
                f"SQLite {sqlite3.sqlite_version}", ""]
    try:
        engines = [name.strip() for name in args.engines.split(",") if name.strip()]
        if "sqlite" in engines:
            template = work / "template.db"
            began = time.perf_counter()
            build_sqlite(template, args.rows, args.old)
            print(f"sqlite: built {template.stat().st_size >> 20} MiB in {time.perf_counter() - began:.1f} s", flush=True)
            sections.append(report("SQLite", args.rows, args.old, args.batch_size, args.pause,
                                   *sqlite_runs(template, work, args.batch_size, args.pause)))
        if "postgres" in engines:
            template = f"bw_bench_purge_{uuid.uuid4().hex[:8]}"
            began = time.perf_counter()
            try:
                build_postgres(args.pg_url, template, args.rows, args.old)
                print(f"postgres: built {template} in {time.perf_counter() - began:.1f} s", flush=True)
                sections.append(report("PostgreSQL", args.rows, args.old, args.batch_size, args.pause,
                                       *postgres_runs(args.pg_url, template, work, args.batch_size, args.pause)))
            finally:
                if not args.keep:
                    import psycopg

                    with psycopg.connect(args.pg_url, autocommit=True) as connection:
                        connection.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(sections)
    print(text)
    out = BENCH / "out"
    out.mkdir(exist_ok=True)
    (out / f"purge-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.md").write_text(text)


if __name__ == "__main__":
    main()
