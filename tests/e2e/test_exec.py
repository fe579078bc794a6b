"""`run --exec`: the worker starts a real app (tests/e2e/exec_app.py) as its child, as on Railway."""

from collections.abc import Iterator
from datetime import datetime
import json
import os
from pathlib import Path
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import ROOT, make_app_db

APP = Path(__file__).resolve().parent / "exec_app.py"


class Running:
    """`python -m worker run --exec …` as a subprocess, its stdout and stderr read as they come."""

    def __init__(self, command: str, env: dict[str, str], cwd: Path, new_session: bool = False) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "worker", "run", "--exec", command], env=env, cwd=cwd,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        start_new_session=new_session)
        self.events: list[dict] = []
        self.stderr: list[str] = []
        self.arrived = threading.Condition()
        self.readers = [threading.Thread(target=self._read_stdout, daemon=True),
                        threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self.readers:
            reader.start()

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            if line.startswith("{"):
                with self.arrived:
                    self.events.append(json.loads(line))
                    self.arrived.notify_all()

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr.append(line)

    def wait_for(self, name: str, timeout: float) -> dict:
        with self.arrived:
            found = self.arrived.wait_for(lambda: any(e["event"] == name for e in self.events), timeout)
            assert found, f"no {name!r} within {timeout} s; saw {[e['event'] for e in self.events]}; stderr {self.stderr}"
            return next(e for e in self.events if e["event"] == name)

    def finish(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        for reader in self.readers:
            reader.join(5)
        return code

    def names(self) -> list[str]:
        return [e["event"] for e in self.events]


@pytest.fixture
def launch(worker_env: dict[str, str], tmp_path: Path) -> Iterator:
    started: list[Running] = []

    def run(*app_args: str, env: dict[str, str] | None = None, new_session: bool = False) -> Running:
        command = shlex.join([sys.executable, str(APP), "--record", str(tmp_path / "record.jsonl"), *app_args])
        running = Running(command, {**worker_env, "EXEC_TEST_MARKER": "from-the-worker", **(env or {})}, tmp_path, new_session)
        started.append(running)
        return running

    yield run
    for running in started:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()
    for entry in records(tmp_path):  # nothing the tests started may outlive them
        if "pid" in entry and entry["event"] in ("started", "grandchild") and alive(entry["pid"]):
            os.kill(entry["pid"], signal.SIGKILL)


def records(tmp_path: Path) -> list[dict]:
    path = tmp_path / "record.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_record(tmp_path: Path, event: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [entry for entry in records(tmp_path) if entry["event"] == event]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"the app recorded no {event!r} within {timeout} s: {records(tmp_path)}")


def alive(pid: int) -> bool:
    """Return whether `pid` is a running process (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stamp(event: dict) -> float:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def test_the_catch_up_backup_runs_while_the_app_writes_and_is_consistent(tmp_path: Path, worker_env, launch) -> None:
    db = Path(worker_env["BACKUP_SOURCE"].removeprefix("sqlite:///"))
    db.unlink()
    make_app_db(db, rows=150_000)  # large enough (~25 MiB) that the app's writes overlap the backup
    schema = sqlite3.connect(db)  # the app's tables exist before the snapshot, whenever it comes
    schema.executescript("CREATE TABLE ledger (id INTEGER PRIMARY KEY, at REAL, note TEXT);"
                         "CREATE TABLE totals (k INTEGER PRIMARY KEY, n INTEGER); INSERT INTO totals VALUES (1, 0);")
    schema.close()
    running = launch("--db", str(db))
    succeeded = running.wait_for("job.succeeded", 60)
    began = stamp(running.wait_for("job.started", 1))
    time.sleep(0.5)
    running.process.send_signal(signal.SIGTERM)
    assert running.finish(12) == 0, running.stderr

    commits = next(entry for entry in records(tmp_path) if entry["event"] == "commits")
    during = [at for at in commits["times"] if began <= at <= stamp(succeeded)]
    assert during, "the app committed nothing while the backup ran; make the database larger"
    artifact = tmp_path / "backups" / succeeded["artifact"]
    raw = tmp_path / "restored.db"
    subprocess.run(["zstd", "-q", "-d", str(artifact), "-o", str(raw)], check=True)
    copy = sqlite3.connect(raw)
    assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    ledger, total = copy.execute("SELECT (SELECT count(*) FROM ledger), (SELECT n FROM totals)").fetchone()
    assert ledger == total, "the snapshot holds half a transaction"
    assert copy.execute("SELECT count(*) FROM messages").fetchone() == (150_000,)
    copy.close()
    live = sqlite3.connect(db)
    assert live.execute("SELECT count(*) FROM ledger").fetchone()[0] == commits["count"] >= ledger
    live.close()


def test_sigterm_reaches_the_app_once_and_both_stop_within_ten_seconds_with_exit_0(tmp_path: Path, launch) -> None:
    running = launch()
    app = wait_for_record(tmp_path, "started")
    running.wait_for("worker.started", 30)
    began = time.monotonic()
    running.process.send_signal(signal.SIGTERM)
    assert running.finish(12) == 0, running.stderr
    assert time.monotonic() - began < 10
    assert [e["signal"] for e in records(tmp_path) if e["event"] == "signal"] == ["SIGTERM"]
    assert not alive(app["pid"])
    assert app["marker"] == "from-the-worker", "the app did not get the worker's environment"
    ours = os.umask(0)
    os.umask(ours)
    assert app["umask"] == ours, "the app did not get the umask the worker was started with"
    assert app["pgid"] == app["pid"] and app["ppid"] == running.process.pid
    names = running.names()
    assert names.index("app.signal") < names.index("app.exited") < names.index("worker.stopped")
    assert running.events[-1] == {**running.events[-1], "event": "worker.stopped", "exit_code": 0}


def test_ctrl_c_in_a_terminal_reaches_the_app_exactly_once(tmp_path: Path, launch) -> None:
    # A terminal sends SIGINT to its whole foreground process group: here, the worker's own new group.
    running = launch(new_session=True)
    wait_for_record(tmp_path, "started")
    running.wait_for("worker.started", 30)
    os.killpg(running.process.pid, signal.SIGINT)
    assert running.finish(12) == 0, running.stderr
    assert [e["signal"] for e in records(tmp_path) if e["event"] == "signal"] == ["SIGINT"]


@pytest.mark.parametrize(("app_args", "expected"), [
    (("--seconds", "1", "--exit-code", "3"), 3),
    (("--seconds", "1", "--kill-self", str(int(signal.SIGKILL))), 128 + signal.SIGKILL),
])
def test_when_the_app_exits_the_worker_stops_its_jobs_and_exits_with_its_status(launch, app_args, expected) -> None:
    running = launch(*app_args)
    assert running.finish(30) == expected, running.stderr
    assert running.wait_for("app.exited", 1)["exit_code"] == expected
    stopped = running.wait_for("worker.stopped", 1)
    assert stopped["exit_code"] == expected


def test_a_command_that_cannot_start_is_exit_2_with_one_sentence(tmp_path: Path, worker) -> None:
    missing = worker("run", "--exec", "no-such-app-8e1f --port 8000")
    assert missing.code == 2
    assert missing.stderr.strip().count("\n") == 0 and "no-such-app-8e1f" in missing.stderr
    assert "Traceback" not in missing.stderr and "worker.started" not in missing.stdout
    assert not (tmp_path / "backups").exists(), "nothing may run when the app cannot start"

    script = tmp_path / "app.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    not_executable = worker("run", "--exec", str(script))
    assert not_executable.code == 2 and "not executable" in not_executable.stderr
    assert worker("run", "--exec", "").code == 2
    assert worker("run", "--exec", "uvicorn 'app:app").code == 2


def test_bad_configuration_is_exit_2_before_the_app_starts(tmp_path: Path, worker) -> None:
    marker = tmp_path / "app-ran"
    result = worker("run", "--exec", f"touch {marker}", env={"BACKUP_SCHEDULE": "every night"})
    assert result.code == 2 and "BACKUP_SCHEDULE" in result.stderr
    no_source = worker("run", "--exec", f"touch {marker}", env={"BACKUP_SOURCE": ""})
    assert no_source.code == 2 and "BACKUP_SOURCE" in no_source.stderr
    time.sleep(0.5)
    assert not marker.exists()


# A BACKUP_DIR below a file is a configuration error (exit 2 before the app starts, like any bad variable); a
# directory the kernel refuses at run time (/sys refuses new files even to root) is our failure while running.
@pytest.mark.parametrize("failure", ["a failed backup", "a backup directory that cannot be created"])
def test_our_own_failures_never_stop_the_app(tmp_path: Path, launch, failure) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = ({"BACKUP_SOURCE": f"sqlite:///{tmp_path / 'missing.db'}"} if failure == "a failed backup"
           else {"BACKUP_DIR": f"/sys/kernel/backup-worker-test-{os.getpid()}"})
    running = launch(env=env)
    app = wait_for_record(tmp_path, "started")
    running.wait_for("job.failed" if failure == "a failed backup" else "worker.degraded", 30)
    time.sleep(1.0)
    assert running.process.poll() is None and alive(app["pid"])
    running.process.send_signal(signal.SIGTERM)
    assert running.finish(12) == 0, running.stderr
    assert [e["signal"] for e in records(tmp_path) if e["event"] == "signal"] == ["SIGTERM"]


def test_an_app_that_ignores_sigterm_is_killed_with_its_process_group_within_ten_seconds(tmp_path: Path, launch) -> None:
    running = launch("--ignore-term", "--grandchild")
    grandchild = wait_for_record(tmp_path, "grandchild")
    app = wait_for_record(tmp_path, "started")
    running.wait_for("worker.started", 30)
    began = time.monotonic()
    running.process.send_signal(signal.SIGTERM)
    assert running.finish(12) == 128 + signal.SIGKILL
    assert time.monotonic() - began < 10
    assert "app.killed" in running.names()
    deadline = time.monotonic() + 5
    while (alive(app["pid"]) or alive(grandchild["pid"])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(app["pid"]) and not alive(grandchild["pid"])


def test_a_sigkilled_worker_does_not_leave_the_app_running(tmp_path: Path, launch) -> None:
    running = launch()
    app = wait_for_record(tmp_path, "started")
    running.wait_for("worker.started", 30)
    running.process.kill()
    running.finish(5)
    deadline = time.monotonic() + 10
    while alive(app["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(app["pid"]), "the app outlived its SIGKILLed worker"
    # The kernel sends the parent-death signal at each re-parenting: once per worker thread that dies after the
    # one that started the app, then once more; so at least one SIGTERM, and nothing else.
    received = {e["signal"] for e in records(tmp_path) if e["event"] == "signal"}
    assert received == {"SIGTERM"}


def test_as_pid_1_the_worker_reaps_what_the_app_orphans(tmp_path: Path, worker_env) -> None:
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no PID namespace here (unshare: {probe.stderr.decode().strip()}); needs CAP_SYS_ADMIN")
    record = tmp_path / "record.jsonl"
    command = shlex.join([sys.executable, str(APP), "--record", str(record), "--orphan"])
    result = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "worker", "run",
                             "--exec", command], env=worker_env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    started = next(entry for entry in records(tmp_path) if entry["event"] == "started")
    assert started["ppid"] == 1, "the worker was not PID 1"
    orphan = next(entry for entry in records(tmp_path) if entry["event"] == "orphan")
    assert orphan["reaped"], "the app's orphan stayed a zombie under the PID 1 worker"
