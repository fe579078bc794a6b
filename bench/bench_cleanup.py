"""Benchmark the cleanup job against `find DIR -name '*.mp3' -mmin +1440 -delete`.

Usage: python bench/bench_cleanup.py [--files 100000]

Creates the same tree twice under /tmp (N empty *.mp3 files, half of them two days old), removes the old half
once with `run_cleanup` and once with find, checks both left the same files, and prints the times and their ratio.
"""

import argparse
from datetime import datetime, timezone
import os
from pathlib import Path
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.cleanup import parse_rules, run_cleanup  # noqa: E402

TWO_DAYS = 2 * 86400


def make_tree(directory: Path, count: int, now: float) -> None:
    """Create `count` empty .mp3 files in `directory`; every other one is two days old."""
    directory.mkdir()
    old = now - TWO_DAYS
    for index in range(count):
        path = os.path.join(directory, f"clip-{index:07d}.mp3")
        os.mknod(path, 0o600)  # an empty regular file, cheaper than open and close
        if index % 2:
            os.utime(path, (old, old))


def time_ours(directory: Path) -> tuple[float, int]:
    rules = parse_rules(f"{directory}/*.mp3=24h", Path.cwd())
    start = time.perf_counter()
    report = run_cleanup(rules, dry_run=False, now=datetime.now(timezone.utc), cancel=threading.Event())
    return time.perf_counter() - start, report.files


def time_find(directory: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["find", str(directory), "-name", "*.mp3", "-mmin", "+1440", "-delete"], check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000, help="files per tree (default 100000)")
    args = parser.parse_args()

    import structlog  # quiet the per-rule log line so it does not land in the table
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())

    root = Path(tempfile.mkdtemp(prefix="bench_cleanup_", dir="/tmp"))
    try:
        now = time.time()
        ours_dir, find_dir = root / "ours", root / "find"
        make_tree(ours_dir, args.files, now)
        make_tree(find_dir, args.files, now)
        ours, removed = time_ours(ours_dir)
        theirs = time_find(find_dir)
        left_ours, left_find = sorted(os.listdir(ours_dir)), sorted(os.listdir(find_dir))
        if left_ours != left_find or removed != args.files // 2:
            print(f"MISMATCH: cleanup removed {removed}, left {len(left_ours)}; find left {len(left_find)}")
            return 1
    finally:
        shutil.rmtree(root)

    print(f"{'files':>9} {'removed':>9} {'cleanup s':>10} {'find s':>8} {'ratio':>6}")
    print(f"{args.files:>9} {removed:>9} {ours:>10.3f} {theirs:>8.3f} {ours / theirs:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
