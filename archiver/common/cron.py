"""5-field cron expressions as APScheduler 3 triggers (crontab's weekday numbering kept)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from apscheduler.triggers.cron import CronTrigger


class CronError(ValueError):
    pass


_CRON_WEEKDAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


def _crontab_weekday_number(token: str) -> int:
    token = token.lower()
    if token in _CRON_WEEKDAYS:
        return _CRON_WEEKDAYS.index(token)
    if not (token.isascii() and token.isdigit()) or int(token) > 7:
        raise CronError(f"day-of-week {token!r} is not 0-7 or a name (sun..sat)")
    return int(token) % 7


def _weekday_field_for_apscheduler(field: str) -> str:
    """Translate a crontab day-of-week field into APScheduler 3's terms.

    APScheduler 3 counts weekdays from Monday = 0 while cron counts from Sunday = 0, so
    ``0 3 * * 0`` would silently run on Mondays. Expanding the field into weekday names
    removes the ambiguity.
    """
    if field == "*":
        return field
    days: set[int] = set()
    for item in field.split(","):
        span, _, step_text = item.partition("/")
        step = int(step_text) if step_text.isascii() and step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise CronError(f"day-of-week step {step_text!r} is not a positive number")
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            start, end = span.split("-", 1)
            first, last = _crontab_weekday_number(start), _crontab_weekday_number(end)
            if end in ("7",):
                last = 7
            if last < first:
                raise CronError(f"day-of-week range {span!r} runs backwards")
        else:
            first = last = _crontab_weekday_number(span)
        days.update(day % 7 for day in range(first, last + 1, step or 1))
    return ",".join(_CRON_WEEKDAYS[day] for day in sorted(days))


def cron_trigger(expression: str, tz: timezone = UTC) -> CronTrigger:
    """A 5-field cron expression (minute hour day-of-month month day-of-week) as a trigger.

    Cron runs a job when *either* a restricted day-of-month or a restricted day-of-week
    matches; APScheduler needs both. Rather than run at surprising times, that combination
    is refused.
    """
    fields = str(expression).split()
    if len(fields) != 5:
        raise CronError(f"expected 5 fields (minute hour day month weekday), found {len(fields)}")
    minute, hour, day, month, weekday = fields
    if day not in ("*", "?") and weekday not in ("*", "?"):
        raise CronError("restricting both day-of-month and day-of-week is ambiguous; restrict one")
    try:
        trigger = CronTrigger(minute=minute, hour=hour, day=day, month=month,
                              day_of_week=_weekday_field_for_apscheduler(weekday), timezone=tz)
    except ValueError as exc:
        raise CronError(str(exc)) from None
    if trigger.get_next_fire_time(None, datetime.now(tz)) is None:
        raise CronError("never fires (a day the month never has, such as 31 in February)")
    return trigger


def cron_interval(expression: str, *, now: datetime | None = None) -> timedelta:
    """The longest gap between two consecutive runs of a schedule, sampled over the next runs.

    Used to decide when a backup is stale (older than two intervals).
    """
    trigger = cron_trigger(expression)
    current = now or datetime.now(UTC)
    previous = trigger.get_next_fire_time(None, current)
    longest = timedelta(0)
    for _ in range(40):
        if previous is None:
            break
        following = trigger.get_next_fire_time(previous, previous + timedelta(seconds=1))
        if following is None:
            break
        longest = max(longest, following - previous)
        previous = following
    return longest
