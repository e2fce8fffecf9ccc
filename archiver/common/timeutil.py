"""Durations, byte counts and UTC timestamps: parsing and formatting."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

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
        raise DurationError("not a duration")  # what a duration is: the caller says (policy/fields.py)
    digits, unit = match.group(1), match.group(2)
    if unit == "m":
        raise DurationError("unit 'm' is ambiguous: write 'min' for minutes or 'mo' for months")
    if unit not in DURATION_UNITS:
        raise DurationError(f"unknown unit {unit!r}")
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


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat(moment: datetime) -> str:
    """UTC ISO-8601 with a ``Z`` suffix."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_timestamp(text: str) -> datetime:
    """ISO-8601 date or timestamp; a naive value is taken as UTC."""
    value = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range once converted to UTC") from None
    return value
