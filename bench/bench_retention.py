"""Benchmark retention planning with tiers (issue 21): a simulated year of `*/15` backups, 35,040 manifests.

Usage: python bench/bench_retention.py [--days 365] [--every-minutes 15] [--workdir DIR] [--keep]

1. The plan alone (`jobs.retention.plan`, the pure function): backups as `list_backups` returns them, for a
   quarter, half and a whole year of the schedule, with every tier set (newest 3, hourly 24, daily 7, weekly 4,
   monthly 12, yearly 1, in Europe/Berlin): wall time (first run, when each artifact name is taken apart, and the
   best of 5 after), Python's peak allocation during the plan
   (tracemalloc), and the process's RSS before and after 20 plans in a row (flat: nothing accumulates).
2. From the disk, what `prune --dry-run` does before any proof: a directory of 35,040 real manifests (each beside
   a hard link of one real artifact), listed and planned (`pipeline.plan_retention`, which then re-hashes the
   backups its deletions rely on), against `find DIR -name '*.json' -mmin +10080` (the stock listing a user's
   cron script would run, which knows no tiers), same run.

No database server is needed: one small SQLite file is backed up once, with the worker's own pipeline, to get a
real artifact and manifest. Prints a markdown table and writes it to bench/out/retention-<UTC timestamp>.md.
"""

import argparse
from datetime import datetime, timedelta, timezone
import json
import os
from pathlib import Path
import platform
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs import pipeline, retention  # noqa: E402
from jobs.artifacts import BackupSet  # noqa: E402
from jobs.backups import from_manifest  # noqa: E402
from jobs.destinations.local import LocalDestination  # noqa: E402
from jobs.engines.sqlite import SqliteSource  # noqa: E402
from jobs.intact import IntactCache  # noqa: E402
from jobs.tiers import Tiers  # noqa: E402

POLICY = retention.Policy(0, 3, Tiers(hourly=24, daily=7, weekly=4, monthly=12, yearly=1), ZoneInfo("Europe/Berlin"))


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def one_real_backup(workdir: Path) -> tuple[Path, dict]:
    """Back up a small SQLite file with the worker's pipeline; return its artifact and manifest."""
    db = workdir / "app.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, body TEXT)")
        connection.executemany("INSERT INTO messages (body) VALUES (?)", [(f"message {i}",) for i in range(1000)])
    settings = pipeline.BackupSettings(workdir / "seed", 3, POLICY)
    manifest = pipeline.take_backup(SqliteSource(db), settings, threading.Event())
    return workdir / "seed" / manifest["artifact"], manifest


def schedule(days: int, every: int, end: datetime) -> list[datetime]:
    step = timedelta(minutes=every)
    count = days * 24 * 60 // every
    return [end - step * (count - 1 - i) for i in range(count)]


def manifests_for(template: dict, times: list[datetime]) -> list[tuple[str, dict]]:
    found = []
    for when in times:
        artifact = f"app-{when:%Y%m%dT%H%M%SZ}.sqlite.zst"
        found.append((artifact, {**template, "id": artifact.removesuffix(".zst"), "artifact": artifact,
                                 "created_at": when.strftime("%Y-%m-%dT%H:%M:%SZ")}))
    return found


def bench_plan(template: dict, times: list[datetime], now: datetime) -> dict:
    """Time and measure the pure plan over backups built as list_backups builds them."""
    def fresh():
        return [from_manifest(artifact, manifest) for artifact, manifest in manifests_for(template, times)]

    backups = fresh()
    started = time.perf_counter()
    first = retention.plan(backups, POLICY, now)
    cold = time.perf_counter() - started
    warm = []
    for _ in range(5):
        started = time.perf_counter()
        retention.plan(backups, POLICY, now)
        warm.append(time.perf_counter() - started)
    tracemalloc.start()
    retention.plan(backups, POLICY, now)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    before = rss_mib()
    for _ in range(20):
        retention.plan(backups, POLICY, now)
    after = rss_mib()
    return {"backups": len(backups), "kept": len(first.keep), "cold_s": cold, "warm_s": min(warm),
            "peak_mib": peak / 2**20, "rss_before": before, "rss_after": after}


def bench_disk(workdir: Path, artifact: Path, template: dict, times: list[datetime], now: datetime) -> dict:
    directory = workdir / "backups"
    directory.mkdir()
    for name, manifest in manifests_for(template, times):
        os.link(artifact, directory / name)
        (directory / f"{name}.json").write_text(json.dumps(manifest))
    old = time.time() - 7 * 86400
    for path in directory.iterdir():  # mtimes as the schedule would have left them (for find)
        stamp = datetime.strptime(path.name.split("-")[1][:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
        os.utime(path, (stamp, stamp))
    before = rss_mib()
    started = time.perf_counter()
    result = pipeline.plan_retention(LocalDestination(directory), POLICY, now, BackupSet("app", "sqlite"),
                                     cache=IntactCache(None, now))
    ours = time.perf_counter() - started
    grown = rss_mib() - before
    started = time.perf_counter()
    found = subprocess.run(["find", str(directory), "-name", "*.json", "-mmin", f"+{int((time.time() - old) // 60)}"],
                           capture_output=True, text=True, check=True).stdout.split()
    stock = time.perf_counter() - started
    return {"ours_s": ours, "grown_mib": grown, "kept": len(result.keep), "proven": len(result.slots), "find_s": stock, "find_old": len(found)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--every-minutes", type=int, default=15)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bw-bench-retention-", dir=args.workdir))
    try:
        artifact, template = one_real_backup(workdir)
        now = datetime.now(timezone.utc).replace(microsecond=0)
        end = now - timedelta(minutes=1)
        rows = []
        for days in (args.days // 4, args.days // 2, args.days):
            rows.append(bench_plan(template, schedule(days, args.every_minutes, end), now))
        disk = bench_disk(workdir, artifact, template, schedule(args.days, args.every_minutes, end), now)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    lines = [f"Retention planning, {platform.python_implementation()} {platform.python_version()}, "
             f"{os.cpu_count()} CPUs, policy: {POLICY.describe()}", "",
             "| backups (manifests) | kept | plan, first run | plan, best of 5 | peak allocation | RSS before → after 20 plans |",
             "|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['backups']:,} | {row['kept']} | {row['cold_s']:.3f} s | {row['warm_s']:.3f} s | "
                     f"{row['peak_mib']:.1f} MiB | {row['rss_before']:.0f} → {row['rss_after']:.0f} MiB |")
    lines += ["", "| from the disk, 35,040 manifests | time | result |", "|---|---:|---|",
              f"| list + plan + prove (`pipeline.plan_retention`) | {disk['ours_s']:.2f} s | keeps {disk['kept']}, "
              f"re-hashes {disk['proven']}; RSS +{disk['grown_mib']:.0f} MiB (the listed manifests) |",
              f"| `find -name '*.json' -mmin +10080` (no tiers) | {disk['find_s']:.2f} s | {disk['find_old']} files older than 7 days |",
              "", f"max RSS of the whole run: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"]
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / f"retention-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
