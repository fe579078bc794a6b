"""A Redis-only worker, driven as a user drives it: `python -m worker …` against real redis-server processes."""

import json
from pathlib import Path
import subprocess
import sys
import time
from urllib.parse import quote

import pytest

from tests.conftest import run_worker
from tests.redis.servers import PASSWORD, command_lines, everything, fill, free_port, load_into_fresh_server, redis_server


def redis_env(worker_env: dict[str, str], url: str) -> dict[str, str]:
    return {**worker_env, "BACKUP_SOURCE": url}


def test_backup_verify_restore_to_and_load_give_back_every_key_and_the_password_is_never_shown(
        tmp_path: Path, worker_env: dict[str, str]) -> None:
    # A diskless sync delay keeps the worker running long enough to look at every command line meanwhile.
    with redis_server(tmp_path / "source", password=PASSWORD, config=["repl-diskless-sync-delay 2"]) as server:
        fill(server)
        env = redis_env(worker_env, server.url(f"default:{PASSWORD}@"))
        backup = subprocess.Popen([sys.executable, "-m", "worker", "backup"], env=env, cwd=tmp_path, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seen: list[str] = []
        while backup.poll() is None:
            seen += command_lines()
            time.sleep(0.05)
        out, err = backup.communicate()
        assert backup.returncode == 0, err
        assert seen and not [line for line in seen + command_lines() if PASSWORD in line]
        assert "RDB header and CRC64 passed" in out
        outputs = [out, err]

        verified = run_worker(["verify", "--latest"], env, cwd=tmp_path)
        assert verified.code == 0 and "RDB header and CRC64" in verified.stdout
        target = tmp_path / "restore" / "dump.rdb"
        target.parent.mkdir()
        restored = run_worker(["restore", "--latest", "--to", str(target)], env, cwd=tmp_path)
        assert restored.code == 0, restored.stderr
        shown = run_worker(["config"], env, cwd=tmp_path)
        assert "redis://default:***@127.0.0.1" in shown.stdout
        listed = run_worker(["list", "--json"], env, cwd=tmp_path)
        status = run_worker(["status", "--json"], env, cwd=tmp_path)
        for result in (verified, restored, shown, listed, status):
            outputs += [result.stdout, result.stderr]
        assert not [text for text in outputs if PASSWORD in text]

        (manifest,) = json.loads(listed.stdout)
        assert manifest["versions"]["server"].startswith("7.") and manifest["rdb"]["version"] >= 9
        assert manifest["rdb"]["keys"] == {"db0": server.client(0).dbsize(), "db1": server.client(1).dbsize()}
        assert json.loads(status.stdout)["healthy"] is True
        expected = everything(server)
        sizes = (server.client(0).dbsize(), server.client(1).dbsize())
    check = subprocess.run(["redis-check-rdb", str(target)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    with load_into_fresh_server(target, tmp_path / "fresh") as fresh:
        assert (fresh.client(0).dbsize(), fresh.client(1).dbsize()) == sizes
        assert everything(fresh) == expected


def test_restore_without_to_is_refused_before_anything_is_fetched_with_how_to_load_the_file(
        tmp_path: Path, worker_env: dict[str, str]) -> None:
    env = redis_env(worker_env, f"redis://:{PASSWORD}@127.0.0.1:{free_port()}")
    for args in (["restore", "--latest", "--yes"], ["restore", "redis-20261122T020000Z.rdb", "--yes"]):
        refused = run_worker(args, env, cwd=tmp_path)
        assert refused.code == 2, refused.stderr
        assert "--to PATH" in refused.stderr and "dump.rdb" in refused.stderr and "README" in refused.stderr
        assert not [e for e in refused.events if e.get("event") == "job.started"]  # nothing fetched or checked
        assert PASSWORD not in refused.stderr + refused.stdout


def test_an_unreachable_server_fails_the_backup_in_one_sentence(tmp_path: Path, worker_env: dict[str, str]) -> None:
    port = free_port()
    result = run_worker(["backup"], redis_env(worker_env, f"redis://:{PASSWORD}@127.0.0.1:{port}"), cwd=tmp_path)
    assert result.code == 1
    (line,) = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert f"cannot connect to the Redis server at 127.0.0.1:{port}" in line and "Traceback" not in result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    assert not list((tmp_path / "backups").glob("*.rdb.zst*"))


@pytest.mark.parametrize("encode", [False, True], ids=["as-written", "percent-encoded"])
def test_a_password_with_a_space_hash_question_mark_colon_and_percent_authenticates_and_is_never_shown(
        tmp_path: Path, worker_env: dict[str, str], encode: bool) -> None:
    odd = "Pw1kQ #?:%ü Xq9zR"
    with redis_server(tmp_path / "source", password=PASSWORD) as server:
        fill(server)
        server.client().config_set("requirepass", odd)
        server.password = odd
        env = redis_env(worker_env, server.url(f"default:{quote(odd, safe='') if encode else odd}@"))
        results = [run_worker([command], env, cwd=tmp_path) for command in ("backup", "config", "list")]
    assert results[0].code == 0, results[0].stderr
    assert "redis://default:***@127.0.0.1" in results[1].stdout
    assert not [half for half in ("Pw1kQ", "Xq9zR") for r in results if half in r.stdout + r.stderr]
