"""One worker, several sources: BACKUP_SOURCE (SQLite) and BACKUP_SOURCE_CACHE (Redis), each its own backup set,
backed up in one cycle, listed, restored and judged separately."""

from datetime import datetime, timezone
import json
from pathlib import Path
import sqlite3
import subprocess
import sys
import threading

from tests.conftest import run_worker
from tests.redis.servers import PASSWORD, everything, fill, free_port, load_into_fresh_server, redis_server


def count(db: Path) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT count(*) FROM messages").fetchone()[0]


def with_cache(worker_env: dict[str, str], url: str) -> dict[str, str]:
    return {**worker_env, "BACKUP_SOURCE_CACHE": url}


def down_url() -> str:
    return f"redis://default:{PASSWORD}@127.0.0.1:{free_port()}"


def test_one_cycle_backs_up_both_sources_which_are_listed_and_restored_separately(tmp_path: Path, worker_env: dict[str, str]) -> None:
    with redis_server(tmp_path / "redis", password=PASSWORD) as server:
        fill(server)
        env = with_cache(worker_env, server.url(f"default:{PASSWORD}@"))
        backup = run_worker(["backup"], env, cwd=tmp_path)
        assert backup.code == 0, backup.stderr
        lines = backup.stdout.splitlines()
        assert len(lines) == 2 and lines[0].startswith("app: backup app-") and lines[1].startswith("cache: backup cache-")
        event = backup.event("job.succeeded")
        assert event["failed_sources"] == [] and set(event["sources"]) == {"app", "cache"}
        assert all(row["outcome"] == "succeeded" and row["artifact"] for row in event["sources"].values())
        expected = everything(server)

        listed = json.loads(run_worker(["list", "--json"], env, cwd=tmp_path).stdout)
        assert sorted(row["format"]["kind"] for row in listed) == ["rdb", "sqlite"]
        status = run_worker(["status", "--json"], env, cwd=tmp_path)
        report = json.loads(status.stdout)
        assert status.code == 0 and report["healthy"] and set(report["sets"]) == {"app", "cache"}
        assert all(row["healthy"] and row["newest_backup"] for row in report["sets"].values())

        copy = tmp_path / "app-copy.db"
        assert run_worker(["restore", "--latest", "--source", "app", "--to", str(copy)], env, cwd=tmp_path).code == 0
        assert count(copy) == 1000
        rdb = tmp_path / "dump.rdb"
        restored = run_worker(["restore", "--latest", "--source", "cache", "--to", str(rdb)], env, cwd=tmp_path)
        assert restored.code == 0, restored.stderr
        verified = run_worker(["verify", "--latest", "--source", "cache"], env, cwd=tmp_path)
        assert verified.code == 0 and verified.stdout.startswith("cache-")
        refused = run_worker(["restore", "--latest", "--source", "cache", "--yes"], env, cwd=tmp_path)
        assert refused.code == 2 and "--to PATH" in refused.stderr
    with load_into_fresh_server(rdb, tmp_path / "fresh") as fresh:
        assert everything(fresh) == expected


def test_with_redis_down_the_sqlite_source_is_still_backed_up_and_the_cycle_fails_naming_redis(
        tmp_path: Path, worker_env: dict[str, str]) -> None:
    env = with_cache(worker_env, down_url())
    result = run_worker(["backup"], env, cwd=tmp_path)
    assert result.code == 1
    assert result.stdout.startswith("app: backup app-")
    (failed_line,) = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert failed_line.startswith("cache: backup failed at stage snapshot: cannot connect to the Redis server")
    event = result.event("job.failed")
    assert event["failed_sources"] == ["cache"] and "cache" in event["reason"]
    assert event["sources"]["app"]["outcome"] == "succeeded" and event["sources"]["cache"]["stage"] == "snapshot"
    assert [p.name.split("-")[0] for p in (tmp_path / "backups").glob("*.zst")] == ["app"]
    assert PASSWORD not in result.stdout + result.stderr

    status = run_worker(["status"], env, cwd=tmp_path)
    assert status.code == 1 and "newest backup of cache: none" in status.stdout
    assert any(line.startswith("health: STALE") and line.endswith("of cache") for line in status.stdout.splitlines())


def test_latest_without_source_is_a_usage_error_naming_the_sets(tmp_path: Path, worker_env: dict[str, str]) -> None:
    env = with_cache(worker_env, down_url())
    assert run_worker(["backup"], env, cwd=tmp_path).code == 1  # app's backup is there, cache's is not
    for args in (["verify", "--latest"], ["restore", "--latest", "--to", str(tmp_path / "x.db")], ["restore", "--latest", "--yes"]):
        refused = run_worker(args, env, cwd=tmp_path)
        assert refused.code == 2, args
        assert "app (sqlite)" in refused.stderr and "cache (rdb)" in refused.stderr and "--source" in refused.stderr
    assert not (tmp_path / "x.db").exists()


def test_two_sources_naming_one_set_is_a_config_error_naming_both(tmp_path: Path, worker_env: dict[str, str]) -> None:
    result = run_worker(["backup"], {**worker_env, "BACKUP_SOURCE_APP": down_url()}, cwd=tmp_path)
    assert result.code == 2
    assert "BACKUP_SOURCE and BACKUP_SOURCE_APP both name the backup set 'app'" in result.stderr
    assert PASSWORD not in result.stderr


def test_catch_up_at_start_backs_up_only_the_sets_without_a_fresh_backup(tmp_path: Path, worker_env: dict[str, str]) -> None:
    from worker.context import Context
    from worker.config import load_config
    from worker.service import needs_catch_up, stale_sets

    with redis_server(tmp_path / "redis") as server:
        env = with_cache(worker_env, server.url())
        assert run_worker(["backup"], {**env, "BACKUP_SOURCE_CACHE": down_url()}, cwd=tmp_path).code == 1
        ctx = Context(config=load_config(env, cwd=tmp_path), cwd=tmp_path)
        now = datetime.now(timezone.utc)
        assert list(stale_sets(ctx, now)) == ["cache"]
        catch_up, why = needs_catch_up(ctx, now)
        assert catch_up and why.startswith("cache: there is no verified backup")
        assert run_worker(["backup"], env, cwd=tmp_path).code == 0
        assert needs_catch_up(ctx, datetime.now(timezone.utc))[0] is False


def test_the_running_worker_catches_up_a_set_that_has_no_backup(tmp_path: Path, worker_env: dict[str, str]) -> None:
    with redis_server(tmp_path / "redis") as server:
        env = with_cache(worker_env, server.url())
        assert run_worker(["backup"], {**env, "BACKUP_SOURCE_CACHE": down_url()}, cwd=tmp_path).code == 1
        process = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env, cwd=tmp_path,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        watchdog = threading.Timer(120, process.kill)  # a worker that never reports ends the read below
        watchdog.start()
        try:
            events = []
            for line in process.stdout:
                if line.startswith("{"):
                    events.append(json.loads(line))
                    if events[-1]["event"] in ("job.succeeded", "job.failed"):
                        break
        finally:
            watchdog.cancel()
            process.terminate()
            process.wait(20)
        started = next(e for e in events if e["event"] == "worker.started")
        assert started["catch_up"] is True and set(started["sources"]) == {"app", "cache"}
        assert events[-1]["event"] == "job.succeeded" and list(events[-1]["sources"]) == ["cache"]
