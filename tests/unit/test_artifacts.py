from datetime import datetime, timedelta, timezone

import pytest

from jobs.artifacts import ARTIFACT_NAME, artifact_name, backup_id
from jobs.durations import format_duration, parse_duration
from jobs.files import remove_temporary
from jobs.manifest import parse_iso, utc_iso


def test_artifact_name_uses_the_utc_timestamp_and_kind() -> None:
    moment = datetime(2026, 11, 22, 3, 4, 5, tzinfo=timezone(timedelta(hours=1)))
    assert artifact_name("app", "sqlite", moment) == "app-20261122T020405Z.sqlite.zst"
    assert backup_id("app-20261122T020405Z.sqlite.zst") == "app-20261122T020405Z.sqlite"


@pytest.mark.parametrize(
    "name, ours",
    [
        ("app-20261122T020405Z.sqlite.zst", True),
        ("my_db-2-20261122T020405Z.pgdump.zst", True),
        ("app-20261122T020405Z.sqlite.zst.json", False),
        (".tmp-123-app-20261122T020405Z.sqlite.zst", False),
        ("app.db", False),
        ("app-2026-11-22.sqlite.zst", False),
    ],
)
def test_only_files_named_as_we_name_them_count_as_artifacts(name: str, ours: bool) -> None:
    assert bool(ARTIFACT_NAME.match(name)) is ours


def test_iso_timestamps_round_trip_in_utc() -> None:
    moment = datetime(2026, 11, 22, 2, 0, 0, tzinfo=timezone.utc)
    assert utc_iso(moment) == "2026-11-22T02:00:00Z"
    assert parse_iso("2026-11-22T02:00:00Z") == moment


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("26h", 93600), ("7d", 604800), (" 2h ", 7200)])
def test_durations_parse(text: str, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "26", "h", "1.5h", "-1h", "3w"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_durations_format_in_the_largest_exact_unit() -> None:
    assert [format_duration(parse_duration(t)) for t in ("26h", "90s", "1440m", "0s")] == ["26h", "90s", "1d", "0s"]


@pytest.mark.parametrize(
    "manifest, problem",
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"id": "a", "created_at": null, "sha256": "' + b"0" * 64 + b'", "size": 1, "format": {}, "source": {}}', "created_at"),
        (b'{"id": "a", "created_at": "2026-11-22T02:00:00Z", "sha256": "xyz", "size": 1, "format": {}, "source": {}}', "sha256"),
        (b'{"id": "a", "created_at": "2026-11-22T02:00:00Z", "sha256": "' + b"0" * 64 + b'", "size": "1", "format": {}, "source": {}}', "size"),
        (b'{"id": "a", "created_at": "yesterday", "sha256": "' + b"0" * 64 + b'", "size": 1, "format": {}, "source": {}}', "Invalid isoformat"),
    ],
)
def test_a_malformed_manifest_is_refused_with_a_reason(manifest: bytes, problem: str) -> None:
    from jobs.manifest import read_manifest

    with pytest.raises(ValueError, match=problem):
        read_manifest(manifest, "a-20261122T020000Z.sqlite.zst")


def test_one_pass_compression_keeps_the_error_that_stopped_it() -> None:
    import io
    import threading

    import pytest

    from jobs import compression
    from jobs.errors import IntegrityError, SourceError

    def refuse(_chunk: bytes) -> None:
        raise IntegrityError("the check said no")

    data = b"x" * (3 << 20)
    with pytest.raises(IntegrityError, match="the check said no"):
        compression.compress_stream(io.BytesIO(data), io.BytesIO(), 3, threading.Event(), size=len(data), feed=refuse)
    with pytest.raises(SourceError, match="ended after"):
        compression.compress_stream(io.BytesIO(data), io.BytesIO(), 3, threading.Event(), size=len(data) + 1)
    with pytest.raises(SourceError, match="grew"):
        compression.compress_stream(io.BytesIO(data), io.BytesIO(), 3, threading.Event(), size=len(data) - 1)


def test_one_pass_compression_writes_one_standard_frame_with_its_size_and_checksum() -> None:
    import io
    import threading

    import zstandard

    from jobs import compression

    data = bytes(range(256)) * 20000
    for size in (len(data), None):
        out = io.BytesIO()
        seen = []
        result = compression.compress_stream(io.BytesIO(data), out, 3, threading.Event(), size=size, feed=seen.append)
        frame = out.getvalue()
        params = zstandard.get_frame_parameters(frame)
        assert params.has_checksum and params.content_size == (len(data) if size else zstandard.CONTENTSIZE_UNKNOWN)
        assert b"".join(seen) == data and result.raw_size == len(data) and result.size == len(frame)
        assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(frame)).read() == data


def test_removing_a_temporary_never_follows_a_symlink_into_what_it_points_at(tmp_path) -> None:
    """A stale temporary name may be a symlink (planted, or left by anything): the link goes, its target stays."""
    app = tmp_path / "app-uploads"
    (app / "deep").mkdir(parents=True)
    (app / "deep" / "photo.jpg").write_bytes(b"the app's")
    (tmp_path / "notes.txt").write_text("the app's too")
    to_dir = tmp_path / ".tmp-1-0badcafe-snapshot-x"
    to_file = tmp_path / ".tmp-1-0badcafe-app.db"
    to_dir.symlink_to(app, target_is_directory=True)
    to_file.symlink_to(tmp_path / "notes.txt")
    remove_temporary(to_dir)
    remove_temporary(to_file)
    assert not to_dir.is_symlink() and not to_file.is_symlink()
    assert (app / "deep" / "photo.jpg").read_bytes() == b"the app's"
    assert (tmp_path / "notes.txt").read_text() == "the app's too"


def test_removing_a_temporary_takes_a_directory_whole_and_a_file(tmp_path) -> None:
    scratch = tmp_path / ".tmp-1-0badcafe-verify-x"
    (scratch / "inner").mkdir(parents=True)
    (scratch / "inner" / "raw").write_bytes(b"x" * 10)
    half = tmp_path / ".tmp-1-0badcafe-app-20260101T000000Z.sqlite.zst"
    half.write_bytes(b"half")
    remove_temporary(scratch)
    remove_temporary(half)
    remove_temporary(half)  # already gone: nothing to do, no error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("artifact, ident, encrypted", [
    ("app-20261122T020000Z.sqlite.zst", "app-20261122T020000Z.sqlite", False),
    ("app-20261122T020000Z.sqlite.zst.age", "app-20261122T020000Z.sqlite", True),
    ("shop-20261122T020000Z.pgdump.zst.age", "shop-20261122T020000Z.pgdump", True),
])
def test_an_encrypted_artifact_has_the_id_of_the_plain_one(artifact: str, ident: str, encrypted: bool) -> None:
    from jobs import artifacts

    assert artifacts.backup_id(artifact) == ident and artifacts.is_encrypted(artifact) is encrypted
    assert artifacts.parse(artifact) is not None and artifacts.parse_id(artifact) is not None
    assert artifacts.parse_id(artifact + ".json") == artifacts.parse_id(ident)


@pytest.mark.parametrize("name", ["app-20261122T020000Z.sqlite.age", "app-20261122T020000Z.sqlite.zst.age.age",
                                  "app-20261122T020000Z.sqlite.zst.gpg"])
def test_other_suffixes_are_no_artifacts(name: str) -> None:
    from jobs import artifacts

    assert artifacts.parse(name) is None and not artifacts.is_encrypted(name)
