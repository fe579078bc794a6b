"""Benchmark a restore drill (issue 22) against the same steps done by hand, from a moto bucket on loopback.

Usage: python bench/bench_drill.py [--size-mib 1024] [--repeat 3] [--engines sqlite,postgres] [--url URL]

For each engine a database of about --size-mib is built (SQLite: bench/make_db.py's app database; PostgreSQL:
bench/bench_postgres.py's, on the server at --url) and backed up once into the bucket. Then, --repeat times in
alternating order, on an empty volume each time:

  ours    = `python -m worker drill` (download, SHA-256, decompression, the engine's check, the restore into a
            scratch target, exact row counts compared with the manifest, the scratch target removed);
  by hand = boto3 `download_file`, `sha256sum`, `zstd -d`, then SQLite: `sqlite3 … "PRAGMA integrity_check"`;
            PostgreSQL: `createdb`, `pg_restore --single-transaction`, `dropdb` (no row counts: a person would not
            count every table).

Reported: median wall time, the ratio (target ≤ 1.1) and the peak RSS of the process tree (polled from /proc).
Prints markdown and writes bench/out/drill-<UTC timestamp>.md.
"""

import argparse
from datetime import datetime, timezone
import os
from pathlib import Path
import shutil
import statistics
import sys
import tempfile
import uuid

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from bench_backup import compile_worker, fmt_s, run_child  # noqa: E402
from bench_postgres import DEFAULT_URL, TreeRss, connect, create_database, db_url, grow  # noqa: E402
from bench_s3 import BUCKET, CREDENTIALS, REGION, free_port, start_moto  # noqa: E402
import make_db  # noqa: E402

MIB = 1 << 20
PREFIX = "drill"
DOWNLOAD = ("import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1], region_name=sys.argv[2])"
            ".download_file(sys.argv[3], sys.argv[4], sys.argv[5])")


class RunRss(TreeRss):
    """TreeRss without the moto server's process (a child of this process too): the peak of the measured run."""

    def __init__(self, exclude: int) -> None:
        super().__init__()
        self.exclude = exclude

    def _sample(self) -> int:  # type: ignore[override]
        parents: dict[int, int] = {}
        rss: dict[int, int] = {}
        page = os.sysconf("SC_PAGE_SIZE")
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/stat", "rb") as stat:
                        fields = stat.read().rsplit(b")", 1)[1].split()
                    parents[int(entry.name)], rss[int(entry.name)] = int(fields[1]), int(fields[21]) * page
                except (OSError, IndexError, ValueError):
                    continue
        total = 0
        for pid in rss:
            ancestor = pid
            while ancestor and ancestor not in (os.getpid(), self.exclude):
                ancestor = parents.get(ancestor, 0)
            total += rss[pid] if ancestor == os.getpid() and pid != os.getpid() else 0
        return total


def worker_env(base: dict[str, str], source: str, backups: Path, endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith(("BACKUP_", "S3_", "DATABASE_URL", "DRILL_"))}
    env.update(CREDENTIALS, BACKUP_SOURCE=source, BACKUP_DIR=str(backups), S3_BUCKET=BUCKET, S3_PREFIX=PREFIX,
               S3_ENDPOINT_URL=endpoint, S3_REGION=REGION, BACKUP_COMPRESSION_LEVEL="3",
               CATALOG_URL=f"sqlite:///{backups.parent / 'catalog.db'}", PYTHONPATH=str(ROOT))
    return env


