"""Issue 18 on Redis: a server emptied (FLUSHALL) after a backup that held keys is refused the same way, through
`python -m worker backup`; has_rows asks the server itself."""

import json
from pathlib import Path

from jobs.engines.redis import open_source
from tests.conftest import run_worker
from tests.redis.servers import fill, redis_server


def test_a_flushed_server_is_refused_at_preflight_naming_the_backup_with_keys_and_allowed_on_request(
        tmp_path: Path, worker_env: dict[str, str]) -> None:
    with redis_server(tmp_path / "source") as server:
        fill(server)
        env = {**worker_env, "BACKUP_SOURCE": server.url()}
        first = run_worker(["backup"], env, cwd=tmp_path)
        assert first.code == 0, first.stderr
        held = first.event("job.succeeded")["backup"]
        keys = sum(json.loads((tmp_path / "backups" / f"{held}.zst.json").read_text())["rdb"]["keys"].values())
        assert keys > 0
        server.client().flushall()

        refused = run_worker(["backup"], env, cwd=tmp_path)
        assert refused.code == 1
        failed = refused.event("job.failed")
        assert failed["stage"] == "preflight"
        assert failed["reason"].startswith(f"the Redis server at 127.0.0.1:{server.port} holds no keys while the set's "
                                           f"newest backup {held} holds {keys} keys")
        assert f"`python -m worker restore {held} --to " in failed["reason"] and "BACKUP_ALLOW_EMPTY=true" in failed["reason"]
        assert len(list((tmp_path / "backups").glob("*.zst"))) == 1

        allowed = run_worker(["backup"], {**env, "BACKUP_ALLOW_EMPTY": "true"}, cwd=tmp_path)
        assert allowed.code == 0, allowed.stderr
        assert allowed.event("job.succeeded")["flags"] == ["empty_allowed"]


def test_has_rows_sees_a_key_in_any_database(tmp_path: Path) -> None:
    with redis_server(tmp_path / "source") as server:
        source = open_source(server.url(), tmp_path)
        assert source.has_rows() is False
        server.client(db=5).set("only", "here")
        assert source.has_rows() is True
        server.client(db=5).delete("only")
        assert source.has_rows() is False
