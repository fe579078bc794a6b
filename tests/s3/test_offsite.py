"""Off-site logic over real backups: upload what the bucket lacks, in order, and restore only what checks out."""

import hashlib
import json
from pathlib import Path
import threading
from typing import Any

import pytest
import structlog

from jobs import offsite
from jobs.backups import Backup, list_backups
from jobs.compression import sha256_file
from jobs.destinations.local import LocalDestination
from jobs.destinations.s3 import S3Destination
from jobs.errors import Cancelled, IntegrityError, NotFound

Remote = LocalDestination | S3Destination
Local = tuple[LocalDestination, list[Backup]]


def ids(backups: list[Backup]) -> list[str]:
    return [backup.id for backup in backups]


def replace_remote(remote: Remote, key: str, data: bytes, tmp_path: Path) -> None:
    """Overwrite one object on the remote side, as damage in the bucket would."""
    staging = tmp_path / "staging"
    staging.write_bytes(data)
    remote.put(staging, key, threading.Event())
    staging.unlink()


def remote_bytes(remote: Remote, key: str, tmp_path: Path) -> bytes:
    copy = tmp_path / "remote-copy"
    remote.get(key, copy, threading.Event())
    data = copy.read_bytes()
    copy.unlink()
    return data


def corrupt(remote: Remote, backup: Backup, tmp_path: Path) -> None:
    """Flip one byte in the middle of the remote artifact, keeping its size."""
    copy = tmp_path / "corrupt-copy"
    remote.get(backup.artifact, copy, threading.Event())
    data = bytearray(copy.read_bytes())
    copy.unlink()
    data[len(data) // 2] ^= 0xFF
    replace_remote(remote, backup.artifact, bytes(data), tmp_path)


class Recording:
    """A destination that records the order of puts and delegates everything to another."""

    def __init__(self, inner: Remote) -> None:
        self.inner = inner
        self.location = inner.location
        self.puts: list[str] = []

    def put(self, path: Path, key: str, cancel: threading.Event) -> None:
        self.puts.append(key)
        self.inner.put(path, key, cancel)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_missing_remote_lists_what_the_bucket_lacks_oldest_first(local_backups: Local) -> None:
    _, backups = local_backups
    oldest, middle, newest = backups
    assert ids(offsite.missing_remote(list(reversed(backups)), [middle])) == [oldest.id, newest.id]
    assert offsite.missing_remote(backups, backups) == []
    assert ids(offsite.missing_remote(backups, [])) == ids(backups)


def test_sync_uploads_every_missing_backup_oldest_first_then_nothing(local_backups: Local, remote: Remote) -> None:
    local, backups = local_backups
    assert offsite.sync(local, remote, threading.Event()) == ids(backups)
    uploaded, problems = list_backups(remote)
    assert problems == []
    assert ids(uploaded) == ids(list(reversed(backups)))
    assert [(b.sha256, b.size) for b in uploaded] == [(b.sha256, b.size) for b in reversed(backups)]
    assert offsite.sync(local, remote, threading.Event()) == []


def test_sync_uploads_again_a_backup_whose_upload_was_interrupted(local_backups: Local, remote: Remote) -> None:
    local, backups = local_backups
    newest = backups[-1]
    remote.put(local.path(newest.artifact), newest.artifact, threading.Event())  # artifact without manifest
    assert offsite.sync(local, remote, threading.Event()) == ids(backups)
    assert ids(list_backups(remote)[0]) == ids(list(reversed(backups)))


def test_upload_puts_the_artifact_before_its_manifest(local_backups: Local, remote: Remote) -> None:
    local, backups = local_backups
    recording = Recording(remote)
    offsite.sync(local, recording, threading.Event())  # type: ignore[arg-type]
    expected = [key for backup in backups for key in (backup.artifact, backup.manifest_key)]
    assert recording.puts == expected


def test_a_cancel_during_the_artifact_upload_leaves_no_manifest(local_backups: Local, remote: Remote, tripwire: Any) -> None:
    local, backups = local_backups
    with pytest.raises(Cancelled):
        offsite.upload_backup(local, remote, backups[0], tripwire(after=0))
    assert [entry.key for entry in remote.list() if entry.key.endswith(".json")] == []
    assert list_backups(remote)[0] == []


def test_fetch_verified_returns_an_artifact_whose_checksum_matches(local_backups: Local, remote: Remote, tmp_path: Path) -> None:
    local, backups = local_backups
    offsite.sync(local, remote, threading.Event())
    workdir = tmp_path / "restore"
    workdir.mkdir()
    path = offsite.fetch_verified(remote, backups[-1], workdir, threading.Event())
    assert path.parent == workdir
    assert sha256_file(path) == backups[-1].sha256


def test_fetch_verified_refuses_a_corrupt_artifact_and_removes_the_download(local_backups: Local, remote: Remote, tmp_path: Path) -> None:
    local, backups = local_backups
    offsite.sync(local, remote, threading.Event())
    corrupt(remote, backups[-1], tmp_path)
    workdir = tmp_path / "restore"
    workdir.mkdir()
    with pytest.raises(IntegrityError) as raised:
        offsite.fetch_verified(remote, backups[-1], workdir, threading.Event())
    assert f"{backups[-1].artifact} in " in str(raised.value)
    assert "SHA-256" in str(raised.value)
    assert list(workdir.iterdir()) == []


def test_the_latest_intact_backup_is_restored_from_an_empty_volume(local_backups: Local, remote: Remote, tmp_path: Path) -> None:
    local, backups = local_backups
    offsite.sync(local, remote, threading.Event())
    workdir = tmp_path / "empty-volume"
    workdir.mkdir()
    backup, path, notes = offsite.pick_restorable(remote, workdir, threading.Event(), None, fallback=False)
    assert (backup.id, notes) == (backups[-1].id, [])
    assert sha256_file(path) == backups[-1].sha256


def test_a_corrupt_newest_backup_is_refused_unless_fallback_is_asked(local_backups: Local, remote: Remote, tmp_path: Path) -> None:
    local, backups = local_backups
    offsite.sync(local, remote, threading.Event())
    corrupt(remote, backups[-1], tmp_path)
    workdir = tmp_path / "restore"
    workdir.mkdir()
    with pytest.raises(IntegrityError) as raised:
        offsite.pick_restorable(remote, workdir, threading.Event(), None, fallback=False)
    message = str(raised.value)
    assert f"the newest backup {backups[-1].id} in " in message and "is damaged" in message
    assert "--fallback" in message and backups[-2].id in message
    assert list(workdir.iterdir()) == []

    backup, path, notes = offsite.pick_restorable(remote, workdir, threading.Event(), None, fallback=True)
    assert backup.id == backups[-2].id
    assert sha256_file(path) == backups[-2].sha256
    assert len(notes) == 1 and notes[0].startswith(f"skipped {backups[-1].id}: ")


def test_a_truncated_newest_backup_counts_as_damaged_too(local_backups: Local, remote: Remote, tmp_path: Path) -> None:
    local, backups = local_backups
    offsite.sync(local, remote, threading.Event())
    replace_remote(remote, backups[-1].artifact, local.path(backups[-1].artifact).read_bytes()[:-100], tmp_path)
    workdir = tmp_path / "restore"
    workdir.mkdir()
    with pytest.raises(IntegrityError) as raised:
        offsite.pick_restorable(remote, workdir, threading.Event(), None, fallback=False)
    assert backups[-1].artifact in str(raised.value) and "--fallback" in str(raised.value)
    backup, _, notes = offsite.pick_restorable(remote, workdir, threading.Event(), None, fallback=True)
    assert backup.id == backups[-2].id
    assert any(backups[-1].artifact in note for note in notes)


def test_an_artifact_without_manifest_is_an_unfinished_upload_not_damage(local_backups: Local, remote: Remote, tmp_path: Path) -> None:
    local, backups = local_backups
    for backup in backups[:-1]:
        offsite.upload_backup(local, remote, backup, threading.Event())
    remote.put(local.path(backups[-1].artifact), backups[-1].artifact, threading.Event())
    workdir = tmp_path / "restore"
    workdir.mkdir()
    backup, _, notes = offsite.pick_restorable(remote, workdir, threading.Event(), None, fallback=False)
    assert backup.id == backups[-2].id
    assert any("has no manifest" in note for note in notes)


def test_when_every_backup_is_damaged_even_fallback_fails(local_backups: Local, remote: Remote, tmp_path: Path) -> None:
    local, backups = local_backups
    offsite.sync(local, remote, threading.Event())
    for backup in backups:
        corrupt(remote, backup, tmp_path)
    workdir = tmp_path / "restore"
    workdir.mkdir()
    with pytest.raises(IntegrityError, match="none of the 3 verified backups"):
        offsite.pick_restorable(remote, workdir, threading.Event(), None, fallback=True)
    assert list(workdir.iterdir()) == []


def test_a_wanted_id_is_restored_or_not_found(local_backups: Local, remote: Remote, tmp_path: Path) -> None:
    local, backups = local_backups
    offsite.sync(local, remote, threading.Event())
    workdir = tmp_path / "restore"
    workdir.mkdir()
    backup, path, _ = offsite.pick_restorable(remote, workdir, threading.Event(), backups[0].id, fallback=False)
    assert backup.id == backups[0].id and sha256_file(path) == backups[0].sha256
    with pytest.raises(NotFound):
        offsite.pick_restorable(remote, workdir, threading.Event(), "app-20000101T000000Z", fallback=False)


def test_an_empty_remote_has_nothing_to_restore(remote: Remote, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no complete backup"):
        offsite.pick_restorable(remote, tmp_path, threading.Event(), None, fallback=True)


def test_a_name_the_bucket_holds_for_another_backup_is_never_overwritten_nor_counted_as_off_site(
        local_backups: Local, remote: Remote, tmp_path: Path) -> None:
    """A clock that went back can write the same artifact name twice: the bucket's backup of that name stays."""
    local, backups = local_backups
    offsite.sync(local, remote, threading.Event())
    theirs = remote_bytes(remote, backups[-1].artifact, tmp_path)
    # the local backup of that name is now another one: new bytes, its manifest says so
    artifact = local.path(backups[-1].artifact)
    manifest = json.loads(local.path(backups[-1].manifest_key).read_text())
    data = bytearray(artifact.read_bytes())
    data[-1] ^= 0xFF
    artifact.write_bytes(bytes(data))
    manifest["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    local.path(backups[-1].manifest_key).write_text(json.dumps(manifest))
    present: set[str] = set()
    assert offsite.sync(local, remote, threading.Event(), present=present) == []
    assert backups[-1].artifact not in present
    assert remote_bytes(remote, backups[-1].artifact, tmp_path) == theirs


@pytest.mark.parametrize("status, code, permissions", [(403, "AccessDenied", True), (400, "InvalidRequest", False),
                                                       (501, "NotImplemented", False)])
def test_a_failed_abort_of_stale_uploads_warns_with_its_cause_and_the_sync_goes_on(
        local_backups: Local, make_s3, flaky_proxy, client_for, status: int, code: str, permissions: bool) -> None:
    local, made = local_backups
    remote = make_s3(prefix="app", endpoint=flaky_proxy.url, client=client_for(flaky_proxy.url, max_attempts=1))
    # The first GET is the listing of unfinished uploads; every attempt at it fails (4 of a 5xx: FAST's attempts).
    flaky_proxy.fail, flaky_proxy.fail_status, flaky_proxy.fail_code = 4 if status >= 500 else 1, status, code
    flaky_proxy.fail_methods = {"GET"}
    with structlog.testing.capture_logs() as logs:
        uploaded = offsite.sync(local, remote, threading.Event())
    assert uploaded == ids(made)
    (warning,) = [entry for entry in logs if entry["event"] == "offsite.abort_stale_failed"]
    assert warning["log_level"] == "warning" and warning["cause"] == f"{code}, HTTP {status}"
    assert f"({code}, HTTP {status})" in warning["reason"] and "unfinished uploads" in warning["reason"]
    assert ("hint" in warning) is permissions
    assert ("ListBucketMultipartUploads" in str(warning)) is permissions
