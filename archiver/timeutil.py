"""Durations (``90d``, ``12h``, ``2y``), cron expressions and time formatting."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from apscheduler.triggers.cron import CronTrigger

DURATION_UNITS: dict[str, timedelta] = {
    "s": timedelta(seconds=1),
    "min": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
    "mo": timedelta(days=30),
    "y": timedelta(days=365),
}
DURATION_MAX = timedelta(days=100 * 365)
DURATION_HELP = ("a whole number and a unit: s, min, h, d, w, mo (30 days), y (365 days), e.g. 90d, 12h, 2y; "
                 "from 1s up to 100y")
_DURATION_RE = re.compile(r"^\s*([0-9]+)\s*([a-z]+)\s*$", re.ASCII)


class DurationError(ValueError):
    pass


def parse_duration(text: str, *, maximum: timedelta = DURATION_MAX) -> timedelta:
    """Parse ``90d`` / ``12h`` / ``2y``; ``m`` alone is refused as ambiguous (minutes or months?).

    The amount is bounded (100 years by default) so that ``now - duration`` stays a valid date
    and a duration in nanoseconds still fits a bigint.
    """
    match = _DURATION_RE.match(str(text).lower())
    if not match:
        raise DurationError(f"not a duration; expected {DURATION_HELP}")
    digits, unit = match.group(1), match.group(2)
    if unit == "m":
        raise DurationError("unit 'm' is ambiguous: write 'min' for minutes or 'mo' for months")
    if unit not in DURATION_UNITS:
        raise DurationError(f"unknown unit {unit!r}; expected {DURATION_HELP}")
    amount = int(digits) if len(digits) <= 12 else None
    if amount == 0:
        raise DurationError("a duration must be greater than zero")
    if amount is None or amount * DURATION_UNITS[unit].total_seconds() > maximum.total_seconds():
        raise DurationError(f"too long: at most {format_duration_limit(maximum)}")
    return amount * DURATION_UNITS[unit]


def format_duration_limit(delta: timedelta) -> str:
    """A limit in the unit a policy would use: ``100y``, ``24d``, ``1h``."""
    for unit in ("y", "d", "h", "min"):
        size = DURATION_UNITS[unit]
        if delta >= size and delta % size == timedelta(0):
            return f"{delta // size}{unit}"
    return format_duration(delta)


def format_duration(delta: timedelta) -> str:
    """Compact human form: ``3d4h``, ``12min``, ``45s``."""
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return "-" + format_duration(-delta)
    if seconds < 60:
        return f"{seconds}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        value, seconds = divmod(seconds, size)
        if value:
            parts.append(f"{value}{unit}")
    return "".join(parts[:2])


def format_bytes(amount: float) -> str:
    """``812 B``, ``24.3 KiB``, ``1.2 GiB``."""
    for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or suffix == "TiB":
            return f"{amount:.1f} {suffix}" if suffix != "B" else f"{int(amount)} B"
        amount /= 1024
    return f"{amount:.1f} TiB"


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


def cron_trigger(expression: str, tz: timezone = timezone.utc) -> CronTrigger:
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
    current = now or datetime.now(timezone.utc)
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


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def isoformat(moment: datetime) -> str:
    """UTC ISO-8601 with a ``Z`` suffix."""
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def parse_timestamp(text: str) -> datetime:
    """ISO-8601 date or timestamp; a naive value is taken as UTC."""
    value = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    try:
        value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("out of range once converted to UTC") from None
    return value
