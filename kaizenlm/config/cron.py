"""Standard five-field crontab expressions -> APScheduler 3 CronTriggers.

    trigger = cron_trigger("0 3 * * 1", "UTC")      # Mondays 03:00 UTC

Why not `CronTrigger.from_crontab` as is: APScheduler 3.x numbers weekdays from Monday = 0,
so its "0 3 * * 1" fires on *Tuesdays* (a documented historical mismatch, fixed only in
4.x). We translate the day-of-week field from crontab numbering (0 or 7 = Sunday, 1 =
Monday, ... 6 = Saturday; names sun..sat) into APScheduler's weekday names, so a
crontab line means here what it means everywhere else.

One more difference we refuse instead of silently changing: when both day-of-month and
day-of-week are restricted, cron fires when *either* matches, APScheduler only when
*both* do. Such an expression raises CronError naming the problem.

This module imports only APScheduler, so the config loader can validate cron keys cheaply.
"""

from __future__ import annotations

from apscheduler.triggers.cron import CronTrigger
from apscheduler.util import astimezone

DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab numbering: sun = 0 (and 7)


class CronError(ValueError):
    """A cron expression or time zone that cannot be scheduled; the message says why."""


def _day_number(text: str) -> int:
    t = text.strip().lower()
    if t.isdigit() and 0 <= int(t) <= 7:
        return int(t)
    if t[:3] in DAY_NAMES and len(t) == 3:
        return DAY_NAMES.index(t)
    raise CronError(f"day of week '{text}' is not 0-7 or one of {', '.join(DAY_NAMES)}")


def day_of_week_field(field: str) -> str:
    """The crontab day-of-week field as an explicit list of APScheduler weekday names.

    '1' -> 'mon', '1-5' -> 'mon,tue,wed,thu,fri', '*/2' -> 'sun,tue,thu,sat', '5-7' -> 'sun,fri,sat'.
    """
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        if step_text and not (step_text.isdigit() and int(step_text) >= 1):
            raise CronError(f"day-of-week step '/{step_text}' must be a positive integer")
        step = int(step_text) if step_text else 1
        if span == "*":
            lo, hi = 0, 6
        elif "-" in span:
            a, b = span.split("-", 1)
            lo, hi = _day_number(a), _day_number(b)
            if lo > hi:
                raise CronError(f"day-of-week range '{span}' runs backwards; write it as a list instead")
        else:
            lo = _day_number(span)
            hi = 7 if step_text else lo  # cron: 'N/S' means N-max/S
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(DAY_NAMES[d] for d in sorted(days))


def check_timezone(timezone: str) -> None:
    """Raise CronError unless `timezone` is an IANA zone name (or 'UTC')."""
    try:
        astimezone(timezone)
    except (KeyError, ValueError):  # ZoneInfoNotFoundError is a KeyError
        raise CronError(f"unknown time zone '{timezone}'; use an IANA name such as 'UTC' or 'Europe/Berlin'") from None


def cron_trigger(expr: str, timezone: str = "UTC") -> CronTrigger:
    """A CronTrigger for a standard crontab line 'minute hour day-of-month month day-of-week'."""
    fields = expr.split()
    if len(fields) != 5:
        raise CronError(f"'{expr}' has {len(fields)} fields; a crontab line has 5: minute hour day-of-month "
                        "month day-of-week (e.g. '0 3 * * 1' = Mondays 03:00)")
    minute, hour, day, month, dow = fields
    if day not in ("*", "?") and dow not in ("*", "?"):
        raise CronError(f"'{expr}' restricts both day-of-month and day-of-week; cron runs when either matches, "
                        "APScheduler only when both do. Restrict one of them")
    check_timezone(timezone)
    weekdays = day_of_week_field(dow)
    try:
        return CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=weekdays, timezone=timezone)
    except ValueError as e:  # a field out of range or malformed
        raise CronError(f"'{expr}': {e}") from None
