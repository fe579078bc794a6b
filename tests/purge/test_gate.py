"""The gate between a backup cycle and table retention, with the real pipeline: rows are deleted only after a
cycle whose backup passed its check (and was uploaded, with S3), and that backup still holds every deleted row."""

from datetime import timedelta
from pathlib import Path
import socket
import sqlite3
import threading

import pytest
import zstandard

from jobs import pipeline, retention
from jobs.destinations.s3 import Retry, S3Destination
from jobs.engines.sqlite import SqliteSource
from jobs.errors import UploadError
from jobs.purge import held_from_cycle, parse_retention_rules, purge, purge_fields, should_purge
from tests.purge.conftest import NOW, iso_variants, make_sqlite, parse_moment, spanning_moments

RULES = parse_retention_rules("events.created_at=30d")


def app_with_events(path: Path) -> int:
    db = make_sqlite(path, "CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL);")
    db.executemany("INSERT INTO events (created_at) VALUES (?)",
                   [(iso_variants(moment, index),) for index, moment in enumerate(spanning_moments())])
    db.close()
    return len(spanning_moments())


def test_after_a_checked_backup_old_rows_are_purged_and_that_backup_still_holds_them(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    total = app_with_events(path)
    backups = tmp_path / "backups"
    source = SqliteSource(path)
    with pipeline.kept_snapshot(backups) as kept:
        cycle = pipeline.run_cycle(source, pipeline.BackupSettings(backups, 3, retention.Policy(7, 3)),
                                   threading.Event(), keep_snapshot=kept)
        allowed, reason = should_purge(cycle, remote=False)
        assert allowed, reason
        assert kept.is_file()  # the raw snapshot the backup was made from, until the purge is done
        results = purge(source, RULES, NOW, threading.Event(), held=held_from_cycle(cycle, kept))
        fields = {**cycle.fields(), **purge_fields(results)}
    assert not kept.exists() and sorted(path.name for path in backups.iterdir() if path.name != ".install-id") == [
        fields["artifact"], fields["artifact"] + ".json"]

    assert 0 < fields["purged_rows"] < total and fields["purge"][0]["rule"] == "events.created_at=30d"
    restored = tmp_path / "restored.db"
    with open(backups / fields["artifact"], "rb") as packed, open(restored, "wb") as raw:
        zstandard.ZstdDecompressor().copy_stream(packed, raw)
    with sqlite3.connect(restored) as backup:
        times = [row[0] for row in backup.execute("SELECT created_at FROM events")]
    assert len(times) == total
    assert sum(parse_moment(text) < NOW - timedelta(days=30) for text in times) == fields["purged_rows"]


def test_a_cycle_whose_upload_failed_does_not_open_the_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTKEYID0000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    path = tmp_path / "app.db"
    total = app_with_events(path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]  # nothing listens there once closed
    remote = S3Destination("backups", "", f"http://127.0.0.1:{dead}", "us-east-1",
                           retry=Retry(attempts=2, first_delay=0.01, max_delay=0.02))
    settings = pipeline.BackupSettings(tmp_path / "backups", 3, retention.Policy(7, 3), remote=remote,
                                       remote_policy=retention.Policy(None, 3))

    with pytest.raises(UploadError) as failed:
        pipeline.run_cycle(SqliteSource(path), settings, threading.Event())

    allowed, reason = should_purge(failed.value.cycle, remote=True)
    assert not allowed and "was not uploaded to S3" in reason
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == total
