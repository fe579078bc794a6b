from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from worker.crontab import cron_trigger, next_fire_times, period, translate_day_of_week

UTC = ZoneInfo("UTC")
# 2026-11-22 is a Sunday.
SUNDAY_NOON = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "field, expected",
    [
        ("*", "*"),
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("0-2", "sun,mon,tue"),
        ("5-7", "sun,fri,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("sat,sun", "sun,sat"),
        ("MON-wed", "mon,tue,wed"),
        ("1,3-4", "mon,wed,thu"),
    ],
)
def test_day_of_week_is_read_as_standard_cron(field: str, expected: str) -> None:
    assert translate_day_of_week(field) == expected


@pytest.mark.parametrize("field", ["8", "funday", "5-1", "*/0", "1-"])
def test_bad_day_of_week_is_refused(field: str) -> None:
    with pytest.raises(ValueError):
        translate_day_of_week(field)


def test_zero_in_day_of_week_fires_on_a_sunday() -> None:
    fires = next_fire_times(cron_trigger("0 2 * * 0", UTC), SUNDAY_NOON, 3)
    assert [f.strftime("%A %H:%M") for f in fires] == ["Sunday 02:00"] * 3
    assert fires[0].date().isoformat() == "2026-11-29"


def test_seven_in_day_of_week_also_fires_on_a_sunday() -> None:
    assert next_fire_times(cron_trigger("30 3 * * 7", UTC), SUNDAY_NOON, 1)[0].strftime("%A") == "Sunday"


def test_weekday_range_skips_the_weekend() -> None:
    fires = next_fire_times(cron_trigger("0 2 * * 1-5", UTC), SUNDAY_NOON, 5)
    assert [f.strftime("%a") for f in fires] == ["Mon", "Tue", "Wed", "Thu", "Fri"]


def test_day_of_month_and_day_of_week_together_fire_on_either_like_cron() -> None:
    fires = next_fire_times(cron_trigger("0 0 1 * 1", UTC), SUNDAY_NOON, 3)
    assert [f.date().isoformat() for f in fires] == ["2026-11-23", "2026-11-30", "2026-12-01"]


def test_schedule_is_read_in_its_time_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    fire = next_fire_times(cron_trigger("0 2 * * *", berlin), SUNDAY_NOON, 1)[0]
    assert fire.astimezone(UTC).hour == 1  # 02:00 CET is 01:00 UTC in November


@pytest.mark.parametrize(
    "expression, named",
    [("0 2 * *", "4 fields"), ("61 2 * * *", "61"), ("0 25 * * *", "25"), ("0 2 * * 9", "9"), ("* * 32 * *", "32")],
)
def test_bad_expression_is_refused_with_a_message_naming_the_problem(expression: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        cron_trigger(expression, UTC)


def test_daily_schedule_has_a_one_day_period_and_hourly_one_hour() -> None:
    assert period(cron_trigger("0 2 * * *", UTC), SUNDAY_NOON).total_seconds() == 86400
    assert period(cron_trigger("@hourly", UTC), SUNDAY_NOON).total_seconds() == 3600


def test_a_backup_fires_once_on_the_night_clocks_go_back() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    fires = next_fire_times(cron_trigger("30 2 * * *", berlin), datetime(2026, 10, 24, 12, 0, tzinfo=berlin), 3)
    assert [f.strftime("%m-%d %H:%M") for f in fires] == ["10-25 02:30", "10-26 02:30", "10-27 02:30"]


def test_an_hourly_job_moves_on_across_the_repeated_hour_instead_of_looping() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    trigger = cron_trigger("0 * * * *", berlin)
    fires = next_fire_times(trigger, datetime(2026, 10, 25, 0, 30, tzinfo=berlin), 4)
    assert [f.astimezone(UTC).strftime("%H:%M") for f in fires] == ["23:00", "00:00", "02:00", "03:00"]
    # What APScheduler's scheduler does: ask again with the last run and a "now" inside the repeated hour.
    inside = datetime(2026, 10, 25, 1, 0, 30, tzinfo=UTC).astimezone(berlin)
    assert trigger.get_next_fire_time(fires[1], inside) > fires[1]


# Two days before each of 2026's clock changes.
CHANGES = [("Europe/Berlin", "2026-03-27"), ("Europe/Berlin", "2026-10-23"), ("America/New_York", "2026-03-06"),
           ("America/New_York", "2026-10-30"), ("Australia/Sydney", "2026-04-03"), ("Australia/Sydney", "2026-10-02"),
           ("UTC", "2026-10-23")]


@pytest.mark.parametrize("expression", ["*/15 * * * *", "30 2 * * *", "0 */2 * * *", "0 * * * *", "0 2 * * 0", "0 0 1 * 1"])
@pytest.mark.parametrize("zone, start", CHANGES)
def test_fire_times_always_move_forward_through_clock_changes(expression: str, zone: str, start: str) -> None:
    tz = ZoneInfo(zone)
    trigger = cron_trigger(expression, tz)
    previous, moment = None, datetime.fromisoformat(start).replace(tzinfo=tz)
    seen = set()
    for _ in range(400):
        fire = trigger.get_next_fire_time(previous, moment)
        assert fire is not None
        if previous is not None:
            assert fire > previous
        wall = fire.replace(tzinfo=None, fold=0)
        assert wall not in seen
        seen.add(wall)
        # Like the scheduler: the run happened, now is a moment later.
        previous, moment = fire, (fire.astimezone(UTC) + timedelta(seconds=5)).astimezone(tz)
