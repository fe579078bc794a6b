"""Backup sets and untrusted manifests: which backups belong together, which one `--latest` means, and what a
manifest may claim."""

from datetime import datetime, timedelta, timezone

import pytest

from jobs.artifacts import BackupSet, set_of
from jobs.backups import Backup, find, from_manifest
from jobs.errors import NotFound
from jobs.retention import Policy, plan
from worker.context import UsageError
from worker.selection import choose_set

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=timezone.utc)
APP = BackupSet("app", "sqlite")
STAGING = BackupSet("staging", "sqlite")
APP_PG = BackupSet("app", "pgdump")


def backup(name: str, kind: str, days_old: float) -> Backup:
    created = NOW - timedelta(days=days_old)
    artifact = f"{name}-{created:%Y%m%dT%H%M%SZ}.{kind}.zst"
    return Backup(id=artifact.removesuffix(".zst"), artifact=artifact, created_at=created, size=1, sha256="0" * 64,
                  verified=True, manifest={})


def manifest(artifact: str, ident: str) -> dict:
    return {"id": ident, "created_at": "2026-11-22T02:00:00Z", "size": 10, "sha256": "0" * 64,
            "format": {"kind": "sqlite"}, "source": {"kind": "sqlite"}, "verified": {"check": "x", "result": "ok"}}


def test_a_backup_belongs_to_the_set_of_its_artifact_name_and_kind() -> None:
    assert set_of("app-20261122T020000Z.sqlite.zst") == APP
    assert set_of("app-staging-20261122T020000Z.sqlite.zst") == BackupSet("app-staging", "sqlite")
    assert set_of("app-20261122T020000Z.pgdump.zst") == APP_PG
    assert set_of("app-20261122T020000Z.sqlite.zst.json") is None
    assert APP.owns("app-20261122T020000Z.sqlite.zst") and not APP.owns("app-20261122T020000Z.pgdump.zst")
    assert not APP.owns("app-staging-20261122T020000Z.sqlite.zst")


def test_retention_counts_keep_min_within_each_set_so_one_set_never_crowds_out_another() -> None:
    ours = [backup("app", "sqlite", age) for age in (40, 48)]
    theirs = [backup("staging", "sqlite", age) for age in (1, 2, 3)]
    result = plan(ours + theirs, Policy(7, 1), NOW)
    assert [b.id for b in result.delete] == [ours[1].id]  # one of each set's survives; the newer set's do not count for ours
    assert ours[0] in result.keep


@pytest.mark.parametrize(
    "configured, found, source_name, backup_name, expected",
    [
        ([APP], [APP, STAGING], None, None, APP),  # the configured set, whatever else is there
        ([APP], [], None, None, APP),
        ([APP], [APP, STAGING], "staging", None, STAGING),  # --source picks a set found in the location
        ([APP], [STAGING], "app", None, APP),
        ([], [STAGING], None, None, STAGING),  # an empty volume, one set in the bucket
        ([], [APP, STAGING], None, "staging", STAGING),  # BACKUP_NAME without a source
        ([], [APP, STAGING], "app", None, APP),
    ],
)
def test_latest_looks_at_one_set_chosen_by_configuration_or_source(configured, found, source_name, backup_name, expected) -> None:
    assert choose_set(configured, found, source_name, backup_name, "s3://b") == expected


def test_several_sets_and_no_configuration_is_a_usage_error_naming_the_sets_and_the_fix() -> None:
    with pytest.raises(UsageError) as raised:
        choose_set([], [APP, STAGING], None, None, "s3://b")
    message = str(raised.value)
    assert "app (sqlite)" in message and "staging (sqlite)" in message
    assert "BACKUP_NAME" in message and "--source NAME" in message


def test_an_unknown_source_name_is_a_usage_error_and_an_empty_place_has_nothing() -> None:
    with pytest.raises(UsageError, match="no backup set 'billing'"):
        choose_set([APP], [APP, STAGING], "billing", None, "s3://b")
    with pytest.raises(UsageError, match="several sets named 'app'"):
        choose_set([], [APP, APP_PG], "app", None, "s3://b")
    with pytest.raises(NotFound, match="no backups in s3://b"):
        choose_set([], [], None, None, "s3://b")
    with pytest.raises(NotFound, match="BACKUP_NAME"):
        choose_set([], [STAGING], None, "app", "s3://b")


