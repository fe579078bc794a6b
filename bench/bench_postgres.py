"""Benchmark our PostgreSQL backup against the shell pipelines people use (issue 9).

Usage: python bench/bench_postgres.py [--size-mib 1024[,2048...]] [--repeat 3] [--url URL] [--db NAME] [--keep]
                                      [--ours worker|engine|auto]

Builds a realistic database on the server at --url (default postgresql://postgres@127.0.0.1:5432/postgres, or
TEST_PG_HOST/TEST_PG_PORT): users, sessions, JSON events and chat messages with word-based text and the indexes
an app has, generated server-side with generate_series (no pgbench padding). With several sizes, the same
database grows from one to the next, so the numbers show whether memory stays flat as the data grows.
For each size, --repeat times in alternating order:

  ours   = `python -m worker backup --no-upload` (the default: the whole cycle as a user runs it, manifest and
           retention included); `--ours engine` drives the engine the way the pipeline does instead: pg_dump's
           stream read in 1 MiB chunks, every chunk fed to pg_restore (the check) and to multithreaded zstd -3
           with SHA-256 of the compressed bytes, to a file;
  floor  = `pg_dump -Fc -Z0 | zstd -3 -T0` (no verification at all);
  pg_dump -Fc (its default gzip compression; what most peers run);
  pg_dump -Ft | gzip (the Railway template).

Every contender uses the same pg_dump (the one our engine picks for the server) and writes to a file in the
work directory. Reported: median wall time, the ratio to the floor (target ≤ 1.05), peak RSS as the largest
single process (`ru_maxrss` from os.wait4 in a tiny launcher) and as the sum over the process tree (polled from
/proc every 50 ms), and the output size. Prints markdown and writes bench/out/postgres-<UTC timestamp>.md.
The database is dropped at the end unless --keep or --db.
"""

import argparse
from dataclasses import dataclass
from datetime import datetime, timezone
import hashlib
import json
import os
from pathlib import Path
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from bench_backup import compile_worker, fmt_s, run_child, tool_version  # noqa: E402

MIB = 1 << 20
POLL_S = 0.05
DEFAULT_URL = f"postgresql://postgres@{os.environ.get('TEST_PG_HOST', '127.0.0.1')}:{os.environ.get('TEST_PG_PORT', '5432')}/postgres"


# --- the database ----------------------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL, created_at timestamptz NOT NULL,
                    settings jsonb NOT NULL);
CREATE TABLE sessions (id bigserial PRIMARY KEY, user_id int NOT NULL REFERENCES users(id), started_at timestamptz NOT NULL,
                       ended_at timestamptz, ip inet, user_agent text, data jsonb);
CREATE INDEX sessions_user_time ON sessions (user_id, started_at);
CREATE TABLE events (id bigserial PRIMARY KEY, session_id bigint NOT NULL, user_id int NOT NULL, kind text NOT NULL,
                     created_at timestamptz NOT NULL, payload jsonb NOT NULL);
CREATE INDEX events_user_time ON events (user_id, created_at);
CREATE INDEX events_kind_time ON events (kind, created_at);
CREATE TABLE messages (id bigserial PRIMARY KEY, conversation_id bigint NOT NULL, user_id int NOT NULL, role text NOT NULL,
                       created_at timestamptz NOT NULL, body text NOT NULL, tokens int NOT NULL, metadata jsonb);
CREATE INDEX messages_conversation_time ON messages (conversation_id, created_at);
"""
USERS = 20_000
WORDS = ("the a to of and in is it you that for on was with as have be at this not are but from or by one had all we can "
         "her there been if more when will would who so no out up into time about than them only backup server query "
         "latency cache request deploy volume config session token retry queue worker user model audio file upload "
         "download invoice payment refund order cart checkout price discount coupon thanks please help error issue works "
         "great sorry maybe tomorrow today meeting schedule report draft review merge branch commit build test release "
         "version update install restart timeout network").split()
# One session's words: a temporary SQL function (not part of the dump) picks `n` random words.
SENTENCE = ("CREATE FUNCTION pg_temp.sentence(n int) RETURNS text LANGUAGE sql AS $$ SELECT initcap(string_agg("
            "w[1 + floor(random() * array_length(w, 1))::int], ' ')) FROM (SELECT {}::text[] AS w) c, generate_series(1, n) $$")
BATCH = """
INSERT INTO sessions (user_id, started_at, ended_at, ip, user_agent, data)
  SELECT 1 + floor(random() * {users})::int, t, t + floor(random() * 3600)::int * interval '1 second',
         ('10.' || floor(random() * 255)::int || '.' || floor(random() * 255)::int || '.' || floor(random() * 255)::int)::inet,
         (ARRAY['Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0', 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_5) Safari/604.1',
                'Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0'])[1 + floor(random() * 3)::int],
         jsonb_build_object('locale', (ARRAY['en-US', 'de-DE', 'pl-PL', 'fr-FR'])[1 + floor(random() * 4)::int],
                            'screen', jsonb_build_object('w', 320 + floor(random() * 1600)::int, 'h', 480 + floor(random() * 900)::int))
  FROM (SELECT now() - random() * interval '365 days' AS t FROM generate_series(1, {sessions})) s;
