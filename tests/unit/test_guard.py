"""The empty-source guard and the shrink check (jobs.guard): which backup is protected, what "holds data" means,
the sentence a refused backup fails with, and when a backup counts as shrunk. The live source is a stand-in with
a fixed answer; the engines' own has_rows is tested against real databases."""

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from jobs import guard
from jobs.backups import Backup
from jobs.errors import SourceError

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=timezone.utc)


def backup(hours_old: float, kind: str = "sqlite", *, flags: list[str] | None = None, verified: bool = True,
           **manifest: Any) -> Backup:
    stamp = NOW - timedelta(hours=hours_old)
    artifact = f"app-{stamp:%Y%m%dT%H%M%SZ}.{kind}.zst"
    return Backup(id=artifact.removesuffix(".zst"), artifact=artifact, created_at=stamp, size=10, sha256="0" * 64,
                  verified=verified, manifest={"created_at": stamp.isoformat(), **({"flags": flags} if flags else {}),
                                               **manifest}, stored_size=10)


def rows(total: int) -> dict[str, Any]:
    return {"counts": {"unit": "rows", "total": total, "tables": {"t": total}}}


class Live:
    """A source whose has_rows() gives a fixed answer (or raises), counting how often it was asked."""

    def __init__(self, answer: bool | Exception) -> None:
        self.answer = answer
        self.asked = 0

    def has_rows(self) -> bool:
        self.asked += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def measured(keys: dict[str, int]) -> dict:
    """A manifest's `rdb` with the keys counted on its file."""
    return {"counted_in": "file", "keys": keys, "expires": dict.fromkeys(keys, 0),
            "hashes_with_field_ttls": dict.fromkeys(keys, 0)}


@pytest.mark.parametrize("case, found, holds", [
    ("rows counted", backup(1, **rows(3)), True),
    ("no rows counted", backup(1, **rows(0)), False),
    ("Redis keys", backup(1, "rdb", rdb=measured({"db0": 0, "db3": 2})), True),
    ("Redis without keys", backup(1, "rdb", rdb=measured({})), False),
    ("Redis keys from INFO before the walk", backup(1, "rdb", rdb={"keys": {"db0": 2}}), True),
    ("no Redis keys from INFO before the walk (or INFO denied): unsure means data", backup(1, "rdb", rdb={"keys": {}}), True),
    ("Redis counts that cannot be read: unsure means data", backup(1, "rdb", rdb={**measured({}), "expires": "x"}), True),
    ("an old SQLite manifest larger than an empty database", backup(1, raw_size=8192), True),
    ("an old SQLite manifest of an empty database", backup(1, raw_size=4096), False),
    ("an old SQLite manifest of an empty file", backup(1, raw_size=0), False),
    ("an old pg_dump manifest larger than an empty archive", backup(1, "pgdump", raw_size=1268), True),
    ("an old pg_dump manifest of an empty database", backup(1, "pgdump", raw_size=888), False),
    ("no counts and no size: unsure means data", backup(1), True),
    ("counts that are not a number: unsure means data", backup(1, counts={"total": "many"}, raw_size=10 << 20), True),
    ("a boolean is not a count", backup(1, counts={"total": True}, raw_size=100), False),
])
def test_what_holds_data_means(case: str, found: Backup, holds: bool) -> None:
    assert guard.holds_data(found) is holds, case


@pytest.mark.parametrize("case, local, remote, live, flags", [
    ("a first backup of an empty database", [], [], False, []),
    ("an empty database after backups that hold nothing", [backup(2, **rows(0))], [], False, []),
    ("a database with rows", [backup(2, **rows(5))], [], True, []),
])
def test_backups_that_protect_nothing_or_a_source_with_rows_pass(case, local, remote, live, flags) -> None:
    assert guard.require_data(Live(live), "the db", local, remote, False, NOW) == (flags, None), case


