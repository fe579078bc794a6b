"""A stop request mid-drill (issue 22): SIGTERM ends a one-shot `drill` promptly, as a failed run that says it
stopped, and leaves no scratch database, no scratch file and no redis-server behind."""

import json
import os
from pathlib import Path
import signal
import socket
import subprocess
import sys

from tests.conftest import run_worker
from tests.drill.conftest import scratch_databases, temporaries
from tests.postgres.conftest import url_for
from tests.redis.servers import fill, redis_server


def drill_until(env: dict[str, str], cwd: Path, event: str) -> tuple[subprocess.Popen, dict, list[str]]:
    """Start `drill` and read its log until `event`; return the process, that event and the lines read."""
    process = subprocess.Popen([sys.executable, "-m", "worker", "drill"], env=env, cwd=cwd, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.startswith("{") and json.loads(line).get("event") == event:
            return process, json.loads(line), seen
    process.wait(30)
    raise AssertionError(f"no {event} in {seen}")


def test_sigterm_during_a_postgresql_drill_drops_the_scratch_database(tmp_path: Path, worker_env, make_db) -> None:
    app = make_db("big", populated=True, events=150_000)
    env = {**worker_env, "BACKUP_SOURCE": url_for(app)}
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    process, created, _ = drill_until(env, tmp_path, "drill.scratch_created")
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 1, rest
    assert "the worker is stopping" in rest and "Traceback" not in rest
    assert created["database"].startswith(f"{app}_drill_")
    assert scratch_databases(app) == []
    assert temporaries(tmp_path / "backups") == []


def test_sigterm_during_a_redis_drill_leaves_no_server_and_no_scratch_file(tmp_path: Path, worker_env) -> None:
    with redis_server(tmp_path / "source") as server:
        fill(server)
        env = {**worker_env, "BACKUP_SOURCE": server.url()}
        assert run_worker(["backup"], env, cwd=tmp_path).code == 0
        process, started, _ = drill_until(env, tmp_path, "drill.redis_started")
        os.kill(process.pid, signal.SIGTERM)
        _, rest = process.communicate(timeout=60)
    assert process.returncode in (0, 1), rest  # the signal may come after the last key was counted
    assert "Traceback" not in rest
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", started["port"])) != 0  # the drill's redis-server is gone
    assert temporaries(tmp_path / "backups") == []




def test_run_drills_on_its_schedule_and_a_sigterm_mid_drill_stops_it_leaving_no_scratch_database(
        tmp_path: Path, worker_env, make_db) -> None:
    app = make_db("scheduled", populated=True, events=150_000)
    env = {**worker_env, "BACKUP_SOURCE": url_for(app), "DRILL_SCHEDULE": "* * * * *"}
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0  # fresh: no catch-up backup at start
    process = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env, cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = []
        for line in process.stdout:  # the drill starts at the next full minute
            seen.append(json.loads(line))
            if seen[-1].get("event") == "drill.scratch_created":
                break
        assert seen[-1].get("event") == "drill.scratch_created", seen
        assert [event["job"] for event in seen if event.get("event") == "job.started"] == ["drill"]
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    events = [json.loads(line) for line in rest.splitlines() if line.startswith("{")]
    assert [event["event"] for event in events if event["event"].startswith("job.")][-1] == "job.failed"
    assert "worker.stopped" in [event["event"] for event in events]
    assert scratch_databases(app) == []
    assert temporaries(tmp_path / "backups") == []
