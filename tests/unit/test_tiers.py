"""Retention tiers (issue 21) as tables of cases: restic's `forget --keep-*` semantics on the wall clock of
BACKUP_TIMEZONE. Every expected list is written out by hand (dates, hours), never computed the way the code does."""

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from jobs.backups import Backup
from jobs.retention import Policy, plan, prove_slots
from jobs.tiers import Tiers, label

UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def damaged(rotten: str) -> tuple[Callable[[Backup], bool], list[str]]:
    """Return a SHA-256 re-check that fails only the backup `rotten`, and the list of the ids it was asked about."""
    checked: list[str] = []

    def intact(candidate: Backup) -> bool:
        checked.append(candidate.id)
        return candidate.id != rotten

    return intact, checked


def at(when: str, **manifest: object) -> Backup:
    """A sound backup made at `when` (UTC, `2026-12-05T02:00`)."""
    created = datetime.fromisoformat(when).replace(tzinfo=timezone.utc)
    ident = f"app-{created:%Y%m%dT%H%M%SZ}"
    return Backup(id=ident, artifact=f"{ident}.sqlite.zst", created_at=created, size=1, sha256="0" * 64,
                  verified=True, manifest=dict(manifest))


def every(start: str, end: str, step: timedelta) -> list[Backup]:
    """Backups from `start` to `end` (UTC, both included) every `step`."""
    first, last = (datetime.fromisoformat(text) for text in (start, end))
    found = []
    while first <= last:
        found.append(at(first.isoformat()))
        first += step
    return found


def kept_times(result) -> list[str]:
    return sorted(f"{b.created_at:%Y-%m-%dT%H:%M}" for b in result.keep)


def tiered(zone: ZoneInfo = UTC, keep_min: int = 1, days: int | None = 0, safety_days: int = 7, **tiers: int) -> Policy:
    return Policy(days, keep_min, Tiers(**tiers), zone, safety_days)


DAY = timedelta(days=1)
QUARTER = timedelta(minutes=15)


def test_a_daily_schedule_over_two_years_keeps_7_dailies_4_weeklies_12_monthlies_and_the_years() -> None:
    """databasus#773: with 7/4/12/3 only the 7 dailies were kept. Here every tier adds its own."""
    backups = every("2025-01-01T02:00", "2026-12-05T02:00", DAY)
    result = plan(backups, tiered(daily=7, weekly=4, monthly=12, yearly=3), datetime(2026, 12, 5, 3, tzinfo=timezone.utc))
    dailies = ["2026-11-29", "2026-11-30", "2026-12-01", "2026-12-02", "2026-12-03", "2026-12-04", "2026-12-05"]
    weeklies = ["2026-11-15", "2026-11-22"]  # 2026-W46 and W47 end on those Sundays; W48 and W49 are dailies
    monthlies = ["2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31", "2026-06-30", "2026-07-31",
                 "2026-08-31", "2026-09-30", "2026-10-31"]  # 2026-11-30 and 2026-12-05 are dailies
    yearlies = ["2025-12-31"]  # 2026 is 2026-12-05; nothing older than 2025 exists
    assert kept_times(result) == sorted(f"{day}T02:00" for day in dailies + weeklies + monthlies + yearlies)
    assert result.tiers == {"newest": 1, "daily": 7, "weekly": 4, "monthly": 12, "yearly": 2}
    newest = at("2026-12-05T02:00").id
    assert result.reasons[newest][:5] == ["newest 1", "daily 2026-12-05", "weekly 2026-W49", "monthly 2026-12", "yearly 2026"]
    assert result.reasons[at("2026-11-22T02:00").id] == ["weekly 2026-W47"]
    assert result.reasons[at("2025-12-31T02:00").id] == ["yearly 2025"]
    assert len(result.delete) == len(backups) - 20 and not result.reasons[at("2026-11-21T02:00").id]


