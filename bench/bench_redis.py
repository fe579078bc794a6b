"""Benchmark our Redis snapshot path against `redis-cli --rdb dump.rdb && zstd -3 -T0` (issue 10).

Usage: python bench/bench_redis.py [--size-mib 1024] [--repeat 3] [--workdir DIR] [--keep] [--diskless yes|no]

Starts a dedicated redis-server on a free port in a new directory (no persistence, repl-diskless-sync as asked,
repl-diskless-sync-delay 0 so neither contender waits for other replicas), loads about --size-mib of app-like
data through `redis-cli --pipe` (JSON session strings ~45%, Sidekiq-style job lists ~20%, hashes ~20%, random
tokens ~15%, some with TTLs, over two databases), then times, --repeat times in alternating order:

  ours  = `python -m worker backup --no-upload` with BACKUP_SOURCE=redis://127.0.0.1:PORT and BACKUP_COMPRESSION_LEVEL=3
          into a fresh BACKUP_DIR: the whole cycle (snapshot over SYNC, the RDB check and key walk fed every chunk,
          multithreaded zstd, SHA-256, manifest, publish, retention), as a user runs it;
  stock = `redis-cli -p PORT --rdb dump.rdb && zstd -3 -T0 -q dump.rdb -o dump.rdb.zst`.

Reports median wall time, the ratio ours/stock (target <= 1.1 at 1 GiB), peak RSS of each (ru_maxrss via
os.wait4 in a tiny launcher, the largest process of the tree), raw and compressed sizes. Prints markdown and
writes bench/out/redis-<UTC timestamp>.md. The work directory is deleted unless --keep.
"""

import argparse
from datetime import datetime, timezone
import json
import os
from pathlib import Path
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from bench_backup import Run, compile_worker, run_child  # noqa: E402

MIB = 1 << 20


# --- the dataset --------------------------------------------------------------------------------------------

