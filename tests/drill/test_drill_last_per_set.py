"""/healthz and status (issue 22, from its review): a set whose last drill failed stays unhealthy "until a drill of that set
passes", however many drills of other sets came since (`drill --source`, a script drilling one set at a time):
each set's last drill is found by a query of its own, not among the newest 50 drill runs."""

import json
from pathlib import Path

from tests.conftest import make_app_db, run_worker
from worker.actions.drill import drill_job
from worker.config import load_config
from worker.context import Context


def test_a_failed_drill_is_not_forgotten_after_fifty_drills_of_another_set(tmp_path: Path, worker_env) -> None:
    other = make_app_db(tmp_path / "other.db", rows=10)
    env = {**worker_env, "BACKUP_SOURCE_OTHER": f"sqlite:///{other}"}
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    manifest_path = sorted((tmp_path / "backups").glob("other-*.sqlite.zst.json"))[-1]
    manifest = json.loads(manifest_path.read_text())
    manifest["counts"]["tables"]["messages"] += 1
    manifest_path.write_text(json.dumps(manifest))
    assert run_worker(["drill", "--source", "other"], env, cwd=tmp_path).code == 1
    ctx = Context(config=load_config(env, tmp_path), cwd=tmp_path)
    for _ in range(50):
        assert drill_job(ctx, local=True, only=["app"]).ok
    status = run_worker(["status", "--json"], env, cwd=tmp_path)
    report = json.loads(status.stdout)
    assert "other" in report["drills"], "the failed drill of the set other is no longer shown"
    assert report["drills"]["other"]["outcome"] == "failed"
    assert report["healthy"] is False
