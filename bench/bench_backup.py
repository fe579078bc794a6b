"""Benchmark `python -m worker backup --no-upload` against the stock shell pipeline (issue 2).

Usage: python bench/bench_backup.py [--size-mib 1024] [--repeat 3] [--db PATH] [--workdir DIR] [--keep]
                                    [--no-compare-snapshot] [--stock-timeout SECONDS] [--baseline DIR]

Builds a realistic WAL-mode app database with bench/make_db.py (or reuses --db; the concurrent writer adds a
few rows to it), then, on a warm page cache (the database is read and `sync` is run before every measurement):

1. Wall time, --repeat times in alternating order, with no other writer:
   ours  = `python -m worker backup --no-upload` (BACKUP_SOURCE=sqlite:///DB, a fresh BACKUP_DIR);
   stock = `sqlite3 DB ".backup SNAP"`, `sqlite3 SNAP "PRAGMA integrity_check"`, `zstd -3 -T0 SNAP -o OUT`,
           `sha256sum OUT`, one after the other like a shell script.
   Also: our peak RSS (ru_maxrss of the child from os.wait4) and peak disk (sum of file sizes in BACKUP_DIR,
   temporaries included, polled every 20 ms); the same for stock (largest RSS of its four processes).
2. The same two, with tests/integration/writer.py committing small transactions in another process: the p50,
   p99 and max latency of the commits that overlap the backup window. The stock pipeline gets --stock-timeout
   (default: 4x its median above, at least 30 s); if it does not finish, it is killed, counted as "did not
   finish", and not retried (the sqlite3 shell's `.backup` copies 100 pages a step and restarts whenever
   another process commits, so under a steady writer it may never finish).
3. With --compare-snapshot (default), the snapshot alone under the writer: Python's backup API in one step
   (`src.backup(dst, pages=-1)`), in 4 MiB steps inside one read transaction (what the worker does), and
   `VACUUM INTO`: wall time, writer latency, file size.
4. With --baseline DIR (a checkout of another version, e.g. `git worktree add /tmp/base main`), that version's
   `python -m worker backup` runs as a third contender in the same alternation: ours/base is the regression check.

Prints markdown tables and writes them to bench/out/backup-<UTC timestamp>.md. The work directory (under /tmp
by default) is deleted at the end unless --keep.
"""

import argparse
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timezone
import json
import math
import os
from pathlib import Path
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from make_db import build  # noqa: E402

WRITER = ROOT / "tests" / "integration" / "writer.py"
POLL_S = 0.02
MIB = 1 << 20


# --- measuring ------------------------------------------------------------------------------------------------

@dataclass
class Run:
    wall: float
    rc: int
    maxrss_kib: int
    timed_out: bool = False


# ru_maxrss survives exec: a child forked from a big process reports at least that process's RSS. So every
# measured command is started by this tiny launcher (python -S, ~10 MB), which times it and reads its rusage.
LAUNCHER = """
import json, os, sys, time
start = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(sys.argv[1], "w") as out:
    json.dump({"wall": wall, "rc": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}, out)
"""