def test_every_15_minutes_for_40_days_with_24_hourly_7_daily_4_weekly_6_monthly() -> None:
    backups = every("2026-10-26T12:00", "2026-12-05T11:45", QUARTER)
    assert len(backups) == 40 * 96
    result = plan(backups, tiered(hourly=24, daily=7, weekly=4, monthly=6), datetime(2026, 12, 5, 12, tzinfo=timezone.utc))
    hourly = [f"2026-12-04T{hour:02d}:45" for hour in range(12, 24)] + [f"2026-12-05T{hour:02d}:45" for hour in range(12)]
    daily = [f"{day}T23:45" for day in ("2026-11-29", "2026-11-30", "2026-12-01", "2026-12-02", "2026-12-03")]
    weekly = ["2026-11-15T23:45", "2026-11-22T23:45"]  # the last quarter of the Sundays ending W46 and W47
    monthly = ["2026-10-31T23:45"]  # only October, November and December hold backups
    assert kept_times(result) == sorted(hourly + daily + weekly + monthly)
    assert result.tiers == {"newest": 1, "hourly": 24, "daily": 7, "weekly": 4, "monthly": 3}
    assert len(result.keep) == 32


@pytest.mark.parametrize("zone, labels", [
    # clocks fall back at 01:00 UTC (03:00 CEST → 02:00 CET): 02:00-03:00 happens twice, and those are two hours
    (BERLIN, ["2026-10-25 04:00+01:00", "2026-10-25 03:00+01:00", "2026-10-25 02:00+01:00", "2026-10-25 02:00+02:00",
              "2026-10-25 01:00+02:00", "2026-10-25 00:00+02:00"]),
    (UTC, ["2026-10-25 03:00+00:00", "2026-10-25 02:00+00:00", "2026-10-25 01:00+00:00", "2026-10-25 00:00+00:00",
           "2026-10-24 23:00+00:00", "2026-10-24 22:00+00:00"]),
])
def test_the_hour_clocks_fall_back_over_counts_twice_in_berlin(zone, labels) -> None:
    backups = every("2026-10-24T22:00", "2026-10-25T03:45", QUARTER)
    result = plan(backups, tiered(zone, hourly=6), datetime(2026, 10, 25, 4, tzinfo=timezone.utc))
    assert kept_times(result) == [f"2026-10-24T{h}:45" for h in ("22", "23")] + [f"2026-10-25T0{h}:45" for h in range(4)]
    assert [next(r for r in result.reasons[b.id] if r.startswith("hourly")) for b in sorted(result.keep, key=lambda b: b.created_at, reverse=True)] \
        == [f"hourly {text}" for text in labels]


def test_the_hour_clocks_skip_in_spring_is_no_period_in_berlin() -> None:
    backups = every("2026-03-28T23:00", "2026-03-29T02:45", QUARTER)  # 00:00 CET to 04:45 CEST
    result = plan(backups, tiered(BERLIN, hourly=4), datetime(2026, 3, 29, 3, tzinfo=timezone.utc))
    assert sorted(r for b in result.keep for r in result.reasons[b.id] if r.startswith("hourly")) == [
        "hourly 2026-03-29 00:00+01:00", "hourly 2026-03-29 01:00+01:00", "hourly 2026-03-29 03:00+02:00",
        "hourly 2026-03-29 04:00+02:00"]


def test_the_repeated_hour_of_new_york_counts_twice() -> None:
    backups = every("2026-11-01T04:30", "2026-11-01T06:45", QUARTER)  # 00:30 EDT to 01:45 EST
    result = plan(backups, tiered(NEW_YORK, hourly=10), datetime(2026, 11, 1, 7, tzinfo=timezone.utc))
    hours = sorted(r for b in result.keep for r in result.reasons[b.id] if r.startswith("hourly"))
    assert hours == ["hourly 2026-11-01 00:00-04:00", "hourly 2026-11-01 01:00-04:00", "hourly 2026-11-01 01:00-05:00"]


@pytest.mark.parametrize("zone, deleted", [
    # 22:30 UTC is 00:30 the next day in Berlin in summer time and 23:30 the same day in winter: the local
    # 25th holds two backups (the night before the change and the night of it), so the 24th's backup is the one
    # from the 23rd (UTC); read in UTC, the 24th's is the one from the 24th
    (BERLIN, ["2026-10-22T22:30", "2026-10-24T22:30"]),
    (UTC, ["2026-10-22T22:30", "2026-10-23T22:30"]),
])
def test_days_are_the_time_zones_days_across_the_autumn_change(zone, deleted) -> None:
    backups = every("2026-10-22T22:30", "2026-10-28T22:30", DAY)
    result = plan(backups, tiered(zone, daily=5), datetime(2026, 10, 28, 23, tzinfo=timezone.utc))
    assert sorted(f"{b.created_at:%Y-%m-%dT%H:%M}" for b in result.delete) == deleted


