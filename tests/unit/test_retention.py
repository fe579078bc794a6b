from datetime import datetime, timedelta, timezone

import pytest

from jobs.backups import Backup
from jobs.retention import Policy, plan, prove_slots

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
        # all old (the worker was down for a month): ages count from the newest sound backup (restic's
        # --keep-within), so the gap alone ages nothing out; beyond the window from it, keep_min still applies
        ([40, 41, 42, 43, 44], [True] * 5, 7, 3, []),
        ([40, 41, 42, 43, 48, 49], [True] * 6, 7, 3, [48, 49]),
        # only one backup, very old: never deleted
        ([400], [True], 7, 1, []),
        # unverified backups never count toward keep_min (nor anchor the ages), and go by age
        ([0, 10, 11, 19], [False, True, True, False], 7, 2, [19]),
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
    assert result.reasons[old.id] == [] and result.why(old.id).startswith("nothing keeps it (30.0 days old")
    assert result.reasons[new.id] == ["newest 3", "within 7d of newest", "the newest backup of the set"]
    rows = result.describe("local")
    assert [row["keep"] for row in rows] == [True, True, True, False]
    assert rows[-1] == {"id": old.id, "location": "local", "keep": False, "reasons": []}


def test_plan_with_no_backups_is_empty() -> None:
    result = plan([], Policy(7, 3), NOW)
    assert result.keep == [] and result.delete == []


def test_policy_refuses_keep_min_below_one() -> None:
    with pytest.raises(ValueError):
        Policy(7, 0)


# --- sound slots, anchored ages and the SHA-256 re-check before deleting (issue 17) ---------------------------

def damaged_size(days_old: float) -> Backup:
    """A backup whose artifact is not the size its manifest records (bit rot that truncated it, a bad copy)."""
    good = backup(days_old)
    return Backup(id=good.id, artifact=good.artifact, created_at=good.created_at, size=good.size, sha256=good.sha256,
                  verified=True, manifest={}, stored_size=good.size + 1)


def test_a_backup_whose_artifact_does_not_match_its_manifest_never_fills_a_keep_min_slot() -> None:
    backups = [damaged_size(0), damaged_size(1), damaged_size(2), backup(10)]
    result = plan(backups, Policy(7, 3), NOW)
    assert ids(result.slots) == ids([backup(10)])
    assert backup(10).id not in ids(result.delete)


@pytest.mark.parametrize(
    "rotten_ages, expected_slots, expected_deleted",
    [
        # nothing rotten: the three newest hold the slots, the old one goes (after proving the three)
        ([], [0, 1, 2], [30]),
        # the three newest have bit rot (same size, wrong SHA-256): the only intact backup must survive; with the
        # window off (0 days) the rotten ones go like any backup that is not sound, except the newest of the set,
        # which is always kept
        ([0, 1, 2], [30], [1, 2]),
        # one rotten among the newest: the next intact one takes its slot and is kept; the rotten one is past the
        # window (0 days) and goes by age like any backup that is not sound
        ([1], [0, 2, 30], [1]),
    ],
)
def test_retention_proves_the_slot_holders_before_deleting_and_never_leaves_fewer_intact_copies(
        rotten_ages, expected_slots, expected_deleted) -> None:
    backups = [backup(age) for age in (0, 1, 2, 30)]
    rotten = {backup(age).id for age in rotten_ages}
    checked: list[str] = []

    def intact(candidate: Backup) -> bool:
        checked.append(candidate.id)
        return candidate.id not in rotten

    result = prove_slots(backups, Policy(0, 3), NOW, intact)
    assert ids(result.slots) == sorted(backup(age).id for age in expected_slots)
    assert ids(result.delete) == sorted(backup(age).id for age in expected_deleted)
    assert all(backup(age).id not in ids(result.delete) for age in expected_slots)
    assert len(checked) == len(set(checked))  # each backup is read at most once


def test_a_slot_holder_that_cannot_be_read_now_defers_every_deletion() -> None:
    backups = [backup(age) for age in (0, 1, 2, 30)]
    result = prove_slots(backups, Policy(7, 3), NOW, lambda candidate: None if candidate.id == backup(1).id else True)
    assert result.delete == [] and ids(result.keep) == ids(backups)
    assert "could not be re-checked" in result.why(backup(30).id)


def test_a_plan_that_deletes_nothing_reads_nothing() -> None:
    def intact(candidate: Backup) -> bool:
        raise AssertionError(f"{candidate.id} was read although nothing is deleted")

    result = prove_slots([backup(age) for age in (0, 1, 2)], Policy(7, 3), NOW, intact)
    assert result.delete == []


