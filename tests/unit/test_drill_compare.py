"""What a drill's restored copy is compared with (jobs.drill.compare): exact rows per table; for Redis, keys without
a TTL exactly and keys with one at most; a manifest without counts is drilled on its proof and restore alone."""

from datetime import datetime, timezone

import pytest

from jobs.backups import Backup
from jobs.drill import compare
from jobs.drill.postgres import scratch_name
from jobs.errors import JobError
from worker.config import ConfigError, load_config

NOW = datetime(2026, 12, 6, 1, 0, tzinfo=timezone.utc)


def backup(kind: str, manifest: dict) -> Backup:
    artifact = f"app-20261206T010000Z.{kind}.zst"
    return Backup(id=artifact.removesuffix(".zst"), artifact=artifact, created_at=NOW, size=10, sha256="0" * 64,
                  verified=True, manifest=manifest)


ROWS = {"counts": {"unit": "rows", "total": 5, "tables": {"users": 3, "empty": 0, "events": 2}}}


def test_rows_that_match_exactly_pass_and_say_what_was_compared() -> None:
    measured = {"unit": "rows", "total": 5, "tables": {"users": 3, "empty": 0, "events": 2}}
    assert compare.against_manifest(backup("sqlite", ROWS), measured) == "5 rows in 3 table(s), exactly as recorded"


@pytest.mark.parametrize("tables, clause", [
    ({"users": 2, "empty": 0, "events": 2}, "table users has 2 rows, the backup recorded 3"),
    ({"users": 3, "events": 2}, "table empty is missing (the backup recorded 0 rows)"),
    ({"users": 3, "empty": 0, "events": 2, "extra": 1}, "table extra (1 rows) was not recorded in the backup"),
])
def test_rows_that_differ_fail_at_stage_compare_naming_the_table(tables: dict, clause: str) -> None:
    with pytest.raises(JobError) as raised:
        compare.against_manifest(backup("pgdump", ROWS), {"unit": "rows", "tables": tables})
    assert raised.value.stage == "compare"
    assert clause in str(raised.value) and str(raised.value).startswith("the restored copy of app-20261206T010000Z.pgdump")


def test_a_manifest_without_counts_is_drilled_on_its_proof_and_restore_only() -> None:
    said = compare.against_manifest(backup("sqlite", {}), {"tables": {"users": 3}})
    assert said.startswith("the manifest records no row counts")
    assert not compare.recorded(backup("sqlite", {}))
    assert compare.against_manifest(backup("rdb", {"rdb": {"transfer": "disk"}}), {"databases": {}}).startswith(
        "the manifest records no key counts")


@pytest.mark.parametrize("uncounted, said", [
    (None, "(a backup made before they were measured on the file)"),
    ("the RDB's keys were not counted: value type 26 is unknown to this worker",
     "(the RDB's keys were not counted: value type 26 is unknown to this worker)"),
    ("line\nbreak\x1b[31m", "(line?break?[31m)"),
    ("x" * 500, "(" + "x" * 199 + "…)"),
    (["not", "text"], "(a backup made before they were measured on the file)"),
])
def test_a_redis_manifest_without_key_counts_says_why_as_its_backup_recorded(uncounted: object, said: str) -> None:
    manifest = {"rdb": {"transfer": "diskless", **({"uncounted": uncounted} if uncounted is not None else {})}}
    assert compare.against_manifest(backup("rdb", manifest), {"databases": {"db0": {"keys": 1, "expires": 0}}}) == (
        f"the manifest records no key counts {said}: proven and loaded only")


@pytest.mark.parametrize("kind, manifest", [
    ("sqlite", {"counts": {"tables": {"users": "many"}}}),
    ("sqlite", {"counts": {"tables": {"users": True}}}),
    ("pgdump", {"counts": None}),
    ("pgdump", {"counts": {"unit": "rows"}}),
    ("rdb", {"rdb": {"counted_in": "file", "keys": {"db0": -1}, "expires": {}, "hashes_with_field_ttls": {}}}),
    ("rdb", {"rdb": {"counted_in": "file", "keys": {"db0": 1}, "expires": "some", "hashes_with_field_ttls": {}}}),
    ("rdb", {"rdb": {"counted_in": "file", "keys": {"db0": 1}, "expires": {"db0": 0}}}),
])
def test_a_manifest_whose_counts_cannot_be_read_fails_at_stage_compare(kind: str, manifest: dict) -> None:
    with pytest.raises(JobError) as raised:
        compare.against_manifest(backup(kind, manifest), {"tables": {"users": 3}, "databases": {}})
    assert raised.value.stage == "compare"
    assert "records" in str(raised.value) and "that cannot be read" in str(raised.value)


