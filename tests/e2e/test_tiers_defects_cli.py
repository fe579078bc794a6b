"""Defects an adversarial review found in the retention tiers (issue 21), through the CLI: each kept as the test
that failed on the code before the fix."""

from datetime import datetime, timezone
import json
from pathlib import Path

from tests.e2e.test_tiers_cli import history


def test_status_and_prune_survive_a_manifest_dated_in_year_one_with_tiers_in_new_york(tmp_path: Path, worker,
                                                                                      app_db: Path) -> None:
    """One manifest whose `created_at` reads 0001-01-01 (untrusted input; its artifact is whole and its stamp of
    this year). With a tier in America/New_York, jobs.tiers.holders converts it to the zone's clock and
    OverflowError escapes: `status` ("status crashing on odd input") and `prune` (so every retention run) fail.
    Without a tier (main's rules) both work."""
    directory = tmp_path / "backups"
    made = history(worker, directory, datetime.now(timezone.utc))
    odd = made[min(made)]
    manifest_path = directory / f"{odd}.zst.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["created_at"] = "0001-01-01T00:00:00Z"
    manifest_path.write_text(json.dumps(manifest))
    env = {"BACKUP_KEEP_DAILY": "7", "BACKUP_TIMEZONE": "America/New_York"}

    assert worker("status").code == 0  # no tier: fine
    status = worker("status", env=env)
    assert status.code == 0, status.stderr
    assert "retention (volume)" in status.stdout
    pruned = worker("prune", "--dry-run", "--json", env=env)
    assert pruned.code == 0, pruned.stderr
    assert {row["id"] for row in json.loads(pruned.stdout)} == set(made.values())


def test_an_s3_tier_at_zero_without_a_bucket_is_the_same_as_unset(worker) -> None:
    """docs/retention.md: "A tier at `0` is the same as unset." S3_KEEP_DAILY=0 without S3_BUCKET is refused
    (exit 2) while unset is fine (worker/keeping.py bucket_keeping_without_bucket counts any non-empty value)."""
    assert worker("config").code == 0
    result = worker("config", env={"S3_KEEP_DAILY": "0"})
    assert result.code == 0, result.stderr