@pytest.mark.parametrize("zone, deleted", [
    # 04:30 UTC on a Monday is 23:30 on Sunday in New York: that backup ends the local week before
    (NEW_YORK, ["2026-11-10T04:30"]),
    (UTC, ["2026-11-09T04:30", "2026-11-16T04:30"]),
])
def test_weeks_are_iso_weeks_of_the_time_zone(zone, deleted) -> None:
    backups = [at(day + "T04:30") for day in ("2026-11-09", "2026-11-10", "2026-11-16", "2026-11-17")]
    result = plan(backups, tiered(zone, weekly=3), datetime(2026, 11, 17, 5, tzinfo=timezone.utc))
    assert sorted(f"{b.created_at:%Y-%m-%dT%H:%M}" for b in result.delete) == deleted


def test_iso_weeks_cross_the_new_year() -> None:
    """2026-12-31 and 2027-01-03 are in 2026-W53; 2027-W01 starts on Monday 2027-01-04."""
    backups = every("2026-12-21T12:00", "2027-01-10T12:00", DAY)
    result = plan(backups, tiered(weekly=3, yearly=2), datetime(2027, 1, 10, 13, tzinfo=timezone.utc))
    assert kept_times(result) == ["2026-12-27T12:00", "2026-12-31T12:00", "2027-01-03T12:00", "2027-01-10T12:00"]
    assert result.reasons[at("2027-01-03T12:00").id] == ["weekly 2026-W53"]
    assert result.reasons[at("2026-12-31T12:00").id] == ["yearly 2026"]


@pytest.mark.parametrize("zone, kept", [
    # 23:30 UTC is already the next day in Berlin: each local month ends with the backup of the UTC day before
    # its last day; February 2028 has 29 days
    (BERLIN, ["2028-01-30T23:30", "2028-02-28T23:30", "2028-03-30T23:30", "2028-04-29T23:30", "2028-05-10T23:30"]),
    (UTC, ["2028-01-31T23:30", "2028-02-29T23:30", "2028-03-31T23:30", "2028-04-30T23:30", "2028-05-10T23:30"]),
])
def test_months_of_every_length_and_the_zones_month_boundary(zone, kept) -> None:
    backups = every("2027-12-01T23:30", "2028-05-10T23:30", DAY)
    result = plan(backups, tiered(zone, monthly=5), datetime(2028, 5, 11, tzinfo=timezone.utc))
    assert kept_times(result) == kept


def test_periods_without_a_backup_do_not_count() -> None:
    """restic: a gap uses none of the N days; the seven dailies reach back past it."""
    backups = [b for b in every("2026-11-01T02:00", "2026-11-30T02:00", DAY) if not 21 <= b.created_at.day <= 25]
    result = plan(backups, tiered(daily=7), datetime(2026, 11, 30, 3, tzinfo=timezone.utc))
    assert kept_times(result) == [f"2026-11-{day}T02:00" for day in (19, 20, 26, 27, 28, 29, 30)]


def test_a_backup_stamped_by_a_clock_that_jumped_ahead_once_is_its_days_newest_once_that_day_has_come() -> None:
    backups = [*every("2026-11-01T02:00", "2026-12-05T02:00", DAY), at("2026-12-03T14:00")]
    result = plan(backups, tiered(daily=7), datetime(2026, 12, 5, 3, tzinfo=timezone.utc))
    assert kept_times(result) == ["2026-11-29T02:00", "2026-11-30T02:00", "2026-12-01T02:00", "2026-12-02T02:00",
                                  "2026-12-03T14:00", "2026-12-04T02:00", "2026-12-05T02:00"]


def test_a_backup_still_dated_in_the_future_fills_no_period_and_is_kept() -> None:
    ahead = at("2026-12-09T02:00")  # the clock was four days ahead when it was written, and is right now
    backups = [*every("2026-11-01T02:00", "2026-12-05T02:00", DAY), ahead]
    result = plan(backups, tiered(daily=7, monthly=2), datetime(2026, 12, 5, 3, tzinfo=timezone.utc))
    assert kept_times(result) == ["2026-11-29T02:00", "2026-11-30T02:00", "2026-12-01T02:00", "2026-12-02T02:00",
                                  "2026-12-03T02:00", "2026-12-04T02:00", "2026-12-05T02:00", "2026-12-09T02:00"]
    assert [r for r in result.reasons[ahead.id] if "daily" in r or "monthly" in r] == []
    assert "in the future" in result.why(ahead.id)


