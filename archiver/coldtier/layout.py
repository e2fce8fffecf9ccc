"""Where a range's files go in the lake, and which UTC day each one holds.

A range's archive is a set of files, one per UTC day on which it has rows, each under its day's
Hive partition::

    archive/<database>/<schema>.<table>/<partition_key>=YYYY-MM-DD/<stem>.v<version>.parquet

The partition key (``dt`` unless the table sets ``partition_key``) is never a column's name, and its
value is true of every row in the file: a reader filtering on ``dt = '2026-11-15'`` gets exactly the
rows whose time is on that UTC day. The day of a row is the UTC date of a ``timestamptz``, the date
of a ``timestamp`` (read as UTC, as its chunk bounds are) or a ``date``, and for an integer time
column the day of the value read as ``time_unit`` since the Unix epoch. No path component starts
with ``_`` or ``.`` (pyarrow, Spark, Glue, Athena and Trino skip such files).

Layout 1 (before this one) put a range's one file under ``year=/month=/day=`` of its range's
start (a lie for ranges spanning days, and ``day``/``year``/``month`` shadow columns of those
names); archives written before ranges had identities were named after their chunk
(``_hyper_1_7_chunk_...``, hidden from readers). Both are migrated (``coldtier/migrate.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from ..pg.quote import quote_ident, quote_literal
from . import typemap as tm
from .chunks import INTEGER, TableInfo, data_prefix, duration_in_units
from .identity import Identity, TimeValue, key_part

LAYOUT_VERSION = 2
EPOCH_DAY = date(1970, 1, 1)
DAY = timedelta(days=1)
MICROSECOND = timedelta(microseconds=1)


def data_part(text: str) -> str:
    """A key segment of the data path: key-safe, and never starting with ``_`` or ``.``."""
    part = key_part(text)
    if part[:1] in ("_", "."):
        part = f"%{ord(part[0]):02X}{part[1:]}"
    return part


def lake_prefix(database: str, table: TableInfo | str) -> str:
    """``archive/<database>/<schema>.<table>/``: the table's part of the lake (a reader's path)."""
    name = table.display if isinstance(table, TableInfo) else table
    return f"archive/{data_part(database)}/{data_part(name)}/"


def data_prefixes(database: str, table: str) -> list[str]:
    """Every prefix the table's data objects may be under (this layout's, and the earlier one's
    when its name needed escaping since)."""
    return sorted({lake_prefix(database, table), data_prefix(database, table)})


def data_key(database: str, info: TableInfo, identity: Identity, version: int, day: date) -> str:
    """``archive/<database>/<schema>.<table>/<key>=YYYY-MM-DD/<stem>.v<version>.parquet``

    Each version has its own keys: the manifest, written last, is what switches readers from one
    version to the next, and the superseded objects are deleted right after it.
    """
    return f"{lake_prefix(database, info)}{info.config.partition_key}={day.isoformat()}/{identity.stem}.v{version}.parquet"


def in_layout(document: dict[str, Any], partition_key: str) -> bool:
    """Is this manifest's archive in the current layout under ``partition_key``?"""
    layout = document.get("layout") or {}
    return layout.get("version") == LAYOUT_VERSION and layout.get("partition_key") == partition_key


def layout_json(partition_key: str) -> dict[str, Any]:
    return {"version": LAYOUT_VERSION, "partition_key": partition_key, "day": "UTC"}


# --------------------------------------------------------------------------------------------
# Days (pure)


def units_per_day(time_unit: str | None) -> int:
    return duration_in_units(DAY, time_unit or "s")


def day_of(value: Any, time_type: str, time_unit: str | None) -> date:
    """The UTC day of a time value (a bound or a row's time, as the database or Arrow returns it)."""
    if time_type == INTEGER:
        return EPOCH_DAY + timedelta(days=int(value) // units_per_day(time_unit))
    if isinstance(value, datetime):
        return (value.astimezone(UTC) if value.tzinfo else value).date()
    if isinstance(value, date):
        return value
    raise ValueError(f"not a time value: {value!r}")


def range_days(start: TimeValue | None, end: TimeValue | None, time_type: str, time_unit: str | None) -> list[date]:
    """The UTC days a range ``[start, end)`` touches (its start's day alone when unbounded)."""
    if start is None or end is None:
        known = start if start is not None else end
        return [day_of(known, time_type, time_unit)] if known is not None else [EPOCH_DAY]
    last_value: TimeValue = end - 1 if isinstance(end, int) else end - MICROSECOND
    return days_between(day_of(start, time_type, time_unit), day_of(last_value, time_type, time_unit))


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=offset) for offset in range((last - first).days + 1)]


@dataclass(frozen=True)
class DayWindow:
    """One UTC day of a table's time domain: ``[low, high)`` as SQL literals of the time column's type."""

    day: date
    low_sql: str
    high_sql: str


def day_window(day: date, info: TableInfo) -> DayWindow:
    if info.is_integer:
        per_day = units_per_day(info.config.time_unit)
        low = (day - EPOCH_DAY).days * per_day
        return DayWindow(day, str(low), str(low + per_day))
    return DayWindow(day, _literal(day, info.time_type), _literal(day + DAY, info.time_type))


def _literal(day: date, time_type: str) -> str:
    text = {"timestamptz": f"{day.isoformat()}T00:00:00+00:00", "timestamp": f"{day.isoformat()}T00:00:00"}.get(
        time_type, day.isoformat())
    return f"CAST({quote_literal(text)} AS {time_type})"


def condition_sql(info: TableInfo, window: DayWindow) -> str:
    column = quote_ident(info.time_column)
    return f"{column} >= {window.low_sql} AND {column} < {window.high_sql}"


def bounds_sql(info: TableInfo, relation: str) -> str:
    """The query for the least and greatest time of a relation (which days hold rows)."""
    column = quote_ident(info.time_column)
    return f"SELECT min({column}), max({column}) FROM {relation}"


def windows_for(info: TableInfo, start: TimeValue | None, end: TimeValue | None,
                bounds: Any) -> list[DayWindow]:
    """The days to write for a range: its one day, or (a range spanning several) each day from its
    least to its greatest time; ``bounds`` is called only then and returns (min, max) or Nones."""
    days = range_days(start, end, info.time_type, info.config.time_unit)
    if len(days) > 1:
        low, high = bounds()
        if low is None:
            days = days[:1]
        else:
            unit = info.config.time_unit
            days = days_between(day_of(low, info.time_type, unit), day_of(high, info.time_type, unit))
    return [day_window(day, info) for day in days]


def fingerprint_bounds(day: date, kind: str, time_unit: str | None) -> tuple[Decimal, Decimal]:
    """A day as a fingerprint's time numbers: seconds since 1970 for timestamps, days for dates,
    the integer itself otherwise; ``[low, high)``."""
    days = (day - EPOCH_DAY).days
    scale = {tm.TIMESTAMP: 86_400, tm.DATE: 1}.get(kind, units_per_day(time_unit))
    return Decimal(days * scale), Decimal((days + 1) * scale)
