"""The pure parts of table retention: reading RETENTION_RULES, the gate after a backup cycle, SQLite affinity."""

from datetime import datetime, timedelta

import pytest

from jobs.artifacts import backup_id
from jobs.cycle import Cycle
from jobs.purge import PurgeRule, parse_retention_rules, purge_fields, should_purge
from jobs.purge.delete import RuleResult, cutoff_for
from jobs.purge.kinds import ISO_8601, affinity
from tests.purge.conftest import NOW


@pytest.mark.parametrize(
    "text, expected",
    [
        ("events.created_at=30d", [PurgeRule("events", "created_at", timedelta(days=30))]),
        ("events.created_at=30d;sessions.start_time=365d",
         [PurgeRule("events", "created_at", timedelta(days=30)), PurgeRule("sessions", "start_time", timedelta(days=365))]),
        ("\n events.created_at = 720h \r\n;;\n metrics.at=90m\n",
         [PurgeRule("events", "created_at", timedelta(hours=720)), PurgeRule("metrics", "at", timedelta(minutes=90))]),
        ("audit.logs.at=7d", [PurgeRule("logs", "at", timedelta(days=7), schema="audit")]),
        ("_t$1.c_2=1s", [PurgeRule("_t$1", "c_2", timedelta(seconds=1))]),
        ("", []),
        (" ;\n ; ", []),
    ],
)
def test_parse_retention_rules_reads_tables_columns_schemas_and_ages(text: str, expected: list[PurgeRule]) -> None:
    assert parse_retention_rules(text) == expected


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("events", ["'events' has no '='", "write TABLE.COLUMN=AGE like events.created_at=30d"]),
        ("=30d", ["'=30d' has no table and column before '='"]),
        ("events.created_at=", ["'events.created_at=' has no age after '='"]),
        ("events=30d", ["'events=30d' does not name a table and a column"]),
        ("a.b.c.d=30d", ["'a.b.c.d=30d' does not name a table and a column", "SCHEMA.TABLE.COLUMN=AGE"]),
        ("events..created_at=30d", ["'' is not a plain table or column name"]),
        ('"Events".created_at=30d', ["'\"Events\"' is not a plain table or column name", "quoted names are not supported"]),
        ("events.created-at=30d", ["'created-at' is not a plain table or column name"]),
        ("events.1st=30d", ["'1st' is not a plain table or column name"]),
        ("events.created_at;drop=30d", ["'events.created_at' has no '='"]),
        ("events.created_at=30 days", ["'events.created_at=30 days'", "'30 days' is not a duration"]),
        ("events.created_at=0d", ["has an age of zero, which would delete rows just written"]),
        ("events.created_at=30d;Events.Created_At=7d", ["'Events.Created_At=7d' names the same column as "
                                                        "'events.created_at=30d'; keep one rule per column"]),
    ],
)
def test_parse_retention_rules_names_the_bad_pair_and_how_to_write_it(text: str, fragments: list[str]) -> None:
    with pytest.raises(ValueError) as raised:
        parse_retention_rules(text)
    for fragment in fragments:
        assert fragment in str(raised.value)


def test_every_bad_pair_is_named_at_once() -> None:
    with pytest.raises(ValueError, match="'a=1d' does not name .*; 'b.c=x': 'x' is not a duration"):
        parse_retention_rules("a=1d;events.created_at=30d;b.c=x")


def test_a_rule_describes_itself_as_written() -> None:
    assert [rule.describe() for rule in parse_retention_rules("events.created_at=720h;audit.logs.at=90m")] == [
        "events.created_at=30d", "audit.logs.at=90m"]


def test_the_cutoff_is_now_minus_the_age_in_whole_utc_seconds_and_needs_an_aware_now() -> None:
    [rule] = parse_retention_rules("events.created_at=30d")
    assert cutoff_for(rule, NOW.replace(microsecond=999_999)) == NOW - timedelta(days=30)
    with pytest.raises(ValueError, match="timezone-aware"):
        cutoff_for(rule, datetime(2026, 11, 22))


def _cycle(artifact: str = "app-20261122T020000Z.sqlite.zst", verified: str = "PRAGMA integrity_check",
           uploaded: list[str] | None = None) -> Cycle:
    return Cycle(backup=backup_id(artifact), artifact=artifact, size=1, raw_size=1, verified=verified, uploaded=uploaded)


@pytest.mark.parametrize(
    "cycle, remote, allowed, fragment",
    [
        (_cycle(), False, True,
         "the backup app-20261122T020000Z.sqlite.zst passed its check (PRAGMA integrity_check)"),
        (_cycle(uploaded=["app-20261121T020000Z.sqlite", "app-20261122T020000Z.sqlite"]), True, True,
         "passed its check (PRAGMA integrity_check) and uploaded"),
        (_cycle(uploaded=["app-20261121T020000Z.sqlite", "app-20261122T020000Z"]), True, False,
         "was not uploaded to S3 in this cycle"),
        (_cycle(), True, False, "was not uploaded to S3"),
        (_cycle(verified=""), False, False, "has no passed check"),
        (None, False, False, "this cycle wrote no backup"),
    ],
)
def test_should_purge_only_after_a_checked_and_if_configured_uploaded_backup(
        cycle: Cycle | None, remote: bool, allowed: bool, fragment: str) -> None:
    decision, reason = should_purge(cycle, remote=remote)
    assert decision is allowed and fragment in reason


def test_purge_fields_carry_every_rule_and_the_totals() -> None:
    results = [RuleResult("events.created_at=30d", "2026-10-23T02:00:00Z", deleted=5, batches=1),
               RuleResult("metrics.at=7d", "2026-11-15T02:00:00Z", error="the database has no table metrics")]
    fields = purge_fields(results)
    assert fields["purged_rows"] == 5 and fields["purge_failed"] == ["metrics.at=7d"]
    assert fields["purge"][1] == {"rule": "metrics.at=7d", "table": None, "deleted": 0, "batches": 0, "cutoff": "2026-11-15T02:00:00Z",
                                  "cascades": [], "error": "the database has no table metrics"}


@pytest.mark.parametrize("declared, expected", [
    ("INTEGER", "integer"), ("BIGINT", "integer"), ("VARCHAR(20)", "text"), ("TEXT", "text"), ("CLOB", "text"),
    ("BLOB", "blob"), ("", "blob"), ("REAL", "real"), ("DOUBLE PRECISION", "real"), ("FLOAT", "real"),
    ("DATETIME", "numeric"), ("TIMESTAMP", "numeric"), ("NUMERIC", "numeric"), ("POINTINT", "integer"),
])
def test_affinity_follows_sqlites_rules(declared: str, expected: str) -> None:
    assert affinity(declared) == expected


@pytest.mark.parametrize("text, accepted", [
    ("2026-11-22 02:00:00", True), ("2026-11-22T02:00:00", True), ("2026-11-22 02:00:00.123456", True),
    ("2026-11-22T02:00:00Z", True), ("2026-11-22T02:00:00+05:30", True), ("2026-11-22 02:00", True),
    ("2026-11-22", True), ("2026-11-22T02:00:00+0530", False), ("22/11/2026", False), ("1700000000", False),
    ("2026-11-22 02:00:00 UTC", False), (" 2026-11-22", False),
])
def test_the_iso_8601_shapes_a_sqlite_column_may_hold(text: str, accepted: bool) -> None:
    assert bool(ISO_8601.fullmatch(text)) is accepted
