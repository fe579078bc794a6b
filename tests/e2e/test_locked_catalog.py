"""A catalog locked by another process never holds a backup up: history is best effort, backups come first.
Through the CLI, with catalog.db locked from another connection (the bound is a behaviour, not a benchmark)."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
import sqlite3
import time

import pytest

BOUND_S = 10  # the old wait was 30 s per catalog access


@contextmanager
def catalog_locked(path: Path, how: str) -> Iterator[None]:
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute(f"BEGIN {how}")
    if how == "IMMEDIATE":
        holder.execute("INSERT INTO runs (run_id, job, started_at, outcome) VALUES ('held', 'other', '2026-01-01', 'running')")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.mark.parametrize("how", ["EXCLUSIVE", "IMMEDIATE"], ids=["nobody-may-read", "nobody-may-write"])
def test_a_locked_catalog_delays_a_backup_by_seconds_at_most_and_only_warns(tmp_path: Path, worker, how: str) -> None:
    assert worker("backup", "--no-upload").code == 0  # the catalog exists, with a row
    with catalog_locked(tmp_path / "backups" / "catalog.db", how):
        began = time.monotonic()
        result = worker("backup", "--no-upload", timeout=120)
        took = time.monotonic() - began
    assert result.code == 0, result.stderr
    assert took < BOUND_S, f"the backup took {took:.1f} s behind a locked catalog"
    assert result.event("job.succeeded")
    assert len(list((tmp_path / "backups").glob("app-*.sqlite.zst"))) == 2
    warnings = [e for e in result.events if e.get("level") == "warning" and e["event"].startswith("catalog.")]
    assert warnings and "locked" in " ".join(str(e.get("detail", "")) for e in warnings)


def test_history_and_status_answer_promptly_from_a_locked_catalog(tmp_path: Path, worker) -> None:
    assert worker("backup", "--no-upload").code == 0
    with catalog_locked(tmp_path / "backups" / "catalog.db", "EXCLUSIVE"):
        began = time.monotonic()
        status = worker("status", timeout=120)
        assert status.code == 0 and time.monotonic() - began < BOUND_S
