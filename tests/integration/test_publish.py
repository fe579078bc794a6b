"""Publishing order and what a run killed between the two renames leaves: an artifact without its manifest."""

import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import threading

import pytest

from jobs import pipeline, retention
from jobs.artifacts import temp_prefix
from jobs.destinations.local import LocalDestination
from jobs.engines.sqlite import SqliteSource
from tests.conftest import ROOT


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)


def one_backup(db: Path, backups: Path) -> tuple[Path, Path]:
    manifest = pipeline.take_backup(SqliteSource(db), pipeline.BackupSettings(backups, 3, retention.Policy(7, 3)), threading.Event())
    artifact = backups / manifest["artifact"]
    return artifact, artifact.with_name(artifact.name + ".json")


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith((".backup", ".install-id")))


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_an_orphan_with_its_complete_temporary_manifest_is_proved_and_published(tmp_path: Path, app_db: Path,
                                                                              encrypted: bool) -> None:
    backups = tmp_path / "backups"
    if encrypted:  # `….zst.age` with `….zst.age.json`: the same recovery
        from jobs import encryption

        _, recipient = encryption.new_identity()
        settings = pipeline.BackupSettings(backups, 3, retention.Policy(7, 3),
                                           recipients=tuple(encryption.parse_recipients(recipient)))
        made = pipeline.take_backup(SqliteSource(app_db), settings, threading.Event())
        artifact = backups / made["artifact"]
        manifest = artifact.with_name(artifact.name + ".json")
        assert artifact.name.endswith(".zst.age")
    else:
        artifact, manifest = one_backup(app_db, backups)
    leftover = backups / f".tmp-{dead_pid()}-0badcafe-{manifest.name}"
    manifest.rename(leftover)  # as if killed right after the artifact's rename
    pipeline.remove_stale(LocalDestination(backups))
    assert names(backups) == [artifact.name, manifest.name]
    assert json.loads(manifest.read_text())["artifact"] == artifact.name


def test_an_orphan_whose_leftover_manifest_does_not_match_is_removed(tmp_path: Path, app_db: Path) -> None:
    backups = tmp_path / "backups"
    artifact, manifest = one_backup(app_db, backups)
    data = json.loads(manifest.read_text())
    data["sha256"] = "0" * 64
    (backups / f".tmp-{dead_pid()}-0badcafe-{manifest.name}").write_text(json.dumps(data))
    manifest.unlink()
    pipeline.remove_stale(LocalDestination(backups))
    assert names(backups) == []


def test_an_artifact_without_a_manifest_that_this_user_did_not_write_privately_is_kept(tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    copied = backups / "app-20200101T000000Z.sqlite.zst"
    copied.write_bytes(b"copied here by a person")
    copied.chmod(0o644)
    ours = backups / "app-20200102T000000Z.sqlite.zst"
    ours.write_bytes(b"left by a killed run")
    ours.chmod(0o600)
    pipeline.remove_stale(LocalDestination(backups))
    assert names(backups) == [copied.name]


def test_a_live_runs_temporary_manifest_is_never_taken(tmp_path: Path, app_db: Path) -> None:
    backups = tmp_path / "backups"
    artifact, manifest = one_backup(app_db, backups)
    mine = backups / f"{temp_prefix()}{manifest.name}"
    manifest.rename(mine)  # a temporary of a process that still runs: not a leftover
    pipeline.remove_stale(LocalDestination(backups))
    assert not artifact.exists() and mine.exists()


KILL_BETWEEN_RENAMES = """
import os, signal, sys, threading
from pathlib import Path
from jobs import pipeline, retention
from jobs.engines.sqlite import SqliteSource

real = os.rename
def rename(src, dst):
    real(src, dst)
    if str(dst).endswith(".zst"):
        os.kill(os.getpid(), signal.SIGKILL)  # the artifact is in place, its manifest is not
os.rename = rename
pipeline.take_backup(SqliteSource(Path(sys.argv[1])), pipeline.BackupSettings(Path(sys.argv[2]), 3, retention.Policy(7, 3)), threading.Event())
"""


def test_a_backup_killed_between_the_two_renames_is_settled_by_the_next_backup(tmp_path: Path, app_db: Path, worker) -> None:
    backups = tmp_path / "backups"
    killed = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(app_db), str(backups)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    orphans = [name for name in names(backups) if name.endswith(".zst")]
    leftovers = [name for name in names(backups) if name.startswith(".tmp-") and name.endswith(".zst.json")]
    assert len(orphans) == 1 and len(leftovers) == 1 and not (backups / (orphans[0] + ".json")).exists()

    result = worker("backup", "--no-upload")
    assert result.code == 0, result.stderr
    assert result.event("backup.orphan_artifact")["action"] == "restored"
    assert (backups / (orphans[0] + ".json")).exists()
    listed = worker("list", "--json")
    assert len(json.loads(listed.stdout)) == 2
    assert worker("verify", orphans[0]).code == 0
    assert [name for name in names(backups) if name.startswith(".tmp-")] == []
