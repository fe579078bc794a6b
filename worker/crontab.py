"""Standard 5-field crontab expressions as APScheduler 3 triggers.

APScheduler 3 reads day-of-week 0 as Monday and joins day-of-month and day-of-week with AND. Standard cron
(and every crontab our users copy from) reads 0 and 7 as Sunday and, when both day fields are restricted,
fires when *either* matches. We translate the day-of-week field to names and build an OrTrigger for the
second case, so that `0 2 * * 0` fires on Sundays and `0 0 1 * 1` fires on the 1st and on every Monday.
"""

from datetime import datetime, timedelta, tzinfo

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
            return OrTrigger(
                [
                    CronTrigger(minute=minute, hour=hour, day=day, month=month, timezone=timezone),
                    CronTrigger(minute=minute, hour=hour, month=month, day_of_week=weekdays, timezone=timezone),
                ]
            )
        return CronTrigger(
            minute=minute, hour=hour, day=day, month=month, day_of_week=weekdays, timezone=timezone
        )
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
        moment = fire + timedelta(microseconds=1)
    return times


def period(trigger: BaseTrigger, now: datetime) -> timedelta | None:
    """Return the longest gap between consecutive runs over the next few runs: how stale a backup may get."""
    times = [now, *next_fire_times(trigger, now, 8)]
    if len(times) < 3:
        return None
    return max(later - earlier for earlier, later in zip(times[1:], times[2:]))
