"""A concurrent app writer for the tests and the benchmark: small transactions that keep an invariant.

Every transaction inserts one ledger row and bumps totals.n by one, so in any consistent copy
`SELECT count(*) FROM ledger` equals `SELECT n FROM totals`. Each commit's latency (ms) and wall time go
to the output file as `<time> <latency>` lines when the writer stops (SIGTERM) or after --seconds. With
--committed PATH, the note of every committed row (unique: `<pid>-<n>`) goes there too, one per line.
"""

import argparse
import os
import signal
import sqlite3
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("out")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--pause", type=float, default=0.002)
    parser.add_argument("--committed", help="write the note of every committed row here when stopping")
    args = parser.parse_args()
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    db = sqlite3.connect(args.db, timeout=60, isolation_level=None)
    db.execute("CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY, at REAL, note TEXT)")
    db.execute("CREATE TABLE IF NOT EXISTS totals (k INTEGER PRIMARY KEY, n INTEGER)")
    db.execute("INSERT OR IGNORE INTO totals VALUES (1, (SELECT count(*) FROM ledger))")
    samples = []
    notes = []
    deadline = time.monotonic() + args.seconds
    with open(args.out + ".ready", "w"):
        pass
    while not stopping and time.monotonic() < deadline:
        began = time.perf_counter()
        note = f"{os.getpid()}-{len(samples)}"
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO ledger (at, note) VALUES (?, ?)", (time.time(), note.ljust(200, "x")))
        db.execute("UPDATE totals SET n = n + 1 WHERE k = 1")
        db.execute("COMMIT")
        samples.append((time.time(), (time.perf_counter() - began) * 1000))
        notes.append(note)
        time.sleep(args.pause)
    db.close()
    with open(args.out, "w") as out:
        out.writelines(f"{at:.6f} {ms:.3f}\n" for at, ms in samples)
    if args.committed:
        with open(args.committed, "w") as out:
            out.writelines(note + "\n" for note in notes)


if __name__ == "__main__":
    main()