def test_only_sound_backups_fill_a_period() -> None:
    backups = [at("2026-12-05T02:00"), at("2026-12-05T14:00"),
               at("2026-12-04T02:00"), at("2026-12-04T14:00"),  # 14:00 damaged (SHA-256)
               at("2026-12-03T02:00"), at("2026-12-03T14:00", flags=["shrunk"]),
               at("2026-12-02T02:00"), at("2026-12-02T14:00", flags=["empty_allowed"])]
    result = plan(backups, tiered(daily=4), datetime(2026, 12, 5, 15, tzinfo=timezone.utc), damaged=[at("2026-12-04T14:00").id])
    assert kept_times(result) == ["2026-12-02T02:00", "2026-12-03T02:00", "2026-12-04T02:00", "2026-12-05T14:00"]
    assert "not sound: it is damaged" in result.why(at("2026-12-04T14:00").id)
    assert "not sound: it shrank" in result.why(at("2026-12-03T14:00").id)


@pytest.mark.parametrize("safety_days, kept_safety", [(7, ["2026-12-02T10:00", "2026-11-29T10:00"]), (0, ["2026-12-02T10:00"])])
def test_safety_backups_are_kept_outside_the_tiers_for_their_days_and_the_newest_always(safety_days, kept_safety) -> None:
    safety = [at(when, reason="pre-restore") for when in ("2026-12-02T10:00", "2026-11-29T10:00", "2026-11-20T10:00")]
    backups = [*every("2026-11-15T02:00", "2026-12-05T02:00", DAY), *safety]
    result = plan(backups, tiered(daily=2, safety_days=safety_days), datetime(2026, 12, 5, 3, tzinfo=timezone.utc))
    assert sorted(b for b in kept_times(result) if b.endswith("10:00")) == sorted(kept_safety)
    assert not any(r.startswith("daily") for s in safety for r in result.reasons[s.id])  # never in a tier
    assert result.tiers["daily"] == 2


def test_every_rule_keeps_and_any_one_suffices() -> None:
    backups = every("2026-12-01T00:00", "2026-12-05T12:00", QUARTER)
    now = datetime(2026, 12, 5, 12, 5, tzinfo=timezone.utc)
    result = plan(backups, tiered(keep_min=6, days=1, daily=4), now)
    within = [b for b in backups if b.created_at >= datetime(2026, 12, 4, 12, tzinfo=timezone.utc)]
    assert kept_times(result) == sorted({*(f"{b.created_at:%Y-%m-%dT%H:%M}" for b in within),
                                         "2026-12-02T23:45", "2026-12-03T23:45"})
    assert result.reasons[at("2026-12-05T11:00").id] == ["newest 6", "within 1d of newest"]
    assert result.reasons[at("2026-12-03T23:45").id] == ["daily 2026-12-03"]


def test_no_window_and_no_tier_keeps_everything_and_tiers_alone_turn_pruning_on() -> None:
    backups = every("2026-01-01T02:00", "2026-12-05T02:00", DAY)
    now = datetime(2026, 12, 5, 3, tzinfo=timezone.utc)
    assert plan(backups, Policy(None, 1), now).delete == []
    assert len(plan(backups, Policy(None, 1, Tiers(monthly=3)), now).keep) == 3
    assert Policy(None, 1, Tiers(monthly=3)).prunes and not Policy(None, 1).prunes


def test_sets_fill_their_own_periods() -> None:
    ours = every("2026-12-01T02:00", "2026-12-05T02:00", DAY)
    theirs = [Backup(id=f"other-{b.created_at:%Y%m%dT%H%M%SZ}", artifact=f"other-{b.created_at:%Y%m%dT%H%M%SZ}.sqlite.zst",
                     created_at=b.created_at + timedelta(hours=1), size=1, sha256="0" * 64, verified=True, manifest={})
              for b in ours]
    result = plan(ours + theirs, tiered(daily=2), datetime(2026, 12, 5, 4, tzinfo=timezone.utc))
    assert len(result.keep) == 4 and result.tiers["daily"] == 4


