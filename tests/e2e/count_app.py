"""A small app for restore-at-start tests: when it starts, it records (one JSON line in --record) how many rows
its SQLite database's table holds, or that the database is missing, then runs until SIGTERM or SIGINT.

    --db PATH       the SQLite database it reads (opened read-only: a missing file is never created)
    --table NAME    the table it counts (default: messages)
"""

import argparse
import json
import os
import signal
import sqlite3
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--table", default="messages")
    args = parser.parse_args()
    entry: dict[str, object] = {"event": "started", "pid": os.getpid(), "at": time.time()}
    if not os.path.exists(args.db):
        entry["db"] = "missing"
    else:
        try:
            with sqlite3.connect(f"file:{args.db}?mode=ro", uri=True) as connection:
                entry["rows"] = connection.execute(f'SELECT count(*) FROM "{args.table}"').fetchone()[0]
        except sqlite3.Error as error:
            entry["db"] = f"unreadable: {error}"
    with open(args.record, "a") as out:
        out.write(json.dumps(entry) + "\n")
    stopping: list[int] = []
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda n, _f: stopping.append(n))
    while not stopping:
        time.sleep(0.05)
    sys.exit(0)


if __name__ == "__main__":
    main()
