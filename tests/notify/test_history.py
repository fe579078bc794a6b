"""`history` and the last failure in `status`, from the catalog, through `python -m worker` as a user runs it."""

import json
from pathlib import Path

from worker.actions.history import KEYS


def fail_backup(worker, tmp_path: Path):
    result = worker("backup", "--no-upload", env={"BACKUP_SOURCE": f"sqlite:///{tmp_path / 'missing.db'}"})
    assert result.code == 1
    return result.event("job.failed")


def test_history_json_lists_a_success_and_a_failure_newest_first_with_every_key(tmp_path: Path, worker) -> None:
    ok = worker("backup", "--no-upload")
    assert ok.code == 0
    succeeded = ok.event("job.succeeded")
    failed = fail_backup(worker, tmp_path)
    result = worker("history", "--json")
    assert result.code == 0, result.stderr
    rows = json.loads(result.stdout)  # stdout is the document; log lines went to stderr
    assert [row["run_id"] for row in rows] == [failed["run_id"], succeeded["run_id"]]
    assert all(tuple(row) == KEYS for row in rows)
    newest, oldest = rows
    assert newest["job"] == "backup" and newest["outcome"] == "failed"
    assert newest["stage"] == failed["stage"] and newest["reason"] == failed["reason"]
    assert newest["duration_s"] == failed["duration_s"] and newest["size"] is None
    assert oldest["outcome"] == "succeeded" and oldest["stage"] is None and oldest["reason"] is None
    assert oldest["artifact"] == succeeded["artifact"] and oldest["size"] == succeeded["size"]
    assert oldest["raw_size"] == succeeded["raw_size"] and oldest["duration_s"] == succeeded["duration_s"]
    for row in rows:
        assert row["started_at"].endswith("Z") and row["finished_at"].endswith("Z")
        assert row["started_at"] <= row["finished_at"]
    assert newest["started_at"] >= oldest["started_at"]


def test_history_filters_by_job_and_age_and_prints_a_table(tmp_path: Path, worker) -> None:
    assert worker("backup", "--no-upload").code == 0
    fail_backup(worker, tmp_path)
    assert len(json.loads(worker("history", "--json", "--job", "backup", "--since", "1h").stdout)) == 2
    assert json.loads(worker("history", "--json", "--job", "cleanup").stdout) == []
    assert json.loads(worker("history", "--json", "--since", "0s").stdout) == []
    table = worker("history")
    assert table.code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["STARTED", "(UTC)", "JOB"] and len(lines) == 3
    assert " failed " in lines[1] and "missing.db" in lines[1]
    assert " succeeded " in lines[2] and ".sqlite.zst" in lines[2]
    assert "no recorded runs of cleanup" in worker("history", "--job", "cleanup").stdout


def test_history_with_a_bad_since_is_a_usage_error(worker) -> None:
    result = worker("history", "--since", "yesterday")
    assert result.code == 2 and "--since" in result.stderr and "Traceback" not in result.stderr


def test_history_works_without_a_source(worker) -> None:
    result = worker("history", "--json", env={"BACKUP_SOURCE": ""})
    assert result.code == 0 and json.loads(result.stdout) == []


def test_status_shows_the_last_failure_after_later_successes(tmp_path: Path, worker) -> None:
    failed = fail_backup(worker, tmp_path)
    junk = tmp_path / "junk"
    junk.mkdir()
    assert worker("cleanup", env={"CLEANUP_RULES": f"{junk}/*=1h"}).code == 0  # a later success of another job
    assert worker("backup", "--no-upload").code == 0  # and of the same job
    result = worker("status", "--json")
    report = json.loads(result.stdout)
    assert report["jobs"]["backup"]["outcome"] == "succeeded"
    failure = report["last_failure"]
    assert failure["job"] == "backup" and failure["run_id"] == failed["run_id"]
    assert failure["stage"] == failed["stage"] and failure["reason"] == failed["reason"]
    assert failure["started_at"].endswith("Z")
    assert report["disk"]["path"] == str(tmp_path / "backups") and report["disk"]["warn_percent"] == 80
    text = worker("status").stdout
    assert f"last failure: backup ({failure['started_at']}) at {failed['stage']}: {failed['reason']}" in text
    assert "disk: " in text and "% used (warn above 80%)" in text


def test_status_has_no_last_failure_when_nothing_failed(worker) -> None:
    assert worker("backup", "--no-upload").code == 0
    assert json.loads(worker("status", "--json").stdout)["last_failure"] is None
