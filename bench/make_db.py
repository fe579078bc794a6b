"""Build a realistic app database for the benchmarks: JSON events, chat messages, binary checkpoints, indexes.

Usage: python bench/make_db.py PATH [--size-mib 1024] [--force]

About half the bytes are JSON events (compressible text), 30% chat messages (text), 20% binary checkpoints
(random blobs, incompressible); every table has the indexes an app would have. The rows go in interleaved, in
batches, with synchronous=OFF and journal_mode=OFF; the file is switched to WAL mode at the end. The result is
within a few percent of --size-mib (the size is checked while building).
"""

import argparse
from collections.abc import Callable
import json
from pathlib import Path
import random
import sqlite3
import sys
import time

SCHEMA = """
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT, created_at REAL, settings TEXT);
CREATE TABLE events (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, kind TEXT NOT NULL, created_at REAL NOT NULL,
                     payload TEXT NOT NULL);
CREATE INDEX events_user_time ON events (user_id, created_at);
CREATE INDEX events_kind_time ON events (kind, created_at);
CREATE TABLE messages (id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL, user_id INTEGER NOT NULL,
                       role TEXT NOT NULL, created_at REAL NOT NULL, body TEXT NOT NULL);
CREATE INDEX messages_conversation_time ON messages (conversation_id, created_at);
CREATE INDEX messages_user ON messages (user_id);
CREATE TABLE checkpoints (id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL, step INTEGER NOT NULL, created_at REAL NOT NULL,
                          sha TEXT NOT NULL, data BLOB NOT NULL);
CREATE UNIQUE INDEX checkpoints_run_step ON checkpoints (run_id, step);
"""

SHARES = {"events": 0.5, "messages": 0.3, "checkpoints": 0.2}
USERS = 20_000
KINDS = ["page_view", "click", "login", "logout", "purchase", "search", "upload", "error", "api_call", "share"]
WORDS = ("the a to of and in is it you that for on was with as have be at this not are but from or by one had "
         "all we can her there been if more when will would who so no out up into time about than them only "
         "backup server query latency cache request deploy volume config session token retry queue worker user "
         "model audio file upload download invoice payment refund order cart checkout price discount coupon "
         "thanks please help error issue works great sorry maybe tomorrow today meeting schedule report draft "
         "review merge branch commit build test release version update install restart timeout network").split()
BATCH_BYTES = 8 << 20
STATUSES = [200, 200, 200, 200, 201, 204, 301, 400, 404, 500]
ROLES = ["user", "assistant", "user", "system"]


def _sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(low, high))).capitalize() + rng.choice(".?!")