def compile_worker(root: Path = ROOT) -> None:
    """Compile a checkout's modules to bytecode, as `pip install .` (the Dockerfile) does for an installed worker.
    Run from a checkout under PYTHONDONTWRITEBYTECODE (set on the machines we measure on), the worker would
    otherwise compile its ~60 modules from source at every start (~0.1 s), which no installed worker pays."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "worker"), str(root / "jobs")], check=True)


def run_child(args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
              timeout: float | None = None) -> Run:
    """Run `args` to completion; return its wall time, exit code and peak RSS (ru_maxrss from os.wait4, KiB)."""
    report = log.with_name(log.name + ".rusage.json")
    report.unlink(missing_ok=True)
    start = time.perf_counter()
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, str(report), *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return Run(time.perf_counter() - start, -9, 0, timed_out=True)
    if proc.returncode != 0 or not report.exists():
        raise RuntimeError(f"the launcher failed for {args[0]} (exit {proc.returncode}), see {log}")
    result = json.loads(report.read_text())
    return Run(result["wall"], result["rc"], result["maxrss_kib"])


class DiskPeak:
    """Poll the total size of the files under a directory every 20 ms in a thread; keep the maximum."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="disk-peak", daemon=True)

    def _total(self, directory: str) -> int:
        total = 0
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    total += self._total(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                pass
        return total

    def _poll(self) -> None:
        while True:
            self.peak = max(self.peak, self._total(str(self.directory)))
            if self._stop.wait(POLL_S):
                return

    def __enter__(self) -> "DiskPeak":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Latency:
    commits: int
    p50: float
    p99: float
    max: float


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of `values` (p in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class Writer:
    """tests/integration/writer.py in another process; `window(t0, t1)` gives latencies of the commits overlapping it."""

    def __init__(self, db: Path, out: Path) -> None:
        self.db, self.out = db, out
        self.samples: list[tuple[float, float]] = []

    def __enter__(self) -> "Writer":
        ready = Path(str(self.out) + ".ready")
        ready.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, str(WRITER), str(self.db), str(self.out), "--seconds", "3600"])
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the writer did not start (exit {self.proc.returncode})")
            time.sleep(0.01)
        time.sleep(0.3)  # a baseline of ordinary commits before the measurement
        return self

    def __exit__(self, *_: object) -> None:
        time.sleep(0.2)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        for line in self.out.read_text().splitlines():
            at, ms = line.split()
            self.samples.append((float(at), float(ms)))

    def window(self, t0: float, t1: float) -> Latency:
        inside = [ms for at, ms in self.samples if at >= t0 and at - ms / 1000 <= t1]
        if not inside:
            return Latency(0, math.nan, math.nan, math.nan)
        return Latency(len(inside), percentile(inside, 50), percentile(inside, 99), max(inside))


def warm(db: Path) -> None:
    """Flush dirty pages left by earlier runs, then read the database (and its WAL) into the page cache."""
    os.sync()
    for path in (db, db.with_name(db.name + "-wal")):
        if path.exists():
            with path.open("rb") as handle:
                while handle.read(8 * MIB):
                    pass


# --- the contenders -------------------------------------------------------------------------------------------

@dataclass
class Result:
    wall: float
    rss_kib: int
    disk_peak: int
    ok: bool
    note: str = ""
    steps: dict[str, float] = field(default_factory=dict)
    artifact_size: int = 0
    t0: float = 0.0
    t1: float = 0.0


def ours(db: Path, directory: Path, logs: Path, root: Path = ROOT) -> Result:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("S3_", "BACKUP_", "CLEANUP_"))}
    env.pop("DATABASE_URL", None)
    env.update(BACKUP_SOURCE=f"sqlite:///{db}", BACKUP_DIR=str(directory), BACKUP_COMPRESSION_LEVEL="3", PYTHONPATH=str(root))
    directory.mkdir()
    with DiskPeak(directory) as disk:
        t0 = time.time()
        run = run_child([sys.executable, "-m", "worker", "backup", "--no-upload"], logs / "ours.log", env=env, cwd=root)
        t1 = time.time()
    artifacts = sorted(directory.glob("*.zst"))
    ok = run.rc == 0 and len(artifacts) == 1
    note = "" if ok else f"exit {run.rc}: " + (logs / "ours.log").read_text()[-2000:]
    result = Result(run.wall, run.maxrss_kib, disk.peak, ok, note, t0=t0, t1=t1)
    if artifacts:
        result.artifact_size = artifacts[0].stat().st_size
    shutil.rmtree(directory)
    return result


