"""Benchmark giving a purge's free pages back (issue 23): `reclaim_space` (incremental_vacuum in steps of
STEP_PAGES pages, each its own short write transaction) against one incremental_vacuum of every free page in one
transaction, and a full VACUUM (which the worker never runs), while another process commits small transactions.

Usage: python bench/bench_vacuum.py [--rows 100000] [--body 1000] [--workdir DIR]

Builds a WAL-mode SQLite file with auto_vacuum=INCREMENTAL and `--rows` rows of `--body` random bytes, deletes
the older half, then for each method, on a fresh copy: starts tests/integration/writer.py on the file, runs the
method, stops the writer and reports the wall time and the p50 / p99 / max latency of the writer's commits that
overlap the run. Prints a markdown table and writes it to bench/out/vacuum-<UTC timestamp>.md.
"""

import argparse
from datetime import datetime, timezone
import os
from pathlib import Path
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from jobs.purge import reclaim_space  # noqa: E402

WRITER = ROOT / "tests" / "integration" / "writer.py"


def build(path: Path, rows: int, body: int) -> int:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA auto_vacuum=INCREMENTAL")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, body BLOB)")
    db.execute("BEGIN")
    db.executemany("INSERT INTO events (body) VALUES (?)", ((os.urandom(body),) for _ in range(rows)))
    db.execute("COMMIT")
    db.execute("DELETE FROM events WHERE id <= ?", (rows // 2,))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    db.close()
    return free


def all_at_once(path: Path) -> None:
    db = sqlite3.connect(path, isolation_level=None, timeout=60)
    db.execute("BEGIN IMMEDIATE")
    for _ in range(db.execute("PRAGMA freelist_count").fetchone()[0]):
        db.execute("PRAGMA incremental_vacuum(1)").fetchall()
    db.execute("COMMIT")
    db.close()


def full_vacuum(path: Path) -> None:
    db = sqlite3.connect(path, isolation_level=None, timeout=60)
    db.execute("VACUUM")
    db.close()


def measure(template: Path, work: Path, name: str, method) -> str:
    path = work / f"{name}.db"
    shutil.copy(template, path)
    out = work / f"{name}.txt"
    writer = subprocess.Popen([sys.executable, str(WRITER), str(path), str(out), "--seconds", "600"])
    while not Path(f"{out}.ready").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    began = time.time()
    method(path)
    ended = time.time()
    time.sleep(0.5)
    writer.send_signal(signal.SIGTERM)
    writer.wait(timeout=120)
    during = sorted(float(ms) for at, ms in (line.split() for line in out.read_text().splitlines())
                    if began <= float(at) <= ended)
    if not during:
        return f"| {name} | {ended - began:.2f} s | 0 | - | - | - |"
    pick = lambda q: during[min(len(during) - 1, int(len(during) * q))]  # noqa: E731
    return (f"| {name} | {ended - began:.2f} s | {len(during)} | {pick(0.5):.1f} ms | {pick(0.99):.1f} ms | "
            f"{during[-1]:.1f} ms |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--body", type=int, default=1000)
    parser.add_argument("--workdir")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-vacuum-"))
    work.mkdir(parents=True, exist_ok=True)
    template = work / "template.db"
    free = build(template, args.rows, args.body)
    lines = [f"{free} free pages ({free * 4096 / 2**20:.0f} MiB) of {template.stat().st_size / 2**20:.0f} MiB, "
             f"{args.rows} rows of {args.body} bytes; writer: tests/integration/writer.py", "",
             "| method | wall | writer commits during | p50 | p99 | max |", "|---|---|---|---|---|---|"]
    lines.append(measure(template, work, "reclaim_space (steps of 256 pages)",
                         lambda path: reclaim_space(f"sqlite:///{path}", threading.Event())))
    lines.append(measure(template, work, "one incremental_vacuum transaction", all_at_once))
    lines.append(measure(template, work, "full VACUUM (never run by the worker)", full_vacuum))
    text = "\n".join(lines)
    print(text)
    (BENCH / "out").mkdir(exist_ok=True)
    (BENCH / "out" / f"vacuum-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.md").write_text(text + "\n")
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