def test_the_live_source_is_only_asked_when_there_is_data_to_protect() -> None:
    source = Live(False)
    guard.require_data(source, "the db", [backup(2, **rows(0))], [], False, NOW)
    assert source.asked == 0


def test_an_empty_source_after_a_backup_with_rows_is_refused_naming_the_backup_and_the_restore_command() -> None:
    held = backup(2, **rows(1000))
    with pytest.raises(SourceError) as raised:
        guard.require_data(Live(False), "the SQLite database /data/app.db", [held], [], False, NOW)
    text = str(raised.value)
    assert raised.value.stage == "preflight"
    assert text.startswith("the SQLite database /data/app.db holds no rows while the set's newest backup "
                           f"{held.id} holds 1000 rows")
    assert f"`python -m worker restore {held.id} --yes`" in text and "--from-s3" not in text
    assert "BACKUP_ALLOW_EMPTY=true" in text and "\n" not in text


SOURCE = {"kind": "sqlite", "path": "/data/app.db"}


@pytest.mark.parametrize("case, ours, adopted, foreign", [
    ("another path", {"kind": "sqlite", "path": "/other/app.db"}, [], True),
    ("another Railway service", {**SOURCE, "railway_service_id": "new"}, [], True),
    ("a source this one took over", {"kind": "sqlite", "path": "/other/app.db"},
     [{**SOURCE, "adopted_at": NOW.isoformat()}], False),
    ("the same source on a new installation (a lost volume)", {**SOURCE, "install": "f" * 32}, [], False),
])
def test_an_empty_source_is_never_told_to_restore_another_source_s_backup(case, ours, adopted, foreign) -> None:
    held = backup(2, **rows(1000), source={**SOURCE, "install": "a" * 32})
    with pytest.raises(SourceError) as raised:
        guard.require_data(Live(False), "the db", [held], [], False, NOW, ours, adopted)
    text = str(raised.value)
    if foreign:
        assert "restore" not in text and "another source, the SQLite database /data/app.db" in text, case
        assert "BACKUP_NAME" in text and "S3_PREFIX" in text and "\n" not in text, case
    else:
        assert f"`python -m worker restore {held.id} --yes`" in text, case


def test_a_backup_only_in_the_bucket_is_restored_from_it() -> None:
    held = backup(2, **rows(7))
    with pytest.raises(SourceError, match=f"{held.id} in the bucket holds 7 rows.*restore {held.id} --from-s3 --yes"):
        guard.require_data(Live(False), "the db", [], [held], False, NOW)


def test_a_redis_backup_is_restored_to_a_file_and_counted_in_keys() -> None:
    held = backup(2, "rdb", rdb=measured({"db0": 4}))
    with pytest.raises(SourceError, match=f"holds no keys .* holds 4 keys.*restore {held.id} --to "):
        guard.require_data(Live(False), "the Redis server at h:6379", [held], [], False, NOW)


def test_an_old_manifest_without_counts_is_protected_by_its_size() -> None:
    with pytest.raises(SourceError, match="records no row counts"):
        guard.require_data(Live(False), "the db", [backup(2, raw_size=1 << 20)], [], False, NOW)


def test_allow_empty_lets_it_through_flagged_with_a_warning() -> None:
    held = backup(2, **rows(9))
    flags, warning = guard.require_data(Live(False), "the db", [held], [], True, NOW)
    assert flags == ["empty_allowed"]
    assert warning is not None and held.id in warning and "holds 9 rows" in warning and "BACKUP_ALLOW_EMPTY" in warning


@pytest.mark.parametrize("case, backups, protected", [
    ("a flagged newest is passed over: the data before it is still protected",
     [backup(1, flags=["empty_allowed"], **rows(0)), backup(30, **rows(50))], True),
    ("a shrunk newest is passed over too", [backup(1, flags=["shrunk"], **rows(0)), backup(30, **rows(50))], True),
    ("an unverified backup with rows protects nothing", [backup(1, verified=False, **rows(50))], False),
    ("a backup dated in the future protects nothing", [backup(-48, **rows(50))], False),
    ("the newest unflagged one decides: it is empty", [backup(1, **rows(0)), backup(30, **rows(50))], False),
])
def test_which_backup_is_protected(case, backups, protected) -> None:
    if protected:
        with pytest.raises(SourceError):
            guard.require_data(Live(False), "the db", backups, [], False, NOW)
    else:
        assert guard.require_data(Live(False), "the db", backups, [], False, NOW) == ([], None), case