def stock(db: Path, directory: Path, logs: Path, timeout: float | None = None) -> Result:
    directory.mkdir()
    snap, out = directory / "app.db", directory / "app.db.zst"
    log = logs / "stock.log"
    steps = [
        ("sqlite3 .backup", ["sqlite3", str(db), f".backup '{snap}'"]),
        ("integrity_check", ["sqlite3", str(snap), "PRAGMA integrity_check"]),
        ("zstd -3 -T0", ["zstd", "-3", "-T0", "-q", str(snap), "-o", str(out)]),
        ("sha256sum", ["sha256sum", str(out)]),
    ]
    times: dict[str, float] = {}
    rss, ok, note = 0, True, ""
    with DiskPeak(directory) as disk:
        t0 = time.time()
        start = time.perf_counter()
        for name, args in steps:
            left = None if timeout is None else max(0.1, timeout - (time.perf_counter() - start))
            mark = log.stat().st_size if log.exists() else 0
            run = run_child(args, log, timeout=left)
            times[name] = run.wall
            rss = max(rss, run.maxrss_kib)
            if run.timed_out:
                ok, note = False, f"did not finish in {timeout:.0f} s ({name} killed)"
                break
            if run.rc != 0:
                ok, note = False, f"{name} exited {run.rc}"
                break
            if name == "integrity_check":
                with log.open("rb") as handle:
                    handle.seek(mark)
                    if handle.read().strip() != b"ok":
                        ok, note = False, "integrity_check did not say ok"
                        break
        wall = time.perf_counter() - start
        t1 = time.time()
    result = Result(wall, rss, disk.peak, ok, note, steps=times, t0=t0, t1=t1)
    if ok:
        result.artifact_size = out.stat().st_size
    shutil.rmtree(directory)
    return result


def snapshot_backup_api(db: Path, out: Path) -> None:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)) as src, \
            closing(sqlite3.connect(out, isolation_level=None)) as dst:
        src.backup(dst, pages=-1)


def snapshot_stepped(db: Path, out: Path) -> None:
    """What the worker does: one read transaction held across steps of 4 MiB, so a stop is seen between steps
    and the copy never restarts when the writer commits."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)) as src, \
            closing(sqlite3.connect(out, isolation_level=None)) as dst:
        src.execute("BEGIN")
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()
        src.backup(dst, pages=(4 << 20) // src.execute("PRAGMA page_size").fetchone()[0])
        src.execute("COMMIT")


def snapshot_vacuum_into(db: Path, out: Path) -> None:
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
    try:
        src.execute("VACUUM INTO ?", (str(out),))
    finally:
        src.close()


# --- report ---------------------------------------------------------------------------------------------------

def fmt_s(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({', '.join(f'{v:.2f}' for v in values)})"


def fmt_lat(lat: Latency) -> str:
    return f"{lat.p50:.1f} / {lat.p99:.1f} / {lat.max:.1f} ms ({lat.commits} commits)"


def merge(lats: list[Latency]) -> str:
    """Per-run p99s, with the worst run's figures."""
    worst = max(lats, key=lambda lat: (lat.p99 if not math.isnan(lat.p99) else -1))
    return f"{fmt_lat(worst)}; p99 per run: {', '.join(f'{lat.p99:.1f}' for lat in lats)}"