class _Text:
    """Pools of pre-made text, so a row costs a few random picks (a 1 GiB build must take well under 2 minutes)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.sentences = [_sentence(rng, 4, 18) for _ in range(40_000)]
        self.tails = [json.dumps(self._tail(kind)) for kind in KINDS for _ in range(3_000)]

    def _tail(self, kind: str) -> dict:
        rng = self.rng
        tail = {
            "ua": rng.choice(["Mozilla/5.0 (X11; Linux x86_64) Firefox/131.0", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5) Safari/604.1",
                              "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/129.0", "okhttp/4.12.0"]),
            "path": "/" + "/".join(rng.choices(WORDS, k=rng.randint(1, 4))),
            "props": {rng.choice(WORDS): rng.choice([rng.randrange(10_000), rng.random(), _sentence(rng, 1, 6)]) for _ in range(rng.randint(2, 8))},
            "tags": rng.sample(WORDS, rng.randint(0, 5)),
        }
        if kind in ("error", "search"):
            tail["message"] = _sentence(rng, 8, 40)
        return tail

    def event(self, now: float) -> tuple[int, str, float, str]:
        rng = self.rng
        index = rng.randrange(len(self.tails))
        kind = KINDS[index // 3_000]
        user = rng.randrange(1, USERS + 1)
        bits = rng.getrandbits(96)
        payload = (f'{{"v": 2, "kind": "{kind}", "user": {user}, "session": "{bits >> 32:016x}", '
                   f'"ip": "10.{bits & 255}.{(bits >> 8) & 255}.{(bits >> 16) & 255}", '
                   f'"duration_ms": {bits % 100_000 / 100}, "status": {STATUSES[(bits >> 24) % len(STATUSES)]}, '
                   + self.tails[index][1:])
        return user, kind, now - rng.random() * 86400 * 365, payload

    def message(self, now: float) -> tuple[int, int, str, float, str]:
        rng = self.rng
        body = " ".join(rng.choices(self.sentences, k=rng.randint(1, 12)))
        return rng.randrange(1, 200_000), rng.randrange(1, USERS + 1), rng.choice(ROLES), now - rng.random() * 86400 * 365, body


def _size(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]


def build(path: Path, size_mib: int, seed: int = 1) -> None:
    """Create a new WAL-mode database of about `size_mib` MiB at `path`. Raise FileExistsError if it exists."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; remove it first")
    rng = random.Random(seed)
    text = _Text(rng)
    target = size_mib << 20
    now = time.time()
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("PRAGMA cache_size=-262144")
        db.executescript(SCHEMA)
        db.execute("BEGIN")
        db.executemany("INSERT INTO users (id, email, name, created_at, settings) VALUES (?, ?, ?, ?, ?)", (
            (i, f"user{i}@example.com", f"{rng.choice(WORDS).title()} {rng.choice(WORDS).title()}", now - rng.random() * 86400 * 900,
             json.dumps({"theme": rng.choice(["dark", "light"]), "lang": rng.choice(["en", "fr", "de"]), "notify": rng.random() < 0.5}))
            for i in range(1, USERS + 1)))
        db.execute("COMMIT")
        written = {name: 0 for name in SHARES}
        run, step = 1, 0
        while (size := _size(db)) < target:
            # Feed the table furthest behind its share, one batch at a time, so the tables' pages interleave.
            name = min(SHARES, key=lambda table: written[table] / SHARES[table])
            budget = min(BATCH_BYTES, max(1 << 20, target - size))
            db.execute("BEGIN")
            if name == "events":
                rows, used = _batch(lambda: text.event(now), lambda row: len(row[3]) + 40, budget)
                db.executemany("INSERT INTO events (user_id, kind, created_at, payload) VALUES (?, ?, ?, ?)", rows)
            elif name == "messages":
                rows, used = _batch(lambda: text.message(now), lambda row: len(row[4]) + 40, budget)
                db.executemany("INSERT INTO messages (conversation_id, user_id, role, created_at, body) VALUES (?, ?, ?, ?, ?)", rows)
            else:
                rows, used = [], 0
                while used < budget:
                    blob = rng.randint(16 << 10, 512 << 10)
                    step += 1
                    if step > 200:
                        run, step = run + 1, 1
                    rows.append((run, step, now - rng.random() * 86400 * 365, f"{rng.getrandbits(256):064x}", blob))
                    used += blob
                db.executemany("INSERT INTO checkpoints (run_id, step, created_at, sha, data) VALUES (?, ?, ?, ?, randomblob(?))", rows)
            db.execute("COMMIT")
            written[name] += used
        db.execute("PRAGMA journal_mode=WAL")
    finally:
        db.close()


def _batch(make: Callable[[], tuple], size: Callable[[tuple], int], budget: int) -> tuple[list[tuple], int]:
    """Make rows until their estimated size reaches `budget`; return them and that size."""
    rows, used = [], 0
    while used < budget:
        row = make()
        rows.append(row)
        used += size(row)
    return rows, used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="replace an existing file (and its -wal, -shm)")
    args = parser.parse_args()
    if args.path.exists() and not args.force:
        sys.exit(f"{args.path} exists; pass --force to replace it")
    for suffix in ("", "-wal", "-shm", "-journal"):
        args.path.with_name(args.path.name + suffix).unlink(missing_ok=True)
    start = time.perf_counter()
    build(args.path, args.size_mib, args.seed)
    print(f"{args.path}: {args.path.stat().st_size / (1 << 20):.0f} MiB in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
