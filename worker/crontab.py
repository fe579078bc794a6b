"""Standard 5-field crontab expressions as APScheduler 3 triggers.

APScheduler 3 reads day-of-week 0 as Monday and joins day-of-month and day-of-week with AND. Standard cron
(and every crontab our users copy from) reads 0 and 7 as Sunday and, when both day fields are restricted,
fires when *either* matches. We translate the day-of-week field to names and build an OrTrigger for the
second case, so that `0 2 * * 0` fires on Sundays and `0 0 1 * 1` fires on the 1st and on every Monday.
"""

from datetime import datetime, timedelta, timezone as dt_timezone, tzinfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

_DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def _day_number(token: str) -> int:
    token = token.strip().lower()
    if token in _DAY_NAMES:
        return _DAY_NAMES.index(token)
    if token.isdigit() and 0 <= int(token) <= 7:
        return int(token) % 7
    raise ValueError(f"day of week {token!r} is not 0-7 or sun-sat")


def translate_day_of_week(field: str) -> str:
    """Given a crontab day-of-week field (0 and 7 are Sunday), return the same days as APScheduler names.

    Raise ValueError if the field is not valid crontab syntax.
    """
    if field == "*":
        return "*"
    days: set[int] = set()
    for item in field.split(","):
        body, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"step {step_text!r} in day of week is not a positive number")
            step = int(step_text)
        if body == "*":
            first, last = 0, 6
        elif "-" in body:
            start, _, end = body.partition("-")
            first, last = _day_number(start), _day_number(end)
            if end.strip() == "7":
                last = 7
            if last < first:
                raise ValueError(f"day-of-week range {body!r} runs backwards")
        else:
            first = last = _day_number(body)
            if step_text:
                last = 7 if body.strip() == "0" else 6
        days.update(day % 7 for day in range(first, last + 1, step))
    return ",".join(_DAY_NAMES[day] for day in sorted(days))


class OncePerWallClock(BaseTrigger):
    """A trigger that always moves forward in real time and fires at most once per local wall-clock time.

    APScheduler 3.11's CronTrigger computes "after the previous run" as `previous + 1 µs` in wall-clock
    arithmetic; inside the repeated hour when clocks go back that lands an hour *earlier*, and it returns the same
    time again, so the scheduler loops forever (agronholm/apscheduler#1021). This wrapper never gives the inner
    trigger a previous time: it asks for the first fire time after an instant computed in UTC. And when 02:30
    happens twice, it fires once, as cron does (an hourly job skips the repeated hour).
    """

    def __init__(self, inner: BaseTrigger, timezone: tzinfo) -> None:
        self.inner = inner
        self.timezone = timezone

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        start = now
        if previous_fire_time is not None:
            start = min(now, self._after(previous_fire_time))
        for _ in range(_MAX_PROBES):
            fire = self.inner.get_next_fire_time(None, start)
            if fire is None:
                return None
            if fire < start:  # no progress from the inner trigger: step past it ourselves
                start = self._after(start, timedelta(minutes=1))
                continue
            if previous_fire_time is not None and (
                fire <= previous_fire_time or _wall(fire, self.timezone) == _wall(previous_fire_time, self.timezone)
            ):
                start = self._after(fire)
                continue
            return fire
        return None

    def _after(self, moment: datetime, step: timedelta = timedelta(microseconds=1)) -> datetime:
        """Return `moment + step` computed in UTC (real time), in the trigger's time zone."""
        return (moment.astimezone(dt_timezone.utc) + step).astimezone(self.timezone)

    def __str__(self) -> str:
        return str(self.inner)


_MAX_PROBES = 1000


def _wall(moment: datetime, zone: tzinfo) -> datetime:
    """Return the local wall-clock time of `moment`, without zone or fold."""
    return moment.astimezone(zone).replace(tzinfo=None, fold=0)


def cron_trigger(expression: str, timezone: tzinfo) -> BaseTrigger:
    """Given a standard crontab expression and a time zone, return an APScheduler trigger with cron's meaning.

    Raise ValueError, naming the field, if the expression is not five valid crontab fields.
    """
    expression = _MACROS.get(expression.strip().lower(), expression)
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(
            f"{expression!r} has {len(fields)} fields; a crontab has 5: minute hour day-of-month month day-of-week"
        )
    minute, hour, day, month, day_of_week = fields
    try:
        weekdays = translate_day_of_week(day_of_week)
    except ValueError as error:
        raise ValueError(f"{expression!r}: {error}") from None
    try:
        if day != "*" and day_of_week != "*":
            return OncePerWallClock(OrTrigger(
                [
                    CronTrigger(minute=minute, hour=hour, day=day, month=month, timezone=timezone),
                    CronTrigger(minute=minute, hour=hour, month=month, day_of_week=weekdays, timezone=timezone),
                ]
            ), timezone)
        return OncePerWallClock(CronTrigger(
            minute=minute, hour=hour, day=day, month=month, day_of_week=weekdays, timezone=timezone
        ), timezone)
    except ValueError as error:
        raise ValueError(f"{expression!r}: {error}") from None


def next_fire_times(trigger: BaseTrigger, now: datetime, count: int) -> list[datetime]:
    """Return the next `count` times the trigger fires after `now` (fewer if it never fires again)."""
    times: list[datetime] = []
    previous = None
    moment = now
    for _ in range(count):
        fire = trigger.get_next_fire_time(previous, moment)
        if fire is None:
            break
        times.append(fire)
        previous = fire
        moment = (fire.astimezone(dt_timezone.utc) + timedelta(microseconds=1)).astimezone(fire.tzinfo)
    return times


def period(trigger: BaseTrigger, now: datetime) -> timedelta | None:
    """Return the longest gap between consecutive runs over the next few runs: how stale a backup may get."""
    times = [now, *next_fire_times(trigger, now, 8)]
    if len(times) < 3:
        return None
    return max(later - earlier for earlier, later in zip(times[1:], times[2:]))
