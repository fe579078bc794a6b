"""Defects an adversarial review found in the retention tiers (issue 21), each kept as the test that failed on
the code before the fix (jobs/retention.py, jobs/tiers.py, worker/keeping.py)."""

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from jobs.backups import Backup
from jobs.retention import Policy, plan, prove_slots
from jobs.tiers import Tiers
from tests.unit.test_tiers import DAY, at, damaged, every, kept_times, tiered

NEW_YORK = ZoneInfo("America/New_York")


def test_a_bucket_that_keeps_everything_keeps_its_old_safety_backups_too() -> None:
    """S3_RETENTION_DAYS unset and no S3_KEEP_* tier: "the bucket keeps everything" (docs/retention.md, docs/s3.md,
    worker/variables.py), as it did on main. The plan deletes every safety backup older than 7 days instead
    (jobs/retention.py `_plan_set`: the `not policy.prunes` branch is never reached for a pre-restore backup), so
    `prune` deletes them from the bucket and `offsite.sync` never uploads them ("doomed")."""
    now = datetime(2026, 12, 5, 3, tzinfo=timezone.utc)
    safety = [at("2026-11-20T10:00", reason="pre-restore"), at("2026-11-10T10:00", reason="pre-restore")]
    backups = [*every("2026-11-01T02:00", "2026-12-05T02:00", DAY), *safety]
    keep_everything = Policy(None, 3)  # what worker.context.policy_of gives the bucket with nothing set
    assert not keep_everything.prunes
    result = plan(backups, keep_everything, now)
    assert [b.id for b in result.delete] == []


def test_a_damaged_holder_of_a_period_without_deletions_does_not_take_a_periods_place() -> None:
    """docs/retention.md: "A deletion never leaves fewer than BACKUP_KEEP_MIN intact copies, nor a period's place to
    a damaged copy." Seven dailies over eight nightly backups, the third newest damaged (SHA-256): restic's
    semantics on sound backups keep the eighth night as the seventh daily. `stand_ins` proves only the holders of
    periods a deleted backup falls in, so the damaged holder of 2026-12-03 is never re-checked, keeps its day's
    place, and the intact 2026-11-28 backup is deleted: six intact dailies are left."""
    backups = every("2026-11-28T02:00", "2026-12-05T02:00", DAY)
    intact, checked = damaged(at("2026-12-03T02:00").id)
    result = prove_slots(backups, tiered(daily=7), datetime(2026, 12, 5, 3, tzinfo=timezone.utc), intact)
    assert "2026-11-28T02:00" in kept_times(result), f"deleted after checking only {checked}"


def test_a_daily_deletion_relies_on_every_daily_holder_of_a_nightly_schedule() -> None:
    """The same gap on the nightly policy docs/retention.md recommends (7/4/12/1): the weekly and monthly holders
    are proven (their periods hold deleted backups), the seven dailies never are; a damaged daily leaves six."""
    backups = every("2026-09-01T02:00", "2026-12-05T02:00", DAY)
    rotten = at("2026-12-02T02:00").id
    policy = tiered(keep_min=3, daily=7, weekly=4, monthly=12, yearly=1)
    result = prove_slots(backups, policy, datetime(2026, 12, 5, 3, tzinfo=timezone.utc), lambda b: b.id != rotten)
    dailies = [reason for b in result.keep if b.id != rotten for reason in result.reasons[b.id] if reason.startswith("daily ")]
    assert len(dailies) == 7, dailies


def test_an_odd_manifest_date_does_not_break_the_plan_in_a_zone_west_of_utc() -> None:
    """A manifest is untrusted input; one whose `created_at` is 0001-01-01 (its artifact stamp is of 2026) is
    sound as far as `jobs.selection` can tell. On main the plan handled it; with a tier, `holders` converts every
    sound backup to BACKUP_TIMEZONE's clock and `astimezone(America/New_York)` of year 1 raises OverflowError, so
    every retention run (and `status`, which plans too) fails for that set."""
    odd = Backup(id="app-20261101T020000Z.sqlite", artifact="app-20261101T020000Z.sqlite.zst",
                 created_at=datetime(1, 1, 1, tzinfo=timezone.utc), size=1, sha256="0" * 64, verified=True, manifest={})
    backups = [*every("2026-11-20T02:00", "2026-12-05T02:00", DAY), odd]
    result = plan(backups, Policy(0, 3, Tiers(daily=7), NEW_YORK), datetime(2026, 12, 5, 3, tzinfo=timezone.utc))
    assert len(result.keep) + len(result.delete) == len(backups)



def test_one_cycle_run_while_the_clock_is_a_year_ahead_deletes_no_tier_holder() -> None:
    """jobs/retention.py promises that "a cycle run while the clock is a month ahead cannot age out a month of
    backups" (the backup just written, `fresh`, does not move the anchor), and issue 21 lists "a clock that jumped
    ahead once" among the cases. With the nightly policy docs/retention.md recommends, the one backup written
    while the clock reads a year ahead fills a day, a week, a month and the year, and so pushes the oldest daily,
    weekly and monthly holders out: they are deleted by that one cycle, and stay lost after the clock is fixed
    (the stray backup is then dated in the future and fills nothing)."""
    real_now = datetime(2026, 12, 5, 3, tzinfo=timezone.utc)
    history = every("2025-10-01T02:00", "2026-12-05T02:00", DAY)
    policy = tiered(keep_min=3, daily=7, weekly=4, monthly=12, yearly=1)
    before = {b.id for b in plan(history, policy, real_now).keep}
    ahead = at("2027-12-05T02:00")  # the clock jumped a year ahead for this cycle
    during = plan([*history, ahead], policy, datetime(2027, 12, 5, 2, 1, tzinfo=timezone.utc), fresh=ahead.id)
    lost = sorted(before - {b.id for b in during.keep})
    assert lost == []
