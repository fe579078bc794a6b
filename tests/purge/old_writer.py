"""An app that writes old-dated rows while a backup and its purge run (tests/purge/test_cli_bound.py).

Round robin until SIGTERM, one small transaction each, a line to OUT after each commit (flushed):
- `insert ID BODY`: a new event dated 40 days ago (an offline client syncing, a backfill);
- `update ID BODY`: a new body for an old event (`miss` lines when the purge already deleted it);
- `note ID EVENT_ID`: a note (ON DELETE CASCADE) on an old event.
Usage: old_writer.py sqlite PATH OUT  |  old_writer.py postgres URL OUT   (OUT.ready appears once it writes)
"""

from datetime import datetime, timedelta, timezone
import random
import signal
import sqlite3
import sys
import time

OLD_IDS = range(1, 2001)  # the old events of the test's database
PAUSE_S = 0.002


def main() -> None:
    engine, target, out_path = sys.argv[1:4]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    run = _sqlite(target) if engine == "sqlite" else _postgres(target)
    pick = random.Random(17)
    with open(out_path, "w") as out:
        open(out_path + ".ready", "w").close()
        index = 0
        while not stopping:
            old = (datetime.now(timezone.utc) - timedelta(days=40)).strftime("%Y-%m-%d %H:%M:%S")
            line = run(index % 3, index, old, pick.choice(OLD_IDS))
            out.write(line + "\n")
            out.flush()
            index += 1
            time.sleep(PAUSE_S)


def _sqlite(path: str):
    db = sqlite3.connect(path, timeout=60, isolation_level=None)
    db.execute("PRAGMA foreign_keys=ON")

    def run(op: int, index: int, old: str, event: int) -> str:
        try:
            if op == 0:
                cursor = db.execute("INSERT INTO events (created_at, body) VALUES (?, ?)", (old, f"w{index}"))
                return f"insert {cursor.lastrowid} w{index}"
            if op == 1:
                cursor = db.execute("UPDATE events SET body = ? WHERE id = ?", (f"u{index}", event))
                return f"update {event} u{index}" if cursor.rowcount else "miss"
            cursor = db.execute("INSERT INTO notes (event_id, body) VALUES (?, ?)", (event, f"n{index}"))
            return f"note {cursor.lastrowid} {event}"
        except sqlite3.IntegrityError:  # the event is gone already
            return "miss"

    return run


def _postgres(url: str):
    import psycopg

    db = psycopg.connect(url, autocommit=True)

    def run(op: int, index: int, old: str, event: int) -> str:
        try:
            if op == 0:
                row = db.execute("INSERT INTO events (created_at, body) VALUES (%s, %s) RETURNING id",
                                 (old + "+00", f"w{index}")).fetchone()
                return f"insert {row[0]} w{index}"
            if op == 1:
                cursor = db.execute("UPDATE events SET body = %s WHERE id = %s", (f"u{index}", event))
                return f"update {event} u{index}" if cursor.rowcount else "miss"
            row = db.execute("INSERT INTO notes (event_id, body) VALUES (%s, %s) RETURNING id",
                             (event, f"n{index}")).fetchone()
            return f"note {row[0]} {event}"
        except psycopg.errors.ForeignKeyViolation:
            return "miss"

    return run


if __name__ == "__main__":
    main()
