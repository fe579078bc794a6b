"""The space preflight of stream engines: pg_dump's archive never lands on the volume raw, so only the
compressed artifact needs room."""

from pathlib import Path

from jobs import pipeline
from jobs.engines import postgres
from jobs.engines.sqlite import SqliteSource

from tests.postgres.conftest import url_for

MIB = 1 << 20


def test_a_stream_engine_needs_room_for_the_artifact_only_and_a_file_engine_for_both():
    assert pipeline.required_space(100 * MIB, [], on_disk=False) == 100 * MIB + pipeline.HEADROOM
    assert pipeline.required_space(100 * MIB, [], on_disk=True) == 200 * MIB + pipeline.HEADROOM


def test_postgresql_sources_stream_and_sqlite_sources_write_a_raw_snapshot(tmp_path: Path):
    assert postgres.open_source(url_for("postgres"), tmp_path).snapshot_on_disk is False
    assert SqliteSource(tmp_path / "app.db").snapshot_on_disk is True
