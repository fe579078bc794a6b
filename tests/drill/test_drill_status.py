"""The last drill of each set in `status`, `/healthz` and `/metrics` (issue 22): a failed last drill makes the
worker unhealthy (`drill_failed`, 503, with the reason) until a drill of that set passes again."""

import json
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_cli import read_events
from tests.notify.conftest import Receiver, free_port, receiver  # noqa: F401
from tests.notify.test_health import get, running, wait_for_health


def spoil_counts(backup_dir: Path) -> None:
    """Make the newest manifest on the volume record one row more than its backup holds."""
    manifest_path = sorted(backup_dir.glob("*.sqlite.zst.json"))[-1]
    manifest = json.loads(manifest_path.read_text())
    manifest["counts"]["tables"]["messages"] += 1
    manifest_path.write_text(json.dumps(manifest))


def test_a_failed_drill_shows_in_status_until_a_drill_passes_without_changing_its_exit_code(
        tmp_path: Path, worker, worker_env) -> None:
    env = {"DRILL_SCHEDULE": "0 4 * * 0"}
    assert worker("backup").code == 0
    spoil_counts(tmp_path / "backups")
    assert worker("drill", env=env).code == 1
    status = worker("status", "--json", env=env)
    assert status.code == 0  # SPEC: 1 only when stale
    report = json.loads(status.stdout)
    assert report["healthy"] is False and report["stale_reasons"] == {} and report["status"] == "drill_failed"
    assert report["drills"]["app"]["outcome"] == "failed" and report["drills"]["app"]["stage"] == "compare"
    assert "the last drill of app" in report["drill_failures"][0]
    assert "drill" in report["next_runs"]
    text = worker("status", env=env)
    assert text.code == 0
    assert "health: DRILL FAILED: the last drill of app" in text.stdout
    assert "last drill of app: failed" in text.stdout
    assert worker("backup").code == 0  # a new backup, recorded truly: its drill passes
    assert worker("drill", env=env).code == 0
    again = worker("status", "--json", env=env)
    assert again.code == 0, again.stdout
    assert json.loads(again.stdout)["drills"]["app"]["outcome"] == "succeeded"


def test_healthz_is_503_drill_failed_and_metrics_show_the_last_drill(tmp_path: Path, worker, worker_env) -> None:
    assert worker("backup").code == 0
    spoil_counts(tmp_path / "backups")
    assert worker("drill").code == 1
    port = free_port()
    env = {**worker_env, "HEALTH_PORT": str(port), "DRILL_SCHEDULE": "0 4 * * 0"}
    with running(env, tmp_path) as process:
        started = read_events(process, "worker.started", 30)[-1]
        assert started["schedules"]["drill"] == "0 4 * * 0"
        document = wait_for_health(port, 503, 30)
        assert document["status"] == "drill_failed"
        assert document["reason"].startswith("the last drill of app (app-") and "at compare" in document["reason"]
        assert document["drills"]["app"]["outcome"] == "failed"
        code, body = get(port, "/metrics")
        assert code == 200
        families = {family.name: family for family in text_string_to_metric_families(body.decode())}
        ages = {sample.labels["set"]: sample.value for sample in families["backup_worker_last_drill_age_seconds"].samples}
        assert set(ages) == {"app"} and ages["app"] >= 0
        runs = {(s.labels["set"], s.labels["outcome"]): s.value for s in families["backup_worker_drill_runs"].samples
                if s.name == "backup_worker_drill_runs_total"}
        assert runs == {("app", "failed"): 0.0, ("app", "succeeded"): 0.0}  # this process has not drilled yet


def test_a_failed_drill_is_notified_and_pinged_as_a_failure(tmp_path: Path, worker, receiver: Receiver) -> None:  # noqa: F811
    env = {"NOTIFY_WEBHOOK_URL": f"{receiver.url}/hook", "HEALTHCHECK_PING_URL": f"{receiver.url}/ping"}
    assert worker("backup").code == 0
    spoil_counts(tmp_path / "backups")
    before = len(receiver.requests)
    assert worker("drill", env=env).code == 1
    found = receiver.wait_for(before + 2)[before:]
    hooks = [request.json() for request in found if request.path == "/hook"]
    assert len(hooks) == 1 and hooks[0]["job"] == "drill" and hooks[0]["outcome"] == "failed"
    assert hooks[0]["stage"] == "compare" and "table messages has 1000 rows, the backup recorded 1001" in hooks[0]["text"]
    pings = [request for request in found if request.path.startswith("/ping")]
    assert [request.path for request in pings] == ["/ping/fail"]
    assert pings[0].body.decode().startswith("restore drill failed on ")
