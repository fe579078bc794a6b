from datetime import datetime, timedelta, timezone

import pytest

from jobs.backups import Backup
from jobs.retention import Policy, plan

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=timezone.utc)


def backup(days_old: float, verified: bool = True, name: str | None = None) -> Backup:
    created = NOW - timedelta(days=days_old)
    ident = name or f"app-{created:%Y%m%dT%H%M%SZ}"
    return Backup(id=ident, artifact=f"{ident}.sqlite.zst", created_at=created, size=1, sha256="0" * 64,
                  verified=verified, manifest={})


def ids(items: list[Backup]) -> list[str]:
    return sorted(b.id for b in items)


@pytest.mark.parametrize(
    "ages, verified, days, keep_min, deleted_ages",
    [
        # nothing old: all kept
        ([0, 1, 2], [True] * 3, 7, 3, []),
        # a normal week: the old ones go once three newer verified remain
        ([0, 1, 2, 3, 8, 9, 30], [True] * 7, 7, 3, [8, 9, 30]),
        # all old (the worker was down for a month): the newest keep_min survive however old
        ([40, 41, 42, 43, 44], [True] * 5, 7, 3, [43, 44]),
        # only one backup, very old: never deleted
        ([400], [True], 7, 1, []),
        # unverified backups never count toward keep_min, and go by age
        ([0, 10, 11, 12], [False, True, True, False], 7, 2, [12]),
        # keep_min larger than what exists: nothing goes
        ([10, 20], [True, True], 7, 5, []),
        # retention 0 days: exactly keep_min survive
        ([0.1, 1, 2, 3], [True] * 4, 0, 2, [2, 3]),
        # no age limit: keep everything
        ([1, 100, 1000], [True] * 3, None, 1, []),
        # boundary: exactly at the cutoff is kept, just past it goes
        ([0, 1, 7, 7.01], [True] * 4, 7, 2, [7.01]),
    ],
)
def test_plan_keeps_and_deletes_as_the_policy_says(ages, verified, days, keep_min, deleted_ages) -> None:
    backups = [backup(age, ok) for age, ok in zip(ages, verified)]
    result = plan(backups, Policy(days, keep_min), NOW)
    expected = [backup(age).id for age in deleted_ages]
    assert ids(result.delete) == sorted(expected)
    assert len(result.keep) + len(result.delete) == len(backups)
    assert set(result.reasons) == {b.id for b in backups}


def test_plan_always_keeps_the_newest_verified_backup_even_if_newer_ones_are_unverified() -> None:
    backups = [backup(0, verified=False), backup(1, verified=False), backup(30, verified=True)]
    result = plan(backups, Policy(7, 1), NOW)
    assert backup(30).id in ids(result.keep)


def test_plan_gives_a_reason_for_every_decision() -> None:
    old, new = backup(30), backup(0)
    result = plan([old, new, backup(1), backup(2)], Policy(7, 3), NOW)
    assert "older than 7 days" in result.reasons[old.id]
    assert "BACKUP_KEEP_MIN" in result.reasons[new.id]
    rows = result.describe()
    assert [row["action"] for row in rows] == ["keep", "keep", "keep", "delete"]


def test_plan_with_no_backups_is_empty() -> None:
    result = plan([], Policy(7, 3), NOW)
    assert result.keep == [] and result.delete == []


def test_policy_refuses_keep_min_below_one() -> None:
    with pytest.raises(ValueError):
        Policy(7, 0)
