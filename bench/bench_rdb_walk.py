"""Benchmark the RDB key walk (jobs.engines.rdb_keys) against `redis-check-rdb`, which also reads every record.

Usage: python bench/bench_rdb_walk.py [--small-keys 1000000] [--app-keys 100000] [--repeat 3] [--workdir DIR] [--keep]

Starts a redis-server on a free port in a new directory, writes `--small-keys` tiny strings (DEBUG POPULATE, the
walk's worst case: one record per ~40 bytes) and `--app-keys` app-like keys (JSON sessions with a TTL, job lists,
hashes with a few dozen fields), saves the RDB with `redis-cli --rdb`, then times, --repeat times, alternating:

  walk  = the snapshot's check as a backup runs it (RdbCheck with the key walk) over the file in 1 MiB chunks,
          in this process;
  crc   = the same check without the walk (the CRC64 alone), for the walk's own share;
  stock = `redis-check-rdb dump.rdb` (C, reads every record and counts the keys).

Prints markdown (median wall time, MB/s, keys/s, and that both counted the same keys) and writes
bench/out/rdb-walk-<UTC timestamp>.md. The work directory is deleted unless --keep.
"""

import argparse
from datetime import datetime, timezone
import json
from pathlib import Path
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from jobs.engines.rdb import RdbCheck  # noqa: E402
from tests.redis.servers import redis_server  # noqa: E402

CHUNK = 1 << 20


def fill(server, small: int, app: int) -> None:
    client = server.client(0)
    if small:
        client.execute_command("DEBUG", "POPULATE", small, "small", 20)
    rng = random.Random(7)
    pipe = server.client(1).pipeline(transaction=False)
    for i in range(app):
        pipe.set(f"session:{i}", json.dumps({"user": i, "cart": ["item"] * rng.randrange(3, 30)}), ex=86400)
        if i % 4 == 0:
            pipe.rpush(f"queue:{i}", *[f'{{"jid":"{j:016x}"}}' for j in range(rng.randrange(5, 60))])
            pipe.hset(f"user:{i}", mapping={f"field{j}": "word " * rng.randrange(1, 12) for j in range(rng.randrange(4, 40))})
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


def walk(data: bytes, count_keys: bool) -> tuple[float, dict]:
    start = time.perf_counter()
    details: dict = {}
    check = RdbCheck(None, details, count_keys=count_keys)
    view = memoryview(data)
    for offset in range(0, len(view), CHUNK):
        check.feed(view[offset:offset + CHUNK])
    check.finish()
    return time.perf_counter() - start, details


def stock(path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    out = subprocess.run(["redis-check-rdb", str(path)], capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - start, int(re.search(r"\[info\] (\d+) keys read", out)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-keys", type=int, default=1_000_000)
    parser.add_argument("--app-keys", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-rdb-walk-", dir=args.workdir))
    try:
        with redis_server(work / "server") as server:
            fill(server, args.small_keys, args.app_keys)
            rdb = work / "dump.rdb"
            subprocess.run(["redis-cli", "-p", str(server.port), "--rdb", str(rdb)], check=True, capture_output=True)
        data = rdb.read_bytes()
        times: dict[str, list[float]] = {"walk": [], "crc": [], "stock": []}
        counted = stock_keys = 0
        for _ in range(args.repeat):
            seconds, details = walk(data, True)
            times["walk"].append(seconds)
            counted = sum(details["keys"].values())
            times["crc"].append(walk(data, False)[0])
            seconds, stock_keys = stock(rdb)
            times["stock"].append(seconds)
        median = {name: statistics.median(values) for name, values in times.items()}
        size_mb = len(data) / 1e6
        lines = [f"# RDB key walk benchmark, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "",
                 f"RDB {size_mb:.1f} MB, {counted} keys ({args.small_keys} tiny strings, {args.app_keys} app-like keys "
                 f"and their lists and hashes); {args.repeat} runs each, medians", "",
                 "| | wall | MB/s | keys/s | keys counted |", "|---|---|---|---|---|"]
        for name, label, keys in (("walk", "ours: RDB check with the key walk (Python)", counted),
                                  ("crc", "ours without the walk (CRC64 only)", counted),
                                  ("stock", "stock: redis-check-rdb (C)", stock_keys)):
            seconds = median[name]
            lines.append(f"| {label} | {seconds:.2f} s | {size_mb / seconds:.0f} | {keys / seconds / 1e6:.2f}M | {keys} |")
        lines += ["", f"Ratio walk/redis-check-rdb: **{median['walk'] / median['stock']:.2f}**; the same keys counted: "
                  f"{'yes' if counted == stock_keys else 'NO'}."]
        text = "\n".join(lines) + "\n"
        print(text)
        out = BENCH / "out"
        out.mkdir(exist_ok=True)
        (out / f"rdb-walk-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.md").write_text(text)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
