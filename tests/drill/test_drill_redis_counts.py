"""Issue 22 (from its review, Redis): the key counts a drill compares with are measured on what the RDB holds (the
backup walks the file as it streams, jobs.engines.rdb_keys), not read from the live server before SYNC: an app
writing while the backup runs does not make a sound backup fail its drill."""

import json
from pathlib import Path
import threading

from tests.conftest import run_worker
from tests.redis.servers import ADMIN, PASSWORD, fill, redis_server


def test_a_redis_backup_taken_while_the_app_writes_passes_its_drill(tmp_path: Path, worker_env) -> None:
    # The server waits 2 s before forking for a diskless SYNC, as a busy server or a replica delay would; the keys
    # the app writes in that window are in the RDB but not in the INFO keyspace read before SYNC.
    with redis_server(tmp_path / "source", config=["repl-diskless-sync-delay 2"]) as server:
        fill(server)
        stop = threading.Event()

        def write() -> None:
            client, number = server.client(0), 0
            while not stop.is_set():
                client.set(f"written-during-backup:{number}", "x")
                number += 1

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        try:
            env = {**worker_env, "BACKUP_SOURCE": server.url()}
            assert run_worker(["backup"], env, cwd=tmp_path).code == 0
        finally:
            stop.set()
            writer.join(10)
        result = run_worker(["drill", "--json"], env, cwd=tmp_path)
    document = json.loads(result.stdout)
    assert result.code == 0, document["sources"]["redis"]["reason"]


def test_a_backup_by_a_user_who_may_not_run_info_records_its_keys_and_passes_its_drill(tmp_path: Path, worker_env) -> None:
    # Before the counts came from the file, such a user's manifest recorded {} (no keys) and every drill of its
    # backups failed: the restored copy held keys where the manifest recorded none.
    config = [f"user backup on >{PASSWORD} -@all +sync +psync"]
    with redis_server(tmp_path / "source", password=ADMIN, config=config) as server:
        fill(server)
        expected = {"db0": server.client(0).dbsize(), "db1": server.client(1).dbsize()}
        env = {**worker_env, "BACKUP_SOURCE": server.url(f"backup:{PASSWORD}@")}
        assert run_worker(["backup"], env, cwd=tmp_path).code == 0
        result = run_worker(["drill", "--json"], env, cwd=tmp_path)
    manifest = json.loads(next((tmp_path / "backups").glob("*.rdb.zst.json")).read_text())
    assert manifest["rdb"]["keys"] == expected and manifest["rdb"]["expires"] == {"db0": 1, "db1": 0}
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["sources"]["redis"]["compared"] == f"{sum(expected.values())} keys in 2 database(s), as recorded"
