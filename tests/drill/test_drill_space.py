"""A drill checks the free space on the backup volume before it fetches anything (issue 22): a volume that cannot
take the artifact and its unpacked copy fails the set's drill at preflight, with the numbers, and fetches nothing."""

from pathlib import Path
import shutil

import pytest

from tests.conftest import run_worker
from worker.actions.drill import drill_one
from worker.config import load_config
from worker.context import Context


def test_a_volume_too_full_for_the_drill_fails_it_at_preflight_before_anything_is_fetched(
        tmp_path: Path, worker_env, app_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_worker(["backup"], worker_env, cwd=tmp_path).code == 0
    ctx = Context(config=load_config(worker_env, tmp_path), cwd=tmp_path)
    fetched = []
    monkeypatch.setattr(shutil, "disk_usage", lambda _: type("Usage", (), {"free": 4 << 20, "total": 1 << 40})())
    monkeypatch.setattr("worker.actions.drill._copy", lambda *args: fetched.append(args))
    row = drill_one(ctx, ctx.source(), local=True)
    assert row["outcome"] == "failed" and row["stage"] == "preflight"
    assert row["reason"].startswith(f"{tmp_path / 'backups'} has 4 MiB free but this backup needs about ")
    assert ("to be drilled (the fetched artifact and its unpacked copy, and room for a backup of the set that may fall "
            "due meanwhile); free space or grow the volume") in row["reason"]
    assert fetched == []
    assert not [path for path in (tmp_path / "backups").iterdir() if path.name.startswith(".tmp-")]