def tool_version(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def db_facts(db: Path) -> str:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("events", "messages", "checkpoints")}
        mode = con.execute("PRAGMA journal_mode").fetchone()[0]
    return f"{db.stat().st_size / MIB:.0f} MiB, {mode}; rows: " + ", ".join(f"{t} {n:,}" for t, n in counts.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, help="reuse this database instead of building one (the writer adds rows to it)")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="default: a new directory under /tmp")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (and the built database)")
    parser.add_argument("--compare-snapshot", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--stock-timeout", type=float, help="seconds the stock pipeline gets under the writer")
    parser.add_argument("--baseline", type=Path, help="also run `python -m worker backup` from this checkout (another version) as `base`")
    args = parser.parse_args()

    for tool in ("sqlite3", "zstd", "sha256sum"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install sqlite3 zstd coreutils)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-backup-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    began = time.perf_counter()
    try:
        if args.db:
            db = args.db.resolve()
            build_note = "reused"
        else:
            db = work / "app.db"
            print(f"building a {args.size_mib} MiB database at {db} ...", flush=True)
            start = time.perf_counter()
            build(db, args.size_mib)
            build_note = f"built in {time.perf_counter() - start:.0f} s"
        facts = db_facts(db)
        print(f"{db}: {facts} ({build_note})", flush=True)
        compile_worker()
        if args.baseline:
            compile_worker(args.baseline.resolve())
        counter = iter(range(1_000_000))

        def fresh(name: str) -> Path:
            return work / f"{name}-{next(counter)}"

        # 1. wall time, no writer
        contenders = ("ours", "stock", "base") if args.baseline else ("ours", "stock")

        def order(rep: int) -> tuple[str, ...]:
            return contenders if rep % 2 == 0 else contenders[::-1]

        def backup(who: str, timeout: float | None = None) -> Result:
            if who == "stock":
                return stock(db, fresh("stock"), logs, timeout)
            return ours(db, fresh(who), logs, args.baseline.resolve() if who == "base" else ROOT)

        quiet: dict[str, list[Result]] = {who: [] for who in contenders}
        for rep in range(args.repeat):
            for who in order(rep):
                warm(db)
                result = backup(who)
                if not result.ok:
                    sys.exit(f"{who} failed: {result.note}")
                quiet[who].append(result)
                print(f"  quiet  {who:5} {result.wall:6.2f} s  rss {result.rss_kib / 1024:5.0f} MiB  disk {result.disk_peak / MIB:5.0f} MiB", flush=True)

        # 2. under a concurrent writer
        stock_median = statistics.median(r.wall for r in quiet["stock"])
        timeout = args.stock_timeout or max(30.0, 4 * stock_median)
        loaded: dict[str, list[tuple[Result, Latency]]] = {who: [] for who in contenders}
        stock_gave_up = False
        for rep in range(args.repeat):
            for who in order(rep):
                if who == "stock" and stock_gave_up:
                    continue
                warm(db)
                with Writer(db, fresh("writer")) as writer:
                    result = backup(who, timeout)
                lat = writer.window(result.t0, result.t1)
                loaded[who].append((result, lat))
                if who != "stock" and not result.ok:
                    sys.exit(f"{who} failed under the writer: {result.note}")
                if who == "stock" and not result.ok:
                    stock_gave_up = True
                state = "ok" if result.ok else result.note
                print(f"  writer {who:5} {result.wall:6.2f} s  writer p99 {lat.p99:7.1f} ms  {state}", flush=True)

        # 3. snapshot methods alone, under the writer
        snaps: dict[str, list[tuple[float, int, Latency]]] = {}
        if args.compare_snapshot:
            methods = {"backup API, one step (pages=-1)": snapshot_backup_api,
                       "backup API, 4 MiB steps in one read transaction (ours)": snapshot_stepped,
                       "VACUUM INTO": snapshot_vacuum_into}
            snaps = {name: [] for name in methods}
            names = list(methods)
            for rep in range(args.repeat):
                for name in (names if rep % 2 == 0 else names[::-1]):
                    warm(db)
                    out = fresh("snap")
                    out.mkdir()
                    target = out / "snap.db"
                    with Writer(db, fresh("writer")) as writer:
                        t0 = time.time()
                        start = time.perf_counter()
                        methods[name](db, target)
                        wall = time.perf_counter() - start
                        t1 = time.time()
                    size = target.stat().st_size
                    shutil.rmtree(out)
                    snaps[name].append((wall, size, writer.window(t0, t1)))
                    print(f"  snap   {name:32} {wall:6.2f} s  {size / MIB:5.0f} MiB  writer p99 {snaps[name][-1][2].p99:7.1f} ms", flush=True)

        # report
        ours_wall = [r.wall for r in quiet["ours"]]
        stock_wall = [r.wall for r in quiet["stock"]]
        ratio = statistics.median(ours_wall) / statistics.median(stock_wall)
        rss_mb = max(r.rss_kib for r in quiet["ours"] + [r for r, _ in loaded["ours"]]) * 1024 / 1e6
        disk_peak = max(r.disk_peak for r in quiet["ours"])
        raw = db.stat().st_size
        ours_lat = [lat for _, lat in loaded["ours"]]
        worst_p99 = max(lat.p99 for lat in ours_lat)
        steps = {name: statistics.median(r.steps[name] for r in quiet["stock"]) for name in quiet["stock"][0].steps}
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")

        def verdict(ok: bool) -> str:
            return "pass" if ok else "**FAIL**"

        lines = [
            f"# Backup benchmark {stamp}",
            "",
            f"- database: {facts} ({build_note})",
            f"- machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version} (Python), "
            f"{tool_version(['sqlite3', '--version']).split(' ')[0]} (CLI), {tool_version(['zstd', '--version']).strip('* ')}",
            f"- {args.repeat} runs each, alternating order, warm page cache (database read and `sync` before every run); "
            f"median (each run)",
            "",
            "## Ours vs the stock pipeline, no other writer",
            "",
            "| | ours: `python -m worker backup --no-upload` | stock: `.backup`, `integrity_check`, `zstd -3 -T0`, `sha256sum` | target |",
            "|---|---|---|---|",
            f"| wall time | {fmt_s(ours_wall)} | {fmt_s(stock_wall)} | |",
            f"| ratio ours/stock | **{ratio:.2f}** | | ≤ 1.0: {verdict(ratio <= 1.0)} |",
            f"| stock steps (median) | | " + ", ".join(f"{name} {s:.2f} s" for name, s in steps.items()) + " | |",
            f"| peak RSS | {rss_mb:.0f} MB (max over all our runs) | {max(r.rss_kib for r in quiet['stock']) * 1024 / 1e6:.0f} MB (largest step) | < 150 MB: {verdict(rss_mb < 150)} |",
            f"| peak extra disk | {disk_peak / MIB:.0f} MiB ({disk_peak / raw:.2f}x the db) | {max(r.disk_peak for r in quiet['stock']) / MIB:.0f} MiB | |",
            f"| artifact | {quiet['ours'][0].artifact_size / MIB:.0f} MiB | {quiet['stock'][0].artifact_size / MIB:.0f} MiB | |",
            "",
            "## Under a concurrent writer (tests/integration/writer.py), commits overlapping the backup",
            "",
            "| | wall time | writer p50 / p99 / max (worst run) | target p99 < 50 ms |",
            "|---|---|---|---|",
            f"| ours | {fmt_s([r.wall for r, _ in loaded['ours']])} | {merge(ours_lat)} | {verdict(worst_p99 < 50)} |",
        ]
        for result, lat in loaded["stock"]:
            wall = f"{result.wall:.2f} s" if result.ok else f"{result.note}"
            lines.append(f"| stock | {wall} | {fmt_lat(lat)} | |")
        if args.baseline:
            base_wall = [r.wall for r in quiet["base"]]
            base_ratio = statistics.median(ours_wall) / statistics.median(base_wall)
            base_rss = max(r.rss_kib for r in quiet["base"] + [r for r, _ in loaded["base"]]) * 1024 / 1e6
            lines += [
                "",
                f"## Ours vs the baseline `{args.baseline}` (the same command from another checkout)",
                "",
                "| | ours | base | ours/base |",
                "|---|---|---|---|",
                f"| wall time, no writer | {fmt_s(ours_wall)} | {fmt_s(base_wall)} | **{base_ratio:.3f}** |",
                f"| wall time, under the writer | {fmt_s([r.wall for r, _ in loaded['ours']])} | "
                f"{fmt_s([r.wall for r, _ in loaded['base']])} | |",
                f"| writer p99 (worst run) | {worst_p99:.1f} ms | {max(lat.p99 for _, lat in loaded['base']):.1f} ms | |",
                f"| peak RSS | {rss_mb:.0f} MB | {base_rss:.0f} MB | |",
                f"| peak extra disk | {disk_peak / MIB:.0f} MiB | {max(r.disk_peak for r in quiet['base']) / MIB:.0f} MiB | |",
            ]
        if snaps:
            lines += [
                "",
                "## Snapshot alone, under the writer",
                "",
                "| method | wall time | writer p50 / p99 / max (worst run) | file size |",
                "|---|---|---|---|",
            ]
            for name, rows in snaps.items():
                lines.append(f"| {name} | {fmt_s([w for w, _, _ in rows])} | {merge([lat for _, _, lat in rows])} | "
                             f"{statistics.median(s for _, s, _ in rows) / MIB:.0f} MiB |")
        lines += ["", f"Total benchmark time: {time.perf_counter() - began:.0f} s."]
        report = "\n".join(lines) + "\n"
        print()
        print(report)
        out_dir = BENCH / "out"
        out_dir.mkdir(exist_ok=True)
        path = out_dir / f"backup-{stamp}.md"
        path.write_text(report)
        print(f"written to {path}")
        if args.db is None and args.keep:
            print(f"kept {work}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