INSERT INTO events (session_id, user_id, kind, created_at, payload)
  SELECT currval('sessions_id_seq') - floor(random() * {sessions})::int, 1 + floor(random() * {users})::int, k, t,
         jsonb_build_object('page', '/' || (ARRAY['home', 'search', 'product', 'cart', 'checkout', 'account', 'help'])[1 + floor(random() * 7)::int]
                                    || '/' || floor(random() * 5000)::int,
                            'duration_ms', floor(random() * 8000)::int,
                            'status', (ARRAY[200, 200, 200, 200, 201, 204, 301, 400, 404, 500])[1 + floor(random() * 10)::int],
                            'ab', jsonb_build_array('exp' || floor(random() * 20)::int, random() < 0.5),
                            'query', CASE WHEN k = 'search' THEN pg_temp.sentence(1 + floor(random() * 5)::int) END)
  FROM (SELECT (ARRAY['page_view', 'click', 'login', 'logout', 'purchase', 'search', 'upload', 'error', 'api_call', 'share'])[1 + floor(random() * 10)::int] AS k,
               now() - random() * interval '365 days' AS t
        FROM generate_series(1, {events})) e;
INSERT INTO messages (conversation_id, user_id, role, created_at, body, tokens, metadata)
  SELECT 1 + floor(random() * {conversations})::int, 1 + floor(random() * {users})::int,
         (ARRAY['user', 'assistant', 'user', 'system'])[1 + floor(random() * 4)::int], now() - random() * interval '365 days',
         pg_temp.sentence(8 + floor(random() * 90)::int), floor(random() * 800)::int,
         CASE WHEN random() < 0.3 THEN jsonb_build_object('model', 'gpt-x', 'latency_ms', floor(random() * 3000)::int) END
  FROM generate_series(1, {messages});
"""
BATCH_SIZES = {"sessions": 2_000, "events": 12_000, "messages": 6_000}  # about 8 MiB of table and index per batch


def connect(url: str):
    import psycopg

    return psycopg.connect(url, autocommit=True)


def db_url(base: str, dbname: str) -> str:
    """Return `base` pointed at the database `dbname`: still a postgresql:// URL when `base` is one (the worker's
    BACKUP_SOURCE must be a URL), else a key=value conninfo."""
    from urllib.parse import quote, urlsplit, urlunsplit

    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    if "://" in base:
        return urlunsplit(urlsplit(base)._replace(path="/" + quote(dbname, safe="")))
    return make_conninfo(**{**conninfo_to_dict(base), "dbname": dbname})


def create_database(base: str, dbname: str) -> None:
    from psycopg import sql

    with connect(base) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    with connect(db_url(base, dbname)) as connection:
        connection.execute(SCHEMA)
        connection.execute("INSERT INTO users SELECT g, 'user' || g || '@example.com', 'User ' || g, "
                           "now() - g * interval '1 hour', jsonb_build_object('theme', 'dark', 'notify', g % 2 = 0) "
                           f"FROM generate_series(1, {USERS}) g")


def grow(url: str, size_mib: int) -> float:
    """Add batches of sessions, events and messages until the database is at least `size_mib`; return seconds taken."""
    from psycopg import sql

    started = time.perf_counter()
    with connect(url) as connection:
        connection.execute(sql.SQL(SENTENCE).format(sql.Literal(WORDS)))
        while database_size(connection) < size_mib * MIB:
            connection.execute(BATCH.format(users=USERS, conversations=USERS * 5, **BATCH_SIZES))
        connection.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


def database_size(connection) -> int:
    return connection.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def db_facts(url: str) -> str:
    with connect(url) as connection:
        size = database_size(connection)
        counts = {t: connection.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("sessions", "events", "messages")}
        version = connection.execute("SHOW server_version").fetchone()[0]
    return f"{size / MIB:.0f} MiB on PostgreSQL {version}; rows: " + ", ".join(f"{t} {n:,}" for t, n in counts.items())


# --- ours with --ours engine: the engine driven like the pipeline, without the worker around it ------------------

def drive(url: str, out: Path) -> None:
    """Back up `url` into `out` the way jobs/pipeline.py does: stream, check, zstd -3 multithreaded, SHA-256."""
    import zstandard

    from jobs.engines import postgres

    source = postgres.open_source(url, Path.cwd())
    cancel = threading.Event()
    params = zstandard.ZstdCompressionParameters.from_level(3, threads=-1, job_size=2 * MIB, write_checksum=True)
    digest = hashlib.sha256()

    class Hashing:
        def __init__(self, target) -> None:
            self.target = target

        def write(self, data: bytes) -> int:
            digest.update(data)
            return self.target.write(data)

        def flush(self) -> None:
            self.target.flush()

    workdir = Path(tempfile.mkdtemp(prefix=".tmp-bench-", dir=out.parent))
    try:
        with out.open("wb") as handle, source.snapshot(workdir, cancel) as snap:
            try:
                with zstandard.ZstdCompressor(compression_params=params).stream_writer(Hashing(handle), closefd=False) as zst:
                    while chunk := snap.stream.read(MIB):
                        snap.check.feed(chunk)
                        zst.write(chunk)
                passed = snap.check.finish()
            finally:
                snap.check.close()
            os.fsync(handle.fileno())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"verified": passed, "sha256": digest.hexdigest(), "versions": source.versions()}))


def ours_mode(url: str) -> str:
    """Return "worker" if `python -m worker` takes postgresql:// sources (it does), else "engine"."""
    from jobs import engines

    try:
        engines.open_source(url, Path.cwd())
    except ValueError:
        return "engine"
    return "worker"


