"""One behaviour suite for every destination: the local directory and an S3 bucket, on moto and on SeaweedFS (both
over real HTTP; see the `destination` fixture)."""

import os
from pathlib import Path
import stat
import threading

import pytest

from jobs.destinations.local import LocalDestination
from jobs.destinations.s3 import S3Destination
from jobs.errors import Cancelled, NotFound, StorageError, TooLarge
from jobs.manifest import MANIFEST_LIMIT

ARTIFACT = "app-20260101T020000Z.sqlite.zst"
MANIFEST = ARTIFACT + ".json"

Destination = LocalDestination | S3Destination


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def keys(destination: Destination) -> dict[str, int]:
    return {entry.key: entry.size for entry in destination.list()}


def test_put_then_get_returns_identical_bytes_in_a_new_private_file(destination: Destination, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    destination.put(write(tmp_path / "in", data), ARTIFACT, threading.Event())
    umask = os.umask(0o022)  # a common umask, which would leave a file readable by all
    try:
        destination.get(ARTIFACT, tmp_path / "out", threading.Event())
    finally:
        os.umask(umask)
    assert (tmp_path / "out").read_bytes() == data
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o600


def test_get_refuses_to_overwrite_an_existing_file(destination: Destination, tmp_path: Path) -> None:
    destination.put(write(tmp_path / "in", b"new"), ARTIFACT, threading.Event())
    existing = write(tmp_path / "out", b"precious")
    with pytest.raises(StorageError):
        destination.get(ARTIFACT, existing, threading.Event())
    assert existing.read_bytes() == b"precious"


def test_read_returns_a_small_object(destination: Destination, tmp_path: Path) -> None:
    destination.put(write(tmp_path / "m", b'{"id": "x"}'), MANIFEST, threading.Event())
    assert destination.read(MANIFEST) == b'{"id": "x"}'


def test_read_returns_an_object_of_exactly_the_manifest_limit_and_refuses_one_byte_more(
        destination: Destination, tmp_path: Path) -> None:
    data = os.urandom(MANIFEST_LIMIT)
    destination.put(write(tmp_path / "m", data), MANIFEST, threading.Event())
    assert destination.read(MANIFEST) == data
    destination.put(write(tmp_path / "m", data + b"}"), MANIFEST, threading.Event())
    with pytest.raises(TooLarge, match=MANIFEST):
        destination.read(MANIFEST)


def test_get_and_read_of_a_missing_key_raise_not_found_and_leave_no_file(destination: Destination, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        destination.get(ARTIFACT, tmp_path / "out", threading.Event())
    assert not (tmp_path / "out").exists()
    with pytest.raises(NotFound):
        destination.read(MANIFEST)


def test_list_returns_every_key_with_its_size(destination: Destination, tmp_path: Path) -> None:
    assert destination.list() == []
    destination.put(write(tmp_path / "a", b"a" * 10), ARTIFACT, threading.Event())
    destination.put(write(tmp_path / "m", b"m" * 3), MANIFEST, threading.Event())
    assert keys(destination) == {ARTIFACT: 10, MANIFEST: 3}


def test_delete_removes_the_key_and_a_missing_key_is_not_an_error(destination: Destination, tmp_path: Path) -> None:
    destination.put(write(tmp_path / "a", b"a"), ARTIFACT, threading.Event())
    destination.delete(ARTIFACT)
    destination.delete(ARTIFACT)
    assert destination.list() == []


def test_put_replaces_an_existing_object_whole(destination: Destination, tmp_path: Path) -> None:
    destination.put(write(tmp_path / "a", b"old" * 1000), ARTIFACT, threading.Event())
    destination.put(write(tmp_path / "b", b"new"), ARTIFACT, threading.Event())
    assert keys(destination) == {ARTIFACT: 3}
    assert destination.read(ARTIFACT) == b"new"


def test_a_cancelled_put_leaves_nothing_visible_under_the_key(destination: Destination, tmp_path: Path, tripwire) -> None:
    source = write(tmp_path / "big", os.urandom(3 << 20))
    with pytest.raises(Cancelled):
        destination.put(source, ARTIFACT, tripwire(after=1))
    assert destination.list() == []


@pytest.mark.parametrize("key", ["sub/app.zst", ".hidden"])
def test_keys_that_are_not_flat_file_names_are_refused(destination: Destination, tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        destination.put(write(tmp_path / "a", b"a"), key, threading.Event())