def test_a_damaged_tier_holder_is_found_before_deleting_and_the_next_backup_of_its_day_takes_its_place() -> None:
    backups = [at("2026-12-05T02:00"), at("2026-12-04T02:00"), at("2026-12-04T14:00"), at("2026-12-03T02:00")]
    rotten = at("2026-12-04T14:00").id
    intact, checked = damaged(rotten)
    result = prove_slots(backups, tiered(daily=2), datetime(2026, 12, 5, 3, tzinfo=timezone.utc), intact)
    assert kept_times(result) == ["2026-12-04T02:00", "2026-12-05T02:00"]
    assert sorted(checked) == sorted([at("2026-12-05T02:00").id, rotten, at("2026-12-04T02:00").id])


def test_a_tier_holder_that_cannot_be_read_now_defers_the_deletions_of_its_day() -> None:
    backups = [at("2026-12-05T02:00"), at("2026-12-04T02:00"), at("2026-12-04T14:00")]
    result = prove_slots(backups, tiered(daily=2), datetime(2026, 12, 5, 3, tzinfo=timezone.utc),
                         lambda b: None if b.id == at("2026-12-04T14:00").id else True)
    assert result.delete == [] and "could not be re-checked" in result.why(at("2026-12-04T02:00").id)


@pytest.mark.parametrize("tier, when, text", [
    ("hourly", datetime(2026, 12, 4, 13, 20, tzinfo=BERLIN), "2026-12-04 13:00+01:00"),
    ("daily", datetime(2026, 12, 4, 23, 59, tzinfo=NEW_YORK), "2026-12-04"),
    ("weekly", datetime(2026, 11, 29, 12, tzinfo=UTC), "2026-W48"),
    ("weekly", datetime(2027, 1, 1, 12, tzinfo=UTC), "2026-W53"),
    ("monthly", datetime(2026, 11, 30, tzinfo=UTC), "2026-11"),
    ("yearly", datetime(2026, 1, 1, tzinfo=UTC), "2026"),
])
def test_period_labels_read_as_an_operator_says_them(tier, when, text) -> None:
    assert label(tier, when) == text


def test_tiers_refuse_negative_counts_and_describe_themselves() -> None:
    with pytest.raises(ValueError):
        Tiers(daily=-1)
    assert Tiers(hourly=24, daily=7, monthly=6).describe() == "hourly 24, daily 7, monthly 6"
    assert tiered(BERLIN, keep_min=3, days=0, daily=7).describe() == "newest 3, daily 7 (Europe/Berlin); safety backups 7d"


def simulate(policy: Policy, start: datetime, step: timedelta, cycles: int) -> int:
    """Run `policy` as the worker does, cycle by cycle (a backup, then the plan applied); return the most backups
    held at once."""
    held: list[Backup] = []
    most = 0
    for number in range(cycles):
        when = start + step * number
        held.append(at(when.strftime("%Y-%m-%dT%H:%M")))
        gone = {b.id for b in plan(held, policy, when + timedelta(minutes=1), fresh=held[-1].id).delete}
        held = [b for b in held if b.id not in gone]
        most = max(most, len(held))
    return most


@pytest.mark.parametrize("policy, step, cycles, copies, reached", [
    # docs/retention.md, "Recommended policies": the copies each holds at most, and what the simulated span
    # reaches (the figure is not loose: over a long enough span each policy fills its tiers)
    (tiered(BERLIN, keep_min=3, daily=7, weekly=4, monthly=12, yearly=1), DAY, 800, 22, 22),
    (tiered(BERLIN, keep_min=3, hourly=24, daily=7, weekly=4, monthly=6), QUARTER, 100 * 96, 40, 36),  # 4 months
    (tiered(BERLIN, keep_min=3, hourly=24, daily=2), timedelta(hours=1), 30 * 24, 26, 26),
    (tiered(BERLIN, keep_min=3, hourly=24, daily=30, weekly=12, monthly=24, yearly=5), timedelta(hours=1), 200 * 24,
     87, 64),  # 7 months of the bucket's five years (87 after five and a half)
])
def test_the_recommended_policies_never_hold_more_copies_than_the_docs_say(policy, step, cycles, copies, reached) -> None:
    most = simulate(policy, datetime(2026, 1, 1, 1, 0, tzinfo=timezone.utc), step, cycles)
    assert reached <= most <= copies