KEYS = {"rdb": {"counted_in": "file", "keys": {"db0": 10, "db1": 2}, "expires": {"db0": 4},
               "hashes_with_field_ttls": {"db0": 0, "db1": 0}}}


@pytest.mark.parametrize("databases, passes", [
    ({"db0": {"keys": 10, "expires": 4}, "db1": {"keys": 2, "expires": 0}}, True),
    ({"db0": {"keys": 7, "expires": 1}, "db1": {"keys": 2, "expires": 0}}, True),  # three expired since: at most
    ({"db0": {"keys": 9, "expires": 4}, "db1": {"keys": 2, "expires": 0}}, False),  # a key without a TTL lost
    ({"db0": {"keys": 11, "expires": 5}, "db1": {"keys": 2, "expires": 0}}, False),  # more TTL keys than recorded
    ({"db0": {"keys": 10, "expires": 4}}, False),  # a database gone
])
def test_redis_keys_without_a_ttl_match_exactly_and_keys_with_one_at_most(databases: dict, passes: bool) -> None:
    measured = {"unit": "keys", "databases": databases}
    if passes:
        assert compare.against_manifest(backup("rdb", KEYS), measured).endswith("as recorded")
    else:
        with pytest.raises(JobError, match="does not hold what the backup recorded"):
            compare.against_manifest(backup("rdb", KEYS), measured)


# db0: 10 keys, 3 with a TTL, 2 hashes with field TTLs (and no key TTL): 5 that stay.
FIELD_TTLS = {"rdb": {"counted_in": "file", "keys": {"db0": 10}, "expires": {"db0": 3}, "hashes_with_field_ttls": {"db0": 2}}}


@pytest.mark.parametrize("restored, passes", [
    ({"keys": 10, "expires": 3}, True),  # all there (the server counts the hashes among the keys without a TTL)
    ({"keys": 8, "expires": 3}, True),  # both hashes' fields expired: the hashes are gone
    ({"keys": 6, "expires": 1}, True),  # and two TTL keys too
    ({"keys": 5, "expires": 1}, False),  # one that stays is lost (4 without a TTL, at least 5 expected)
    ({"keys": 11, "expires": 3}, False),  # one without a TTL more than recorded
    ({"keys": 10, "expires": 4}, False),  # one TTL key more than recorded
])
def test_hashes_with_field_ttls_may_be_gone_but_keys_that_stay_match_exactly(restored: dict, passes: bool) -> None:
    measured = {"databases": {"db0": restored}}
    if passes:
        assert compare.against_manifest(backup("rdb", FIELD_TTLS), measured).endswith("as recorded")
    else:
        with pytest.raises(JobError, match="does not hold what the backup recorded"):
            compare.against_manifest(backup("rdb", FIELD_TTLS), measured)


def test_key_counts_from_before_the_walk_are_not_compared() -> None:
    """Counts a backup took from INFO before SYNC (no `counted_in`) are not what the file holds: never compared."""
    old = {"rdb": {"keys": {"db0": 5}, "expires": {"db0": 0}}}
    assert not compare.recorded(backup("rdb", old))
    assert compare.against_manifest(backup("rdb", old), {"databases": {"db0": {"keys": 9, "expires": 0}}}) == (
        "the manifest records no key counts (a backup made before they were measured on the file): proven and "
        "loaded only")


def test_the_scratch_database_name_fits_postgresql_identifiers() -> None:
    assert scratch_name("shop", NOW) == "shop_drill_20261206010000"
    long = scratch_name("d" * 80, NOW)
    assert len(long.encode()) <= 63 and long.endswith("_drill_20261206010000")


def test_drill_variables_are_validated_with_the_others(tmp_path) -> None:
    config = load_config({"BACKUP_DIR": str(tmp_path), "DRILL_SCHEDULE": "0 4 * * 0",
                          "DRILL_TARGET_URL": "postgresql://drill:pw-9f1c@db:5432/scratch"}, tmp_path)
    assert config.drill_schedule == "0 4 * * 0" and config.drill_trigger is not None
    assert "pw-9f1c" in config.secrets() and "pw-9f1c" not in str(config.describe())
    assert load_config({"BACKUP_DIR": str(tmp_path)}, tmp_path).drill_schedule is None
    with pytest.raises(ConfigError) as raised:
        load_config({"BACKUP_DIR": str(tmp_path), "DRILL_SCHEDULE": "weekly", "DRILL_TARGET_URL": "redis://x"}, tmp_path)
    assert any(problem.startswith("DRILL_SCHEDULE:") for problem in raised.value.problems)
    assert any(problem.startswith("DRILL_TARGET_URL=") for problem in raised.value.problems)