def test_future_dated_backups_never_fill_a_slot_and_are_not_deleted_by_age() -> None:
    ahead = backup(-365)  # written while the clock was a year ahead
    result = plan([ahead, backup(0.1), backup(1), backup(20)], Policy(7, 2), NOW)
    assert ahead.id not in ids(result.slots) and ahead.id in ids(result.keep)
    assert "in the future" in result.why(ahead.id)
    assert ids(result.slots) == ids([backup(0.1), backup(1)])


def test_a_cycle_run_while_the_clock_is_a_month_ahead_deletes_no_backup_by_age() -> None:
    """The cycle's own backup (`fresh`) is stamped by the wrong clock; ages count from the newest backup that was
    there before it, so the month of real backups stays."""
    wrong_now = NOW + timedelta(days=30)
    just_written = backup(-30)  # stamped at wrong_now
    week = [backup(age) for age in (1, 2, 3, 4, 5, 6)]
    result = plan([just_written, *week], Policy(7, 3), wrong_now, fresh=just_written.id)
    assert result.delete == []
    # without the anchor (the old rule) four of them would have gone
    assert len(plan([just_written, *week], Policy(7, 3), wrong_now).delete) == 4


@pytest.mark.parametrize("days_since_last_backup", [0.5, 3, 40])
def test_ages_are_counted_from_the_newest_sound_backup_not_only_from_the_wall_clock(days_since_last_backup) -> None:
    """restic's --keep-within: when backups stop (or retention runs long after the last one), the gap alone ages
    nothing out."""
    backups = [backup(days_since_last_backup + offset) for offset in (0, 1, 2, 3, 6.5, 7.5)]
    result = plan(backups, Policy(7, 1), NOW)
    assert ids(result.delete) == [backup(days_since_last_backup + 7.5).id]


@pytest.mark.parametrize("window", [0, 7, None])
def test_backups_dated_in_the_future_are_never_deleted_whatever_the_window(window) -> None:
    """A clock an hour fast wrote three backups; with the window off they must not all go (review of issue 17)."""
    ahead = [backup(-1 / 24 - offset / 86400) for offset in (0, 1, 2)]
    result = plan(ahead, Policy(window, 3), NOW)
    assert result.delete == []
    assert all("in the future" in result.why(b.id) for b in ahead)


def test_the_newest_backup_of_a_set_is_kept_whatever_its_flags_or_the_window() -> None:
    newest = Backup(id="app-20261122T025900Z", artifact="app-20261122T025900Z.sqlite.zst",
                    created_at=NOW - timedelta(minutes=1), size=1, sha256="0" * 64, verified=True,
                    manifest={"flags": ["empty_allowed"]})
    result = plan([newest, backup(1), backup(2)], Policy(0, 1), NOW, fresh=newest.id)
    assert newest.id in ids(result.keep) and result.reasons[newest.id] == ["the newest backup of the set"]


def test_pre_restore_safety_backups_fill_no_slot_and_the_newest_one_is_always_kept() -> None:
    def safety(days_old: float) -> Backup:
        plain = backup(days_old)
        return Backup(id=plain.id, artifact=plain.artifact, created_at=plain.created_at, size=1, sha256="0" * 64,
                      verified=True, manifest={"reason": "pre-restore"})

    newer_safety, older_safety = safety(0.5), safety(20)
    result = plan([backup(0), newer_safety, backup(1), backup(2), older_safety, backup(30)], Policy(7, 3), NOW)
    assert ids(result.slots) == ids([backup(0), backup(1), backup(2)])
    assert newer_safety.id in ids(result.keep)
    assert ids(result.delete) == ids([older_safety, backup(30)])


def test_ages_move_on_while_the_newest_backups_are_flagged() -> None:
    """Ten nights of shrunk backups after a mass delete: ages count from the newest of them (the worker ran), not
    from the last unflagged backup, else nothing would ever age out while the flag lasts."""
    def flagged(days_old: float) -> Backup:
        plain = backup(days_old)
        return Backup(id=plain.id, artifact=plain.artifact, created_at=plain.created_at, size=1, sha256="0" * 64,
                      verified=True, manifest={"flags": ["shrunk"]})

    shrunk = [flagged(age) for age in range(10)]
    before = [backup(age) for age in (20, 21, 22, 23, 30)]
    result = plan([*shrunk, *before], Policy(7, 3), NOW)
    assert ids(result.slots) == ids(before[:3])  # the backups from before the shrink still fill the slots
    assert ids(result.delete) == ids([shrunk[8], shrunk[9], before[3], before[4]])