@pytest.mark.parametrize("case, local, live, allow, outcome", [
    ("nothing on the volume, an empty source", [], False, False, "refused"),
    ("only empty backups on the volume, an empty source", [backup(2, **rows(0))], False, False, "refused"),
    ("allowed: taken, flagged", [], False, True, ["empty_allowed"]),
    ("a source with rows", [], True, False, []),
])
def test_a_bucket_that_cannot_be_listed_counts_as_holding_data(case, local, live, allow, outcome) -> None:
    if outcome == "refused":
        with pytest.raises(SourceError, match="the bucket could not be listed \\(cannot reach it\\)") as raised:
            guard.require_data(Live(live), "the db", local, [], allow, NOW, remote_unknown="cannot reach it.")
        assert raised.value.stage == "preflight" and "BACKUP_ALLOW_EMPTY=true" in str(raised.value), case
    else:
        flags, _ = guard.require_data(Live(live), "the db", local, [], allow, NOW, remote_unknown="cannot reach it")
        assert flags == outcome, case


def test_a_source_that_cannot_be_asked_is_not_refused_here() -> None:
    assert guard.require_data(Live(SourceError("unreachable")), "the db", [backup(2, **rows(3))], [], False, NOW) == ([], None)


@pytest.mark.parametrize("case, raw, before, shrunk", [
    ("no previous backup", 1, None, False),
    ("under a tenth", 99, backup(1, raw_size=1000), True),
    ("exactly a tenth", 100, backup(1, raw_size=1000), False),
    ("grew", 5000, backup(1, raw_size=1000), False),
    ("a previous manifest without raw_size", 1, backup(1), False),
])
def test_what_counts_as_shrunk(case, raw, before, shrunk) -> None:
    assert bool(guard.shrank(raw, before)) is shrunk, case


@pytest.mark.parametrize("case, total, before, shrunk", [
    ("rows under a tenth, same size (pages stay allocated)", 99, backup(1, raw_size=1000, **rows(1000)), True),
    ("rows exactly a tenth", 100, backup(1, raw_size=1000, **rows(1000)), False),
    ("rows grew", 2000, backup(1, raw_size=1000, **rows(1000)), False),
    ("no rows left of many", 0, backup(1, raw_size=1000, **rows(1000)), True),
    ("no rows before either", 0, backup(1, raw_size=1000, **rows(0)), False),
    ("the new backup is not counted", None, backup(1, raw_size=1000, **rows(1000)), False),
    ("the previous one recorded no counts", 1, backup(1, raw_size=1000), False),
    ("the previous one's count is not a number", 1, backup(1, raw_size=1000, counts={"total": "many"}), False),
    ("Redis keys under a tenth", 3, backup(1, "rdb", raw_size=1000, rdb=measured({"db0": 40})), True),
])
def test_a_backup_whose_rows_dropped_under_a_tenth_counts_as_shrunk_whatever_its_size(case, total, before, shrunk) -> None:
    how = guard.shrank(1000, before, total)
    assert bool(how) is shrunk, case
    if shrunk:
        assert f"holds {total} " in how and before.id in how, case


def test_the_previous_backup_is_the_newest_by_date_whatever_its_flags_but_never_one_from_the_future() -> None:
    shrunk_one = backup(1, flags=["shrunk"], raw_size=10)
    assert guard.previous([backup(30, raw_size=1000), shrunk_one, backup(-48, raw_size=5)], NOW) == shrunk_one
    assert guard.previous([], NOW) is None
