"""Benchmark the off-site path against plain boto3 on a local moto S3 server (real HTTP).

Measures, on the same artifact and in the same run:
  (a) upload: `S3Destination.put` (hash, upload, head_object confirmation) vs boto3 `upload_file`;
  (b) restore from the bucket: our `pick_restorable` (list, download, size + SHA-256 check) followed by
      `compression.decompress`, vs boto3 `download_file` followed by a `zstd -d` subprocess.
Every measurement runs in a fresh child process, which reports its wall time (imports and client creation
excluded) and its peak RSS (VmHWM of that process; the baseline's `zstd` child is not included: getrusage
cannot separate it from the forking parent's pages).

    python bench/bench_s3.py                     # creates a ~256 MiB SQLite database
    python bench/bench_s3.py --size-mib 1024     # the full benchmark
    python bench/bench_s3.py --db path/to/app.db # an existing database
"""

import argparse
import json
import os
from pathlib import Path
import random
import resource
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUCKET = "bench"
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": REGION}


def make_database(path: Path, size_mib: int) -> None:
    """Create a SQLite database of about `size_mib` MiB with semi-compressible rows (text plus random hex)."""
    words = "order invoice customer shipped pending refund total amount address note status".split()
    rng = random.Random(42)
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT, body TEXT, token TEXT)")
        target = size_mib << 20
        while path.stat().st_size < target:
            rows = [
                (rng.choice(words), " ".join(rng.choices(words, k=60)), os.urandom(48).hex())
                for _ in range(20_000)
            ]
            connection.executemany("INSERT INTO events (kind, body, token) VALUES (?, ?, ?)", rows)
            connection.commit()
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_moto(port: int, log: Path) -> subprocess.Popen:
    """Start moto's server in its own process and wait until it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"moto server exited with {process.returncode}; see {log}")
            time.sleep(0.1)
    process.kill()
    raise SystemExit("moto server did not start within 30 s")


def vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, endpoint: str, artifact: Path, key: str, backup_id: str, workdir: Path) -> dict:
    """Run one measurement in this (fresh) process; return wall time and peak RSS."""
    import boto3
    from jobs import compression, files, offsite
    from jobs.destinations.s3 import S3Destination

    cancel = threading.Event()
    result: dict = {}
    if mode == "ours-upload":
        destination = S3Destination(BUCKET, "ours", endpoint, REGION)
        started = time.perf_counter()
        destination.put(artifact, key, cancel)
        result["wall_s"] = time.perf_counter() - started
    elif mode == "boto3-upload":
        client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=REGION)
        started = time.perf_counter()
        client.upload_file(str(artifact), BUCKET, f"plain/{key}")
        result["wall_s"] = time.perf_counter() - started
    elif mode == "ours-restore":
        destination = S3Destination(BUCKET, "ours", endpoint, REGION)
        out = workdir / "ours.raw"
        started = time.perf_counter()
        _, verified, _ = offsite.pick_restorable(destination, workdir, cancel, backup_id, fallback=False)
        with files.create_private(out) as handle:
            result["raw_bytes"] = compression.decompress(verified, handle, cancel)
        result["wall_s"] = time.perf_counter() - started
        verified.unlink()
        out.unlink()
    elif mode == "boto3-restore":
        client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=REGION)
        downloaded, out = workdir / "plain.zst", workdir / "plain.raw"
        started = time.perf_counter()
        client.download_file(BUCKET, f"ours/{key}", str(downloaded))
        subprocess.run(["zstd", "-q", "-d", "-f", str(downloaded), "-o", str(out)], check=True)
        result["wall_s"] = time.perf_counter() - started
        result["raw_bytes"] = out.stat().st_size
        downloaded.unlink()
        out.unlink()
    else:
        raise SystemExit(f"unknown mode {mode}")
    result["rss_mib"] = vm_hwm_mib()
    return result


def measure(mode: str, endpoint: str, artifact: Path, key: str, backup_id: str, workdir: Path) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--endpoint", endpoint, "--artifact", str(artifact),
               "--key", key, "--backup-id", backup_id, "--workdir", str(workdir)]
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **CREDENTIALS})
    if completed.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, help="an existing SQLite database (default: create one)")
    parser.add_argument("--size-mib", type=int, default=256, help="size of the database to create (default 256)")
    parser.add_argument("--level", type=int, default=3, help="zstd level of the backup (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is shown (default 3)")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--artifact", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--backup-id", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.endpoint, args.artifact, args.key, args.backup_id, args.workdir)))
        return

    os.environ.update(CREDENTIALS)
    import boto3
    from jobs import offsite, pipeline, retention
    from jobs.backups import list_backups
    from jobs.destinations.local import LocalDestination
    from jobs.destinations.s3 import S3Destination
    from jobs.engines.sqlite import SqliteSource

    scratch = Path(tempfile.mkdtemp(prefix="bench-s3-", dir=args.workdir))
    moto = None
    try:
        database = args.db
        if database is None:
            database = scratch / "app.db"
            started = time.perf_counter()
            make_database(database, args.size_mib)
            print(f"created {database} ({database.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - started:.1f} s")
        backup_dir = scratch / "backups"
        settings = pipeline.BackupSettings(backup_dir=backup_dir, compression_level=args.level, policy=retention.Policy(None, 1))
        started = time.perf_counter()
        manifest = pipeline.take_backup(SqliteSource(database), settings, threading.Event())
        print(f"backup {manifest['artifact']}: {manifest['raw_size'] / 2**20:.0f} MiB raw -> "
              f"{manifest['size'] / 2**20:.0f} MiB zstd-{args.level} in {time.perf_counter() - started:.1f} s")
        local = LocalDestination(backup_dir)
        backup = list_backups(local)[0][0]
        artifact = local.path(backup.artifact)

        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        moto = start_moto(port, scratch / "moto.log")
        boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=REGION).create_bucket(Bucket=BUCKET)
        # The manifest goes up once so that our restore path (list, pick, verify) finds a whole backup.
        offsite.upload_backup(local, S3Destination(BUCKET, "ours", endpoint, REGION), backup, threading.Event())
        restore_dir = scratch / "restore"
        restore_dir.mkdir()

        results: dict[str, list[dict]] = {mode: [] for mode in ("ours-upload", "boto3-upload", "ours-restore", "boto3-restore")}
        for run in range(args.repeat):
            for ours, plain in (("ours-upload", "boto3-upload"), ("ours-restore", "boto3-restore")):
                for mode in ((ours, plain) if run % 2 == 0 else (plain, ours)):
                    results[mode].append(measure(mode, endpoint, artifact, backup.artifact, backup.id, restore_dir))
        for mode in ("ours-restore", "boto3-restore"):
            sizes = {r["raw_bytes"] for r in results[mode]}
            assert sizes == {manifest["raw_size"]}, f"{mode} restored {sizes}, expected {manifest['raw_size']}"

        def median(mode: str, field: str) -> float:
            return statistics.median(r[field] for r in results[mode])

        mib = manifest["size"] / 2**20
        print(f"\nartifact {mib:.0f} MiB, raw {manifest['raw_size'] / 2**20:.0f} MiB, median of {args.repeat} runs, "
              f"moto server on 127.0.0.1 ({os.cpu_count()} CPUs)\n")
        print(f"{'operation':<10} {'ours s':>8} {'boto3 s':>8} {'ratio':>6} {'ours MiB/s':>10} {'ours peak RSS':>14} {'boto3 peak RSS':>15}")
        for name, ours, plain in (("upload", "ours-upload", "boto3-upload"), ("restore", "ours-restore", "boto3-restore")):
            ours_s, plain_s = median(ours, "wall_s"), median(plain, "wall_s")
            plain_rss = f"{median(plain, 'rss_mib'):.0f} MiB"
            print(f"{name:<10} {ours_s:>8.2f} {plain_s:>8.2f} {ours_s / plain_s:>6.2f} {mib / ours_s:>10.0f} "
                  f"{median(ours, 'rss_mib'):>10.0f} MiB {plain_rss:>15}")
        print("\nrestore = download + size/SHA-256 check + zstd decompress (ours) vs download_file + `zstd -d` (boto3)")
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(10)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