# --- measuring ---------------------------------------------------------------------------------------------------

class TreeRss:
    """Poll the summed RSS of a process tree (descendants of this process) every 50 ms in a thread; keep the peak."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="tree-rss", daemon=True)

    @staticmethod
    def _sample() -> int:
        parents: dict[int, int] = {}
        rss: dict[int, int] = {}
        page = os.sysconf("SC_PAGE_SIZE")
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
                rss[int(entry.name)] = int(fields[21]) * page
            except (OSError, IndexError, ValueError):
                continue
        me, total = os.getpid(), 0
        for pid in rss:
            ancestor = parents.get(pid)
            while ancestor and ancestor != me:
                ancestor = parents.get(ancestor)
            if ancestor == me:
                total += rss[pid]
        return total

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> "TreeRss":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Result:
    wall: float
    rss_kib: int
    tree_rss: int
    size: int


def measure(name: str, args: list[str], out: Path, logs: Path, env: dict[str, str]) -> Result:
    with TreeRss() as tree:
        run = run_child(args, logs / f"{name}.log", env=env, cwd=ROOT)
    if run.rc != 0 or not out.exists():
        sys.exit(f"{name} failed (exit {run.rc}): {(logs / f'{name}.log').read_text()[-2000:]}")
    size = sum(f.stat().st_size for f in out.rglob("*.zst")) if out.is_dir() else out.stat().st_size
    return Result(run.wall, run.maxrss_kib, tree.peak, size)


def contenders(url: str, mode: str, work: Path) -> dict[str, tuple[list[str], Path, dict[str, str]]]:
    """Return name → (command, output path, environment) for every contender; outputs are removed after each run."""
    from jobs.engines import postgres

    source = postgres.open_source(url, ROOT)
    tools = source.tools()
    conn = source.conn
    env = conn.env()
    dbname = f"--dbname={conn.conninfo()}"
    dump = str(tools.pg_dump)
    if mode == "worker":
        backups = work / "ours-backups"
        worker_env = {k: v for k, v in env.items() if not k.startswith(("BACKUP_", "S3_", "CLEANUP_", "DATABASE_URL"))}
        worker_env.update(BACKUP_SOURCE=url, BACKUP_DIR=str(backups), BACKUP_COMPRESSION_LEVEL="3",
                          PG_BIN_DIR=str(tools.pg_dump.parent))
        ours = ([sys.executable, "-m", "worker", "backup", "--no-upload"], backups, worker_env)
    else:
        ours = ([sys.executable, str(Path(__file__).resolve()), "--drive", url, str(work / "ours.zst")], work / "ours.zst",
                {**env, "PG_BIN_DIR": str(tools.pg_dump.parent)})
    return {
        "ours": ours,
        "floor": (["bash", "-o", "pipefail", "-c", '"$0" -Fc -Z0 "$1" | zstd -3 -T0 -q -o "$2"', dump, dbname, str(work / "floor.zst")],
                  work / "floor.zst", env),
        "pg_dump -Fc": ([dump, "-Fc", dbname, "-f", str(work / "default.dump")], work / "default.dump", env),
        "pg_dump -Ft | gzip": (["bash", "-o", "pipefail", "-c", '"$0" -Ft "$1" | gzip > "$2"', dump, dbname, str(work / "tar.gz")],
                               work / "tar.gz", env),
    }


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# --- main --------------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", default="1024", help="one size or several, comma-separated (the database grows)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--url", default=os.environ.get("BENCH_PG_URL", DEFAULT_URL), help="a database on the server to use for setup")
    parser.add_argument("--db", help="use this existing database (it is grown to the size if smaller, never dropped)")
    parser.add_argument("--keep", action="store_true", help="keep the built database")
    parser.add_argument("--ours", choices=("worker", "engine", "auto"), default="worker",
                        help="worker: `python -m worker backup` (default); engine: the engine driven like the pipeline")
    parser.add_argument("--drive", nargs=2, metavar=("URL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(args.drive[0], Path(args.drive[1]))
        return

    for tool in ("zstd", "gzip", "bash"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install zstd gzip bash)")
    sizes = sorted(int(size) for size in args.size_mib.split(","))
    dbname = args.db or f"bw_bench_{uuid.uuid4().hex[:8]}"
    url = db_url(args.url, dbname)
    work = Path(tempfile.mkdtemp(prefix="bench-postgres-", dir="/tmp"))
    logs = work / "logs"
    logs.mkdir()
    began = time.perf_counter()
    created = False
    try:
        if not args.db:
            create_database(args.url, dbname)
            created = True
        mode = ours_mode(url) if args.ours == "auto" else args.ours
        compile_worker()
        sections: list[str] = []
        for size in sizes:
            print(f"growing {dbname} to {size} MiB ...", flush=True)
            built = grow(url, size)
            facts = db_facts(url)
            print(f"  {facts} (built in {built:.0f} s)", flush=True)
            commands = contenders(url, mode, work)
            names = list(commands)
            results: dict[str, list[Result]] = {name: [] for name in names}
            for rep in range(args.repeat):
                for name in (names if rep % 2 == 0 else names[::-1]):
                    command, out, env = commands[name]
                    result = measure(name, command, out, logs, env)
                    remove(out)
                    results[name].append(result)
                    print(f"  {name:20} {result.wall:7.2f} s  rss {result.rss_kib / 1024:5.0f} MiB  tree {result.tree_rss / MIB:5.0f} MiB"
                          f"  out {result.size / MIB:6.1f} MiB", flush=True)
            sections.append(report_section(size, facts, built, mode, results))
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        from jobs.engines import postgres

        versions = postgres.open_source(url, ROOT).tools()
        header = [
            f"# PostgreSQL backup benchmark {stamp}",
            "",
            f"- machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, pg_dump {versions.version} "
            f"({versions.pg_dump}), {tool_version(['zstd', '--version']).strip('* ')}, {tool_version(['gzip', '--version'])}",
            f"- {args.repeat} runs each, alternating order; median (each run). Ours: "
            + ("`python -m worker backup --no-upload`" if mode == "worker" else
               "the engine driven like the pipeline (stream → pg_restore check + zstd -3 multithreaded + SHA-256 → file)"),
            f"- command: `python bench/bench_postgres.py --size-mib {args.size_mib} --repeat {args.repeat}`",
        ]
        report = "\n".join(header + sections + ["", f"Total benchmark time: {time.perf_counter() - began:.0f} s."]) + "\n"
        print()
        print(report)
        out_dir = BENCH / "out"
        out_dir.mkdir(exist_ok=True)
        path = out_dir / f"postgres-{stamp}.md"
        path.write_text(report)
        print(f"written to {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if created and not args.keep:
            from psycopg import sql

            with connect(args.url) as connection:
                connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
        elif created:
            print(f"kept the database {dbname}")


def report_section(size: int, facts: str, built: float, mode: str, results: dict[str, list[Result]]) -> str:
    floor = statistics.median(r.wall for r in results["floor"])
    ours_rss = max(r.rss_kib for r in results["ours"]) * 1024 / 1e6
    ours_tree = max(r.tree_rss for r in results["ours"]) / 1e6
    ratio = statistics.median(r.wall for r in results["ours"]) / floor

    def verdict(ok: bool) -> str:
        return "pass" if ok else "**FAIL**"

    lines = [
        "",
        f"## {size} MiB: {facts} (built in {built:.0f} s)",
        "",
        "| | wall time | ratio to floor | peak RSS, largest process | peak RSS, process tree | output |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        wall = statistics.median(r.wall for r in runs)
        lines.append(f"| {name.replace('|', chr(92) + '|')} | {fmt_s([r.wall for r in runs])} | {wall / floor:.2f} | "
                     f"{max(r.rss_kib for r in runs) * 1024 / 1e6:.0f} MB | {max(r.tree_rss for r in runs) / 1e6:.0f} MB | "
                     f"{statistics.median(r.size for r in runs) / MIB:.1f} MiB |")
    lines += [
        "",
        f"Ours verifies every block (pg_restore reads the whole archive) and the floor verifies nothing. "
        f"Ratio ours/floor **{ratio:.2f}** (target ≤ 1.05: {verdict(ratio <= 1.05)}); our peak RSS {ours_rss:.0f} MB "
        f"largest process, {ours_tree:.0f} MB whole tree (target < 150 MB: {verdict(ours_rss < 150)}).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
