"""Drills against SPEC (issue 22, from its review): configuration checked at start, `status`'s exit code, Redis
sets with more than 16 databases, one-sentence reasons, unreadable manifest counts, the Dockerfile."""

import json
from pathlib import Path
import socket
import threading

import pytest

from jobs.drill import redis as drill_redis
from jobs.drill.redis import load_failure, private_server
from jobs.errors import SourceError

from tests.conftest import run_worker
from tests.drill.test_drill_status import spoil_counts
from tests.redis.servers import redis_server


def test_config_rejects_a_drill_target_url_that_is_not_a_valid_postgresql_url(worker) -> None:
    """SPEC: invalid values are rejected at start with exit 2 and a message naming the variable. Only the scheme is
    checked; a bad port (or any URL libpq rejects) passes `config` and `run`, and surfaces only at the first drill,
    perhaps a week later."""
    result = worker("config", env={"DRILL_TARGET_URL": "postgresql://drill:s3cret@db.internal:notaport/scratch"})
    assert result.code == 2, result.stdout
    assert "DRILL_TARGET_URL" in result.stderr and "s3cret" not in result.stderr + result.stdout


def test_status_exit_code_follows_spec_when_backups_are_fresh_and_a_drill_failed(tmp_path: Path, worker) -> None:
    """SPEC's `status` row: exit "0, or 1 when the newest good backup is older than FRESHNESS_LIMIT". Scripts
    that alert on `status` for stale backups now get 1 for a failed drill while the backups are fresh (the SPEC
    table was not changed with the issue; /healthz is where SPEC puts drill_failed)."""
    assert worker("backup").code == 0
    spoil_counts(tmp_path / "backups")
    assert worker("drill").code == 1
    status = worker("status", "--json")
    report = json.loads(status.stdout)
    assert report["stale_reasons"] == {}
    assert status.code == 0


def test_a_redis_set_using_database_20_passes_its_drill(tmp_path: Path, worker_env) -> None:
    """The private redis-server starts with the default `databases 16`; an RDB holding db 20 (a server configured
    with `databases 32`) does not load, so a sound backup fails its drill."""
    with redis_server(tmp_path / "source", config=["databases 32"]) as server:
        server.client(0).set("zero", "0")
        server.client(20).set("twenty", "20")
        env = {**worker_env, "BACKUP_SOURCE": server.url()}
        assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    result = run_worker(["drill", "--json"], env, cwd=tmp_path)
    document = json.loads(result.stdout)
    assert result.code == 0, document["sources"]["redis"]["reason"]


def test_a_manifest_whose_counts_are_garbage_does_not_pass_as_a_backup_made_before_counts(
        tmp_path: Path, worker) -> None:
    """compare.recorded_rows turns a malformed `counts` (a count that is a string) into "no counts recorded", so the
    drill passes, saying the backup was "made before they were recorded" although its manifest (worker 0.1.0 with
    `counts`) did record them: a damaged manifest passes its drill unchecked."""
    assert worker("backup").code == 0
    manifest_path = sorted((tmp_path / "backups").glob("*.sqlite.zst.json"))[-1]
    manifest = json.loads(manifest_path.read_text())
    manifest["counts"]["tables"]["messages"] = "999"
    manifest_path.write_text(json.dumps(manifest))
    result = worker("drill", "--json")
    row = json.loads(result.stdout)["sources"]["app"]
    assert result.code == 1, row.get("compared")
    assert row["stage"] == "compare" and "records row counts that cannot be read" in row["reason"], row["reason"]


def test_the_dockerfile_installs_the_redis_server_a_redis_drill_starts() -> None:
    """Issue 22: "the RDB loaded into a private redis-server ... (the Dockerfile installs it)", and the drill's own
    error says "install it (apt-get install redis-server; the Dockerfile does)". The Dockerfile (the worker's own
    service for PostgreSQL and Redis sources) installs only the PostgreSQL client: every scheduled Redis drill in
    that deployment fails with "redis-server is not installed" and /healthz stays 503 drill_failed."""
    root = Path(__file__).resolve().parents[2]
    dockerfile = (root / "Dockerfile").read_text()
    assert "redis-server" in dockerfile


def test_a_redis_load_failure_is_one_sentence_without_the_servers_unrelated_warnings(tmp_path: Path) -> None:
    """redis-server logs warnings about the host (memory overcommit, on any host with vm.overcommit_memory=0) before
    the line that says why the file does not load: the reason carries only that line. A real redis-server is
    given a file that is not an RDB (a drill's proof would stop such a file before; this is the load step alone)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    rdb = scratch / "dump.rdb"
    rdb.write_bytes(b"REDIS0009" + b"\xfa\x09redis-ver\x057.0.0" + b"\x42" * 64)
    with pytest.raises(SourceError) as caught:
        with private_server(rdb, threading.Event()):
            pass
    reason = str(caught.value)
    assert reason.startswith("redis-server could not load the backup's RDB file")
    assert "overcommit" not in reason and "jemalloc" not in reason and " | " not in reason, reason
    assert len(reason.splitlines()) == 1


def test_the_reason_of_a_failed_load_is_the_fatal_line_of_the_log() -> None:
    log = ("123:C 06 Dec 2026 01:00:00.000 # WARNING Memory overcommit must be enabled! Without it, a background save "
           "may fail under low memory condition.\n"
           "123:M 06 Dec 2026 01:00:00.001 * Server initialized\n"
           "123:M 06 Dec 2026 01:00:00.002 # FATAL: Data file was created with a Redis server configured to handle "
           "more than 16 databases. Exiting\n")
    assert load_failure(log) == ("FATAL: Data file was created with a Redis server configured to handle more than "
                                 "16 databases. Exiting")


def test_a_redis_server_that_hangs_up_as_it_dies_is_reported_by_its_log_not_as_a_lost_connection(tmp_path: Path) -> None:
    """The drill's redis-server may accept the first PING's connection and exit as it finds the file unloadable:
    the reason is its log's FATAL line, not "the connection to the Redis server was lost" (a race seen under load)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = threading.Event()

    def hang_up() -> None:
        connection, _ = listener.accept()
        connection.close()  # as the dying server does
        accepted.set()

    threading.Thread(target=hang_up, daemon=True).start()
    (tmp_path / "redis.log").write_text("7:M 06 Dec 2026 04:00:00.000 # Short read or OOM loading DB. Unrecoverable error, aborting now.\n")

    class Dying:
        def poll(self) -> int | None:
            return 1 if accepted.is_set() else None

        def failure(self, code: int) -> str:
            return ""

    with pytest.raises(SourceError) as caught:
        drill_redis._ready(Dying(), listener.getsockname()[1], tmp_path, threading.Event())
    listener.close()
    assert str(caught.value).startswith("redis-server could not load the backup's RDB file (exited with 1: Short read or OOM")
