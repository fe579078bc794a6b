"""The two ways the README (Redis, loading a backup) gives to load a backup into a server, done as written, with real servers."""

from pathlib import Path
import shutil
import subprocess
import time

from jobs.engines import redis as engine
from tests.redis.servers import PASSWORD, everything, fill, redis_server, take


def test_way_a_replacing_dump_rdb_in_a_stopped_server_with_aof_restores_the_backup(filled_server, tmp_path: Path) -> None:
    backup = take(engine.open_source(filled_server.url(), tmp_path), tmp_path / "backup.rdb").path
    expected = everything(filled_server)
    target_dir = tmp_path / "target"
    with redis_server(target_dir, config=["appendonly yes"]) as target:
        target.client().set("newer", "data that the restore replaces")
        subprocess.run(["redis-cli", "-p", str(target.port), "SHUTDOWN", "NOSAVE"], capture_output=True, timeout=30)
        target.process.wait(30)
    shutil.copy(backup, target_dir / "dump.rdb")
    shutil.move(target_dir / "appendonlydir", target_dir / "appendonlydir.before-restore")
    with redis_server(target_dir, config=["appendonly no"]) as target:
        assert everything(target) == expected
        target.client().config_set("appendonly", "yes")
        for _ in range(300):
            persistence = target.client().info("persistence")
            if persistence["aof_rewrite_in_progress"] == 0 and persistence["aof_rewrite_scheduled"] == 0:
                break
            time.sleep(0.1)
    with redis_server(target_dir, config=["appendonly yes"]) as target:  # the AOF rewritten from memory holds it too
        assert everything(target) == expected


def test_way_b_a_target_reached_only_over_the_network_copies_the_backup_as_a_replica(filled_server, tmp_path: Path) -> None:
    backup = take(engine.open_source(filled_server.url(), tmp_path), tmp_path / "backup.rdb").path
    expected = everything(filled_server)
    temporary_dir = tmp_path / "temporary"
    temporary_dir.mkdir()
    shutil.copy(backup, temporary_dir / "dump.rdb")
    with redis_server(temporary_dir) as temporary, redis_server(tmp_path / "target", password=PASSWORD) as target:
        fill(target)
        target.client(2).set("only-on-target", "goes away")
        admin = target.client()
        admin.replicaof("127.0.0.1", temporary.port)
        deadline = time.monotonic() + 30
        while True:
            replication = admin.info("replication")
            if replication.get("master_link_status") == "up" and not replication.get("master_sync_in_progress"):
                break
            assert time.monotonic() < deadline, replication
            time.sleep(0.1)
        admin.replicaof("NO", "ONE")
        assert everything(target) == expected
        assert target.client(2).dbsize() == 0
        target.client().set("writable", "again")
