"""The backup volume as a user meets it: a directory that cannot be used, a volume too full to keep the app's
reserve, and a prune that must not pull a backup from under a running verify."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

COMMANDS = [
    ["backup", "--no-upload"],
    ["list"],
    ["verify", "--latest"],
    ["restore", "--latest", "--to", "out.db"],
    ["prune"],
    ["cleanup"],
    ["status"],
    ["config"],
    ["run"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: args[0])
def test_a_file_where_the_backup_directory_should_be_is_one_sentence_for_every_command(tmp_path: Path, worker, args) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for backup_dir in (blocker, blocker / "backups"):
        result = worker(*args, env={"BACKUP_DIR": str(backup_dir)}, timeout=60)
        assert result.code == 2, (args, result.stderr)
        assert "BACKUP_DIR" in result.stderr and str(blocker) in result.stderr and "point" in result.stderr
        assert "Traceback" not in result.stderr and "bug" not in result.stderr


@pytest.mark.parametrize("args", [c for c in COMMANDS if c[0] in ("backup", "verify", "restore", "prune", "run")],
                         ids=lambda args: args[0])
def test_a_directory_where_writes_fail_is_one_sentence_naming_it(tmp_path: Path, worker, args) -> None:
    # As root, modes are not enforced, so a read-only directory cannot be made with chmod; sysfs refuses new files
    # to root as well, which is the same failure a read-only or foreign-owned volume gives.
    unwritable = Path("/sys/kernel")
    probe = unwritable / "backup-worker-probe"
    with pytest.raises(OSError):
        probe.write_text("x")
    result = worker(*args, env={"BACKUP_DIR": str(unwritable)}, timeout=60)
    assert result.code in (1, 2), result.stderr
    sentences = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(sentences) == 1, result.stderr
    assert str(unwritable) in sentences[0]
    if args[0] in ("verify", "restore"):  # readers need no write access there (a read-only backup volume works)
        assert "no verified backups" in sentences[0]
    else:
        assert "write access" in sentences[0] or "read-only" in sentences[0]
    assert "Traceback" not in result.stderr and "bug" not in result.stderr


def test_a_backup_that_would_leave_less_than_min_free_is_refused_before_anything_is_written(tmp_path: Path, worker) -> None:
    free_mib = shutil.disk_usage(tmp_path).free >> 20
    result = worker("backup", "--no-upload", env={"BACKUP_MIN_FREE": f"{free_mib + 1024}MiB"})
    assert result.code == 1
    failed = result.event("job.failed")
    assert failed["stage"] == "preflight" and "BACKUP_MIN_FREE" in failed["reason"] and "MiB free of" in failed["reason"]
    assert [p for p in (tmp_path / "backups").iterdir() if p.name.endswith((".zst", ".json"))] == []
    assert worker("backup", "--no-upload", env={"BACKUP_MIN_FREE": "1MB"}).code == 0
    bad = worker("backup", "--no-upload", env={"BACKUP_MIN_FREE": "plenty"})
    assert bad.code == 2 and "BACKUP_MIN_FREE" in bad.stderr


def test_prune_does_not_delete_what_a_verify_is_reading(tmp_path: Path, worker) -> None:
    sys.path.insert(0, str(ROOT))
    from worker.lock import shared

    policy = {"BACKUP_RETENTION_DAYS": "0", "BACKUP_KEEP_MIN": "1"}
    for _ in range(2):
        assert worker("backup", "--no-upload").code == 0
    backups = tmp_path / "backups"
    before = sorted(p.name for p in backups.glob("*.zst"))
    with shared(backups):  # what a verify or restore holds while it reads an artifact
        pruned = worker("prune", env=policy)
        cycle = worker("backup", "--no-upload", env=policy)
    assert pruned.code == 1 and "a verify or restore is reading" in pruned.stderr
    assert set(before) <= {p.name for p in backups.glob("*.zst")}
    assert cycle.code == 0 and cycle.event("job.succeeded")["pruned"] == []
    assert "a verify or restore is reading" in cycle.event("retention.deferred")["reason"]
    assert worker("prune", env=policy).code == 0
    assert len(list(backups.glob("*.zst"))) == 1


def test_backup_json_on_failure_still_prints_one_document(tmp_path: Path, worker) -> None:
    result = worker("backup", "--no-upload", "--json", env={"BACKUP_SOURCE": f"sqlite:///{tmp_path / 'missing.db'}"})
    assert result.code == 1
    document = json.loads(result.stdout)
    assert document["outcome"] == "failed" and document["stage"] == "snapshot"