def resp(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out += [b"$%d\r\n" % len(arg), arg, b"\r\n"]
    return b"".join(out)


def commands(size: int, seed: int = 7):
    """Yield RESP commands writing about `size` bytes of app-like values."""
    rng = random.Random(seed)
    words = [w.encode() for w in "alpha beta gamma delta user session cart item price queue job retry ok error paid".split()]
    written, n = 0, 0
    db = 0
    while written < size:
        if n % 50_000 == 0:
            db = 1 - db if n else 0
            yield resp(b"SELECT", str(db).encode())
        n += 1
        pick = rng.random()
        if pick < 0.45:
            value = json.dumps({"user": rng.randrange(10**6), "cart": [rng.choice(words).decode() for _ in range(rng.randrange(3, 30))],
                                "ts": 1_790_000_000 + n, "ok": rng.random() < 0.9}).encode()
            args = [b"SET", b"session:%d" % n, value] + ([b"EX", b"86400"] if n % 3 == 0 else [])
            yield resp(*args)
        elif pick < 0.65:
            items = [b'{"jid":"%016x","class":"%s","args":[%d]}' % (rng.getrandbits(64), rng.choice(words), rng.randrange(10**6))
                     for _ in range(rng.randrange(5, 60))]
            value = b"".join(items)
            yield resp(b"RPUSH", b"queue:%d" % (n % 5000), *items)
        elif pick < 0.85:
            fields = []
            for i in range(rng.randrange(4, 40)):
                fields += [b"field%d" % i, b" ".join(rng.choice(words) for _ in range(rng.randrange(1, 12)))]
            value = b"".join(fields)
            yield resp(b"HSET", b"user:%d" % n, *fields)
        else:
            value = rng.randbytes(rng.randrange(32, 2048))
            yield resp(b"SET", b"token:%d" % n, value)
        written += len(value) + 16


def load(port: int, size: int) -> None:
    """Write the dataset through `redis-cli --pipe`."""
    pipe = subprocess.Popen(["redis-cli", "-p", str(port), "--pipe"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    batch: list[bytes] = []
    for command in commands(size):
        batch.append(command)
        if len(batch) >= 2000:
            pipe.stdin.write(b"".join(batch))
            batch.clear()
    pipe.stdin.write(b"".join(batch))
    pipe.stdin.close()
    output = pipe.stdout.read().decode(errors="replace")
    if pipe.wait() != 0 or "errors: 0" not in output:
        raise RuntimeError(f"loading the dataset failed: {output[-500:]}")


# --- the contenders -----------------------------------------------------------------------------------------

def ours(port: int, directory: Path, logs: Path) -> Run:
    backups = directory / "backups"
    shutil.rmtree(backups, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUP_", "S3_", "CLEANUP_", "DATABASE_URL", "RETENTION_"))}
    env.update(BACKUP_SOURCE=f"redis://127.0.0.1:{port}", BACKUP_DIR=str(backups), BACKUP_COMPRESSION_LEVEL="3",
               BACKUP_MIN_FREE="0%", PYTHONPATH=str(ROOT))
    return run_child([sys.executable, "-m", "worker", "backup", "--no-upload"], logs / "ours.log", env=env, cwd=ROOT)


def our_backup(directory: Path) -> tuple[dict, Path]:
    """Return the manifest and artifact of the backup `ours` wrote last."""
    (manifest_path,) = (directory / "backups").glob("*.rdb.zst.json")
    return json.loads(manifest_path.read_text()), manifest_path.with_suffix("")


def stock(port: int, directory: Path, logs: Path) -> Run:
    for name in ("dump.rdb", "dump.rdb.zst"):
        (directory / name).unlink(missing_ok=True)
    script = f"redis-cli -p {port} --rdb dump.rdb && zstd -3 -T0 -q dump.rdb -o dump.rdb.zst"
    return run_child(["sh", "-c", script], logs / "stock.log", cwd=directory)


# --- the run ------------------------------------------------------------------------------------------------

def fmt_s(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({', '.join(f'{v:.2f}' for v in values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--diskless", choices=("yes", "no"), default="yes")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-redis-"))
    work.mkdir(parents=True, exist_ok=True)
    logs, data = work / "logs", work / "server"
    logs.mkdir(exist_ok=True)
    data.mkdir(exist_ok=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
                               "--appendonly", "no", "--repl-diskless-sync", args.diskless, "--repl-diskless-sync-delay", "0",
                               "--logfile", str(data / "redis.log")], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG":
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.1)
        started = time.monotonic()
        load(port, args.size_mib * MIB)
        info = subprocess.run(["redis-cli", "-p", str(port), "info", "memory"], capture_output=True, text=True).stdout
        dataset = next((l.split(":")[1].strip() for l in info.splitlines() if l.startswith("used_memory_dataset:")), "?")
        print(f"loaded ~{args.size_mib} MiB of values in {time.monotonic() - started:.1f} s (used_memory_dataset {dataset})", file=sys.stderr)

        compile_worker()
        runs: dict[str, list[Run]] = {"ours": [], "stock": []}
        for i in range(args.repeat):
            order = ("ours", "stock") if i % 2 == 0 else ("stock", "ours")
            for name in order:
                run = ours(port, work, logs) if name == "ours" else stock(port, work, logs)
                if run.rc != 0:
                    raise RuntimeError(f"{name} failed (exit {run.rc}); see {logs / (name + '.log')}")
                runs[name].append(run)
                print(f"{name}: {run.wall:.2f} s, {run.maxrss_kib / 1024:.0f} MB RSS", file=sys.stderr)

        raw = (work / "dump.rdb").stat().st_size
        ours_wall = [r.wall for r in runs["ours"]]
        stock_wall = [r.wall for r in runs["stock"]]
        ratio = statistics.median(ours_wall) / statistics.median(stock_wall)
        last, artifact = our_backup(work)
        version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
        lines = [
            f"# Redis backup benchmark, {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}",
            "",
            f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}, {version}, "
            f"repl-diskless-sync {args.diskless}; dataset ~{args.size_mib} MiB of values (used_memory_dataset {dataset}), "
            f"RDB {raw / MIB:.1f} MiB, {args.repeat} runs each, alternating",
            "",
            "| | wall (median, runs) | peak RSS | output |",
            "|---|---|---|---|",
            f"| ours: python -m worker backup (SYNC -> RDB check and key walk -> zstd -3 -> sha256) | {fmt_s(ours_wall)} | "
            f"{max(r.maxrss_kib for r in runs['ours']) / 1024:.0f} MB | {artifact.stat().st_size / MIB:.1f} MiB |",
            f"| stock: redis-cli --rdb && zstd -3 -T0 | {fmt_s(stock_wall)} | {max(r.maxrss_kib for r in runs['stock']) / 1024:.0f} MB "
            f"| {(work / 'dump.rdb.zst').stat().st_size / MIB:.1f} MiB (+ {raw / MIB:.1f} MiB dump.rdb on disk) |",
            "",
            f"Ratio ours/stock: **{ratio:.2f}** (target <= 1.1 at 1 GiB). Our check: {last['verified']['check']}; "
            f"transfer {last['rdb']['transfer']}.",
        ]
        report = "\n".join(lines)
        print(report)
        out_dir = BENCH / "out"
        out_dir.mkdir(exist_ok=True)
        (out_dir / f"redis-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.md").write_text(report + "\n")
    finally:
        server.terminate()
        server.wait(30)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
