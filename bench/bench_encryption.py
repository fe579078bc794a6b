"""Benchmark encryption (issue 20): `python -m worker backup --no-upload` of the same 1 GiB SQLite and PostgreSQL
databases with and without BACKUP_ENCRYPTION_RECIPIENTS, in the same run, alternating.

Usage: python bench/bench_encryption.py [--size-mib 1024] [--repeat 3] [--engines sqlite,postgres]
                                        [--sqlite-db PATH] [--pg-url URL] [--pg-db NAME] [--keep]

SQLite: a WAL-mode app database built by bench/make_db.py (or --sqlite-db). PostgreSQL: a database on the server
at --pg-url (default: BENCH_PG_URL or postgresql://postgres@127.0.0.1:5432/postgres) grown by
bench/bench_postgres.py's schema (or --pg-db, an existing one, never dropped). Each contender runs --repeat times
in alternating order on a warm cache; wall time and peak RSS (ru_maxrss of the worker, os.wait4) are reported,
with the ratio encrypted/plain of the medians (target: at most 1.05, RSS flat under 150 MB). Every encrypted
artifact is decrypted with the stock `age` CLI piped into `zstd -t` once, so the numbers are of backups a
person can restore. Prints markdown and writes it to bench/out/encryption-<UTC timestamp>.md.
"""

import argparse
from datetime import datetime, timezone
import os
from pathlib import Path
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from bench_backup import compile_worker, run_child, warm  # noqa: E402
from bench_postgres import DEFAULT_URL, create_database, db_url, grow  # noqa: E402
from make_db import build  # noqa: E402

MIB = 1 << 20


def backup(source_url: str, work: Path, recipient: str | None, log: Path) -> tuple[float, int, Path]:
    """One `backup --no-upload` into a fresh directory; return wall seconds, peak RSS (KiB) and the artifact."""
    directory = work / f"backups-{uuid.uuid4().hex[:8]}"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("S3_", "BACKUP_", "CLEANUP_"))}
    env.pop("DATABASE_URL", None)
    env.update(BACKUP_SOURCE=source_url, BACKUP_DIR=str(directory), BACKUP_COMPRESSION_LEVEL="3",
               PYTHONPATH=str(ROOT), BACKUP_ALLOW_EMPTY="true")
    if recipient:
        env["BACKUP_ENCRYPTION_RECIPIENTS"] = recipient
    run = run_child([sys.executable, "-m", "worker", "backup", "--no-upload"], log, env=env, cwd=ROOT)
    artifacts = sorted(directory.glob("*.zst.age" if recipient else "*.zst"))
    if run.rc != 0 or len(artifacts) != 1:
        raise RuntimeError(f"backup failed (exit {run.rc}); see {log}")
    return run.wall, run.maxrss_kib, artifacts[0]


def opened(key_file: Path, artifact: Path) -> None:
    """Check that the stock tools open an encrypted artifact: `age -d -i KEY ARTIFACT | zstd -t`, without a shell."""
    age = subprocess.Popen(["age", "-d", "-i", str(key_file), str(artifact)], stdout=subprocess.PIPE)
    tested = subprocess.run(["zstd", "-t", "-q"], stdin=age.stdout)
    age.stdout.close()
    if age.wait() != 0 or tested.returncode != 0:
        raise RuntimeError(f"the stock age and zstd cannot open {artifact} (age {age.returncode}, zstd {tested.returncode})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--engines", default="sqlite,postgres")
    parser.add_argument("--sqlite-db", type=Path)
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", DEFAULT_URL))
    parser.add_argument("--pg-db")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    compile_worker()
    from jobs import encryption

    secret, recipient = encryption.new_identity()
    work = Path(tempfile.mkdtemp(prefix="bench-encryption-"))
    key_file = work / "key.txt"
    key_file.write_text(secret + "\n")
    lines = [f"# Encryption benchmark, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "",
             f"{os.cpu_count()} CPUs; `--size-mib {args.size_mib} --repeat {args.repeat}`; zstd level 3; one "
             "x25519 recipient.", "",
             "| engine | plain (s) | encrypted (s) | ratio | peak RSS plain / encrypted (MB) | artifact (MiB) |",
             "|---|---|---|---|---|---|"]
    made_pg = None
    try:
        for engine in args.engines.split(","):
            if engine == "sqlite":
                db = args.sqlite_db or work / "app.db"
                if not args.sqlite_db:
                    build(db, args.size_mib)
                url = f"sqlite:///{db}"
            else:
                name = args.pg_db or f"bench_enc_{uuid.uuid4().hex[:8]}"
                if not args.pg_db:
                    create_database(args.pg_url, name)
                    made_pg = name
                    grow(db_url(args.pg_url, name), args.size_mib)
                url = db_url(args.pg_url, name)
            times: dict[str, list[float]] = {"plain": [], "encrypted": []}
            rss: dict[str, list[int]] = {"plain": [], "encrypted": []}
            sizes: list[int] = []
            for number in range(args.repeat):
                order = ("plain", "encrypted") if number % 2 == 0 else ("encrypted", "plain")
                for kind in order:
                    if engine == "sqlite":
                        warm(db)
                    wall, peak, artifact = backup(url, work, recipient if kind == "encrypted" else None,
                                                  work / f"{engine}-{kind}.log")
                    times[kind].append(wall)
                    rss[kind].append(peak)
                    if kind == "encrypted" and number == 0:  # a person can restore it: age -d | zstd -t
                        opened(key_file, artifact)
                    sizes.append(artifact.stat().st_size)
                    shutil.rmtree(artifact.parent)
            plain, sealed = statistics.median(times["plain"]), statistics.median(times["encrypted"])
            lines.append(f"| {engine} | {plain:.2f} ({', '.join(f'{t:.2f}' for t in times['plain'])}) "
                         f"| {sealed:.2f} ({', '.join(f'{t:.2f}' for t in times['encrypted'])}) | **{sealed / plain:.3f}** "
                         f"| {max(rss['plain']) / 1024:.0f} / {max(rss['encrypted']) / 1024:.0f} | {max(sizes) / MIB:.0f} |")
    finally:
        if made_pg and not args.keep:
            from bench_postgres import connect

            with connect(args.pg_url) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{made_pg}" WITH (FORCE)')
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    print(text)
    out = BENCH / "out"
    out.mkdir(exist_ok=True)
    (out / f"encryption-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.md").write_text(text)


if __name__ == "__main__":
    main()
