"""End-to-end PostgreSQL tests: `python -m worker …` as a user runs it, against the real server; S3 through
moto's server (the fixtures of tests/s3)."""

from collections.abc import Callable
import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, Result, run_worker
from tests.s3.conftest import (ACCESS_KEY, REGION, SECRET, aws_env, boto_session, bucket, client_for,  # noqa: F401
                               moto_endpoint, s3_client, s3_endpoint, s3_server)

_CLEARED = ("BACKUP_", "S3_", "CLEANUP_", "AWS_", "CATALOG_", "LOG_", "DATABASE_URL", "FRESHNESS_", "RAILWAY_",
            "PG_BIN_DIR", "PGPASSWORD", "RETENTION_RULES", "NOTIFY_", "HEALTH")


def base_env(tmp_path: Path, source_url: str | None, **extra: str) -> dict[str, str]:
    """An environment for the worker: DATABASE_URL (if given), a private backup directory, JSON logs."""
    import os

    env = {key: value for key, value in os.environ.items() if not key.startswith(_CLEARED)}
    env.update({"BACKUP_DIR": str(tmp_path / "backups"), "PYTHONPATH": str(ROOT)})
    if source_url:
        env["DATABASE_URL"] = source_url
    env.update(extra)
    return env


def s3_settings(endpoint: str, bucket_name: str) -> dict[str, str]:
    return {"S3_BUCKET": bucket_name, "S3_PREFIX": "pg", "S3_ENDPOINT_URL": endpoint, "S3_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., Result]:
    """Run `python -m worker ARGS` with an environment (see base_env) in the test's directory."""

    def call(*args: str, env: dict[str, str], **kwargs: object) -> Result:
        return run_worker(list(args), env, cwd=tmp_path, **kwargs)

    return call


def manifests(backup_dir: Path) -> list[dict]:
    """Return the manifests in a backup directory, oldest first."""
    return [json.loads(path.read_text()) for path in sorted(backup_dir.glob("*.zst.json"))]


def plain_lines(result: Result) -> list[str]:
    """Return stderr's lines that are not JSON log events: what a person reads."""
    return [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("{")]