def test_a_manifest_counts_only_if_its_id_is_its_artifacts_name() -> None:
    artifact = "app-20261122T020000Z.sqlite.zst"
    assert from_manifest(artifact, manifest(artifact, "app-20261122T020000Z.sqlite")).id == "app-20261122T020000Z.sqlite"
    legacy = from_manifest(artifact, manifest(artifact, "app-20261122T020000Z"))  # what version 1 wrote
    assert legacy.id == "app-20261122T020000Z.sqlite"
    for planted in ("../outside/planted", "app-20261122T020000Z.pgdump", "app-20261122T020001Z.sqlite", "", "app"):
        with pytest.raises(ValueError, match="is not"):
            from_manifest(artifact, manifest(artifact, planted))


def test_find_accepts_the_id_the_version_1_id_and_the_file_names() -> None:
    artifact = "app-20261122T020000Z.sqlite.zst"
    found = from_manifest(artifact, manifest(artifact, "app-20261122T020000Z"))
    for name in ("app-20261122T020000Z.sqlite", "app-20261122T020000Z", artifact, artifact + ".json"):
        assert find([found], name) is found
    with pytest.raises(NotFound):
        find([found], "../outside/planted")
    twin = from_manifest("app-20261122T020000Z.pgdump.zst", manifest("x", "app-20261122T020000Z"))
    with pytest.raises(NotFound, match="names 2 backups"):
        find([found, twin], "app-20261122T020000Z")


def bytes_read() -> int:
    """Return what this process has read so far through read(2) and pread(2) (Linux /proc/self/io `rchar`)."""
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))


def test_a_huge_planted_manifest_is_skipped_with_a_note_after_reading_barely_more_than_the_limit(tmp_path) -> None:
    import json

    from jobs.backups import list_backups
    from jobs.manifest import MANIFEST_LIMIT
    from jobs.destinations.local import LocalDestination

    good, planted = "app-20261122T020000Z.sqlite.zst", "app-20261123T020000Z.sqlite.zst"
    for artifact in (good, planted):
        (tmp_path / artifact).write_bytes(b"x" * 10)
    (tmp_path / (good + ".json")).write_text(json.dumps({**manifest(good, good.removesuffix(".zst")), "artifact": good}))
    with open(tmp_path / (planted + ".json"), "wb") as huge:  # 200 MB that cost no disk
        huge.truncate(200 * 1000 * 1000)
    before = bytes_read()

    backups, notes = list_backups(LocalDestination(tmp_path))

    assert bytes_read() - before < MANIFEST_LIMIT + 256 * 1024
    assert [b.artifact for b in backups] == [good]
    (note,) = notes
    assert note.startswith(f"{planted}.json is not a valid manifest") and "the backup is not counted" in note


@pytest.mark.parametrize("name", ["app-20261399T999999Z.sqlite.zst", "app-20260230T000000Z.sqlite.zst",
                                  "app-20261122T246000Z.sqlite.zst"])
def test_a_name_whose_stamp_is_no_real_time_is_nobodys_backup(name) -> None:
    assert set_of(name) is None
    with pytest.raises(ValueError):
        from_manifest(name, manifest(name, name.removesuffix(".zst")))


@pytest.mark.parametrize("verified, counted", [({"check": "x", "result": "ok"}, True), ({"result": "failed"}, False),
                                               (True, False), ("yes", False), ({}, False), (None, False)])
def test_only_a_manifest_that_records_a_passed_check_counts_as_verified(verified, counted) -> None:
    artifact = "app-20261122T020000Z.sqlite.zst"
    data = {**manifest(artifact, "app-20261122T020000Z.sqlite"), "verified": verified}
    assert from_manifest(artifact, data).verified is counted


def test_a_new_backup_never_takes_a_name_the_bucket_already_holds(tmp_path) -> None:
    """A volume lost a second after its last backup (or a clock that went back) must not give the next backup the
    name of one already off-site: the upload would then refuse it as a name taken by another backup."""
    from jobs.pipeline import _free_name

    now = datetime(2026, 11, 22, 2, 0, 0, 400_000, tzinfo=timezone.utc)
    bucket = {"app-20261122T020000Z.sqlite.zst", "app-20261122T020001Z.sqlite.zst"}
    assert _free_name(tmp_path, "app", "sqlite", now, bucket) == ("app-20261122T020002Z.sqlite.zst", now.replace(second=2, microsecond=0))
    assert _free_name(tmp_path, "app", "sqlite", now)[0] == "app-20261122T020000Z.sqlite.zst"
