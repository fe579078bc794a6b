"""A small app for `run --exec` tests. It records what happens to it, one JSON object per line, in --record.

    --db PATH          write to a SQLite database until stopped: each transaction inserts one ledger row and
                       bumps totals.n, so in any consistent copy count(ledger) == totals.n
    --exit-code N      exit with N after --seconds (default: run until a signal)
    --ignore-term      ignore SIGTERM and SIGINT (the worker must SIGKILL it)
    --grandchild       start a child in the same process group that also ignores SIGTERM, and record its pid
    --orphan           start a short-lived grandchild through an intermediate that exits at once (so it is
                       re-parented), then record whether its zombie is reaped
    --kill-self N      end by signal N instead of exiting
"""

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time


def record(path: str, **fields: object) -> None:
    with open(path, "a") as out:
        out.write(json.dumps({"at": time.time(), **fields}) + "\n")


def zombie_gone(pid: int, seconds: float) -> bool:
    """Return whether /proc/PID disappears (its zombie was reaped) within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.1)
    return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", required=True)
    parser.add_argument("--db")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--grandchild", action="store_true")
    parser.add_argument("--orphan", action="store_true")
    parser.add_argument("--kill-self", type=int)
    args = parser.parse_args()
    stopping: list[str] = []

    def on_signal(number: int, _frame: object) -> None:
        record(args.record, event="signal", signal=signal.Signals(number).name)
        if not args.ignore_term:
            stopping.append(signal.Signals(number).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    umask = os.umask(0)
    os.umask(umask)
    record(args.record, event="started", pid=os.getpid(), pgid=os.getpgrp(), ppid=os.getppid(), umask=umask,
           marker=os.environ.get("EXEC_TEST_MARKER"))
    if args.grandchild:
        grandchild = subprocess.Popen([sys.executable, "-c",
                                       "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
        record(args.record, event="grandchild", pid=grandchild.pid)
    if args.orphan:
        reader, writer = os.pipe()
        intermediate = os.fork()
        if intermediate == 0:
            orphan = os.fork()
            if orphan == 0:
                time.sleep(0.5)
                os._exit(0)
            os.write(writer, str(orphan).encode())
            os._exit(0)
        os.waitpid(intermediate, 0)
        orphan = int(os.read(reader, 32))
        time.sleep(1.0)  # the orphan has exited by now: a zombie until its new parent reaps it
        record(args.record, event="orphan", pid=orphan, reaped=zombie_gone(orphan, 8.0))
        return

    db = None
    if args.db:
        db = sqlite3.connect(args.db, timeout=60, isolation_level=None)
        db.execute("CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY, at REAL, note TEXT)")
        db.execute("CREATE TABLE IF NOT EXISTS totals (k INTEGER PRIMARY KEY, n INTEGER)")
        db.execute("INSERT OR IGNORE INTO totals VALUES (1, (SELECT count(*) FROM ledger))")
    commits: list[float] = []
    deadline = time.monotonic() + args.seconds
    while not stopping and time.monotonic() < deadline:
        if db is None:
            time.sleep(0.05)
            continue
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO ledger (at, note) VALUES (?, ?)", (time.time(), "x" * 200))
        db.execute("UPDATE totals SET n = n + 1 WHERE k = 1")
        db.execute("COMMIT")
        commits.append(time.time())
        time.sleep(0.002)
    if db is not None:
        db.close()
        record(args.record, event="commits", first=commits[0] if commits else None,
               last=commits[-1] if commits else None, count=len(commits), times=commits)
    record(args.record, event="exiting", stopping=stopping)
    if args.kill_self:
        os.kill(os.getpid(), args.kill_self)
        time.sleep(5)
    sys.exit(args.exit_code)


if __name__ == "__main__":
    main()
