"""Retention tiers on the bucket (issue 21): `S3_KEEP_*` beside `S3_RETENTION_DAYS`, planned apart from the
volume's tiers, through `python -m worker` against moto's S3 server over HTTP."""

from datetime import datetime, timedelta, timezone
import json
from pathlib import Path

from tests.conftest import run_worker
from tests.e2e.test_tiers_cli import history
from .test_cli_s3 import s3_env  # noqa: F401 (the fixture: the bucket and its credentials)


def remote_ids(s3_client, bucket: str) -> set[str]:
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix="prod/app/").get("Contents", [])
    return {o["Key"].removeprefix("prod/app/").removesuffix(".zst") for o in listed if o["Key"].endswith(".zst")}


def test_the_bucket_keeps_its_own_longer_tiers_while_the_volume_keeps_a_few_days(tmp_path: Path, s3_env, s3_client, bucket) -> None:
    directory = tmp_path / "backups"

    def worker(*args: str, env: dict[str, str] | None = None):
        return run_worker(list(args), {**s3_env, **(env or {})}, cwd=tmp_path)

    made = history(worker, directory, datetime.now(timezone.utc) - timedelta(minutes=10))
    policy = {"BACKUP_KEEP_DAILY": "3", "S3_KEEP_DAILY": "14", "S3_KEEP_MONTHLY": "3"}
    cycle = worker("backup", env=policy)  # a whole cycle: upload, the bucket's retention, the volume's
    assert cycle.code == 0, cycle.stderr
    newest = cycle.event("job.succeeded")["artifact"].removesuffix(".zst")

    before = dict(made)  # the cycle's own backup fills no period in its cycle (jobs.retention): it is kept as the newest
    made[datetime.strptime(newest.split("-")[1].split(".")[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)] = newest

    def expected(days: int, months: int) -> set[str]:
        """The newest 3, the newest backup of each of the newest `days` UTC days and `months` months before the
        cycle's own."""
        day_list = sorted({when.date() for when in before}, reverse=True)[:days]
        month_list = sorted({(when.year, when.month) for when in before}, reverse=True)[:months]
        return ({made[when] for when in sorted(made)[-3:]}
                | {before[max(w for w in before if w.date() == day)] for day in day_list}
                | {before[max(w for w in before if (w.year, w.month) == month)] for month in month_list})

    assert {path.name.removesuffix(".zst") for path in directory.glob("*.zst")} == expected(3, 0)
    assert remote_ids(s3_client, bucket) == expected(14, 3)  # and what the bucket would delete at once was never sent

    rows = json.loads(worker("prune", "--dry-run", "--json", env=policy).stdout)
    assert {row["location"] for row in rows} == {"local", "s3"}
    assert all(row["keep"] for row in rows)  # the cycle already applied both plans
    there = [row for row in rows if row["location"] == "s3"]
    assert any(reason.startswith("monthly ") for row in there for reason in row["reasons"])
    status = json.loads(worker("status", "--json", env=policy).stdout)["retention"]
    assert status["s3"]["holds"]["daily"] == 14 and status["local"]["holds"]["daily"] == 3
    assert status["s3"]["policy"].startswith("newest 3, daily 14, monthly 3")
