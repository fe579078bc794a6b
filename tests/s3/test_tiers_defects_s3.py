"""Retention tiers on the bucket (issue 21), through `python -m worker` against moto's S3 server over HTTP: each
defect an adversarial review found, kept as the test that failed on the code before the fix."""

from datetime import datetime, timedelta, timezone
import json
from pathlib import Path

from tests.conftest import run_worker
from tests.e2e.test_tiers_cli import history
from tests.s3.test_tiers_s3 import remote_ids
from .test_cli_s3 import s3_env  # noqa: F401 (the fixture: the bucket and its credentials)


def with_old_safety_backups(tmp_path: Path, s3_env: dict[str, str]):
    """Back up a history of nightly backups into tmp_path/backups and turn those of 10 and 12 days ago into
    pre-restore safety backups; return the worker runner, the backups by time and the safety backups' ids."""
    directory = tmp_path / "backups"

    def worker(*args: str, env: dict[str, str] | None = None):
        return run_worker(list(args), {**s3_env, **(env or {})}, cwd=tmp_path)

    now = datetime.now(timezone.utc) - timedelta(minutes=10)
    made = history(worker, directory, now)
    safety = []
    for days in (10, 12):
        when = min(made, key=lambda moment: abs(moment - (now - timedelta(days=days))))
        manifest_path = directory / f"{made[when]}.zst.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["reason"] = "pre-restore"
        manifest_path.write_text(json.dumps(manifest))
        safety.append(made[when])
    return worker, made, safety


def test_a_bucket_that_keeps_everything_receives_the_old_safety_backups_before_the_volume_lets_them_go(
        tmp_path: Path, s3_env, s3_client, bucket) -> None:
    """S3_RETENTION_DAYS unset, no S3_KEEP_*: the bucket keeps everything. Two pre-restore safety backups 10 and 12
    days old are on the volume and not yet in the bucket. On main the cycle uploads them, then the volume's 7 days
    let them go (the bucket still has them). On `tiers` the bucket's keep-everything plan counts them as deleted at
    once (a safety backup is kept only 7 days, even by a policy that never prunes), so `offsite.sync` never sends
    them, and the volume's retention deletes the only copies."""
    worker, made, safety = with_old_safety_backups(tmp_path, s3_env)

    cycle = worker("backup")
    assert cycle.code == 0, cycle.stderr
    assert set(safety) <= remote_ids(s3_client, bucket), "the old safety backups never reached the bucket"


def test_prune_leaves_old_safety_backups_in_a_bucket_that_keeps_everything(tmp_path: Path, s3_env, s3_client,
                                                                         bucket) -> None:
    """The same through `prune`: safety backups already in a keep-everything bucket are deleted from it."""
    directory = tmp_path / "backups"
    worker, made, _ = with_old_safety_backups(tmp_path, s3_env)
    for ident in made.values():  # the bucket already holds every backup (uploaded when each was made)
        for name in (f"{ident}.zst", f"{ident}.zst.json"):
            s3_client.upload_file(str(directory / name), bucket, f"prod/app/{name}")

    pruned = worker("prune")
    assert pruned.code == 0, pruned.stderr
    assert set(made.values()) <= remote_ids(s3_client, bucket), pruned.stdout