def by_hand(kind: str, artifact: str, endpoint: str, work: Path, url: str | None) -> list[str]:
    """Return the shell steps a person runs to drill `artifact` by hand, as one bash command line."""
    raw = work / "raw"
    steps = [f'"{sys.executable}" -c "$DOWNLOAD" {endpoint} {REGION} {BUCKET} {PREFIX}/{artifact} {work / artifact}',
             f"sha256sum {work / artifact} > /dev/null", f"zstd -d -q -T0 {work / artifact} -o {raw}", f"rm {work / artifact}"]
    if kind == "sqlite":
        steps.append(f'test "$(sqlite3 {raw} "PRAGMA integrity_check")" = ok')
    else:
        scratch = f"bench_hand_{uuid.uuid4().hex[:8]}"
        server = db_url(url, "postgres")
        steps += [f"psql -q -d '{server}' -c 'CREATE DATABASE {scratch} TEMPLATE template0'",
                  f"pg_restore --no-owner --no-acl --exit-on-error --single-transaction -d '{db_url(url, scratch)}' {raw}",
                  f"psql -q -d '{server}' -c 'DROP DATABASE {scratch}'"]
    steps.append(f"rm {raw}")
    return ["bash", "-e", "-o", "pipefail", "-c", " && ".join(steps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--engines", default="sqlite,postgres")
    parser.add_argument("--url", default=os.environ.get("BENCH_PG_URL", DEFAULT_URL))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-drill-", dir="/tmp"))
    logs = work / "logs"
    logs.mkdir()
    port = free_port()
    moto = start_moto(port, logs / "moto.log")
    endpoint = f"http://127.0.0.1:{port}"
    dbname = f"bw_bench_{uuid.uuid4().hex[:8]}"
    base = {**os.environ, **CREDENTIALS, "DOWNLOAD": DOWNLOAD}
    sections = []
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name=REGION, **{k.lower(): v for k, v in CREDENTIALS.items()
                                                                           if k != "AWS_DEFAULT_REGION"}).create_bucket(Bucket=BUCKET)
        compile_worker()
        for kind in args.engines.split(","):
            if kind == "sqlite":
                database = work / "app.db"
                make_db.build(database, args.size_mib)
                source = f"sqlite:///{database}"
            else:
                create_database(args.url, dbname)
                grow(db_url(args.url, dbname), args.size_mib)
                source = db_url(args.url, dbname)
            backups = work / f"{kind}-backups"
            env = worker_env(base, source, backups, endpoint)
            made = run_child([sys.executable, "-m", "worker", "backup"], logs / f"{kind}-backup.log", env=env, cwd=ROOT)
            if made.rc != 0:
                sys.exit(f"the {kind} backup failed: {(logs / f'{kind}-backup.log').read_text()[-2000:]}")
            artifact = next(backups.glob("*.zst")).name
            artifact_mib = sum(path.stat().st_size for path in backups.glob("*.zst")) / MIB
            commands = {"ours": [sys.executable, "-m", "worker", "drill"],
                        "by hand": by_hand("sqlite" if kind == "sqlite" else "pgdump", artifact, endpoint, work, args.url)}
            results: dict[str, list[tuple[float, int]]] = {name: [] for name in commands}
            for rep in range(args.repeat):
                for name in (list(commands) if rep % 2 == 0 else list(commands)[::-1]):
                    shutil.rmtree(backups, ignore_errors=True)  # an empty volume
                    with RunRss(moto.pid) as tree:
                        run = run_child(commands[name], logs / f"{kind}-{name}.log", env=env, cwd=ROOT)
                    if run.rc != 0:
                        sys.exit(f"{kind} {name} failed: {(logs / f'{kind}-{name}.log').read_text()[-2000:]}")
                    results[name].append((run.wall, tree.peak))
                    print(f"  {kind:8} {name:8} {run.wall:7.2f} s  tree {tree.peak / MIB:5.0f} MiB", flush=True)
            ours, hand = (statistics.median(wall for wall, _ in results[name]) for name in ("ours", "by hand"))
            sections += [f"\n## {kind}, {args.size_mib} MiB database ({artifact_mib:.0f} MiB artifact)\n",
                         "| | ours (`python -m worker drill`) | by hand | ratio (target ≤ 1.1) |", "|---|---|---|---|",
                         f"| wall time | {fmt_s([w for w, _ in results['ours']])} | {fmt_s([w for w, _ in results['by hand']])} "
                         f"| **{ours / hand:.2f}** |",
                         f"| peak RSS, process tree | {max(p for _, p in results['ours']) / MIB:.0f} MiB "
                         f"| {max(p for _, p in results['by hand']) / MIB:.0f} MiB | |"]
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        report = "\n".join([f"# Drill benchmark {stamp}", "", f"- {os.cpu_count()} CPUs; {args.repeat} runs each, "
                            f"alternating; `python bench/bench_drill.py --size-mib {args.size_mib} --repeat {args.repeat}`",
                            *sections]) + "\n"
        print(report)
        (BENCH / "out").mkdir(exist_ok=True)
        (BENCH / "out" / f"drill-{stamp}.md").write_text(report)
    finally:
        moto.kill()
        moto.wait()
        shutil.rmtree(work, ignore_errors=True)
        if "postgres" in args.engines:
            from psycopg import sql

            with connect(args.url) as connection:
                connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


if __name__ == "__main__":
    main()
