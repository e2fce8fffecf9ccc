"""Archived ranges of a table, and the bounds of a rehydration window (``--from``/``--to``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..coldtier import chunks
from ..coldtier import identity as ident
from ..coldtier.catalog import superseded_keys
from ..coldtier.manifest import ARCHIVE_CATALOG_PREFIX, LoadedManifest, list_archive_manifests
from ..common.timeutil import isoformat, parse_timestamp
from ..errors import UsageError
from ..pg.quote import quote_literal
from ..storage.base import Store

Bound = datetime | int | None  # None: unbounded


@dataclass
class ArchivedRange:
    """The archives of one time range (several when space partitions share it)."""

    start: Bound
    end: Bound
    documents: list[dict[str, Any]]

    @property
    def rows(self) -> int:
        return sum(int(document["rows"]) for document in self.documents)

    @property
    def names(self) -> str:
        return ", ".join(str(document["chunk"]["name"]) for document in self.documents)


# -- bounds -------------------------------------------------------------------------------------

def parse_bound(text: str, time_type: str, flag: str) -> datetime | int:
    """A ``--from``/``--to`` value in the table's time domain."""
    if time_type == chunks.INTEGER:
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"{flag} {text!r}: the table's time column is an integer; give an integer") from None
    try:
        return parse_timestamp(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a timestamp (allowed: ISO 8601, e.g. 2026-01-01 or "
                         "2026-01-01T06:00:00Z; UTC unless it says otherwise)") from None


def manifest_bound(value: Any) -> Bound:
    if value is None or isinstance(value, int):
        return value
    return parse_timestamp(str(value))


def show_bound(value: Bound) -> str:
    if value is None:
        return "unbounded"
    return str(value) if isinstance(value, int) else isoformat(value)


def overlaps(archived: ArchivedRange, low: Bound, high: Bound) -> bool:
    starts_before_high = archived.start is None or high is None or archived.start < high  # type: ignore[operator]
    ends_after_low = archived.end is None or low is None or archived.end > low  # type: ignore[operator]
    return starts_before_high and ends_after_low


def clip(archived: ArchivedRange, low: Bound, high: Bound) -> tuple[Bound, Bound]:
    start = low if archived.start is None or (low is not None and low > archived.start) else archived.start  # type: ignore[operator]
    end = high if archived.end is None or (high is not None and high < archived.end) else archived.end  # type: ignore[operator]
    return start, end


def sql_bound(value: Bound, pg_type: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, int):
        return str(value)
    return f"CAST({quote_literal(isoformat(value))} AS {pg_type})"


# -- choosing the archives ------------------------------------------------------------------------

def archived_ranges(store: Store, table: str) -> tuple[list[ArchivedRange], list[str]]:
    """Every archived time range of ``table`` (oldest first) with the manifests to load for it, and
    the problems of unreadable manifests. Manifests superseded by a newer version are left out."""
    found = list_archive_manifests(store, ARCHIVE_CATALOG_PREFIX)
    segment = f"/{ident.key_part(table)}/"
    readable: list[LoadedManifest] = []
    problems = []
    for key, loaded in sorted(found.items()):
        if loaded.document is None:
            if segment in key:
                problems.append(f"{store.describe(key)}: {loaded.error}")
        elif loaded.document.get("table") == table:
            readable.append(loaded)
    superseded = superseded_keys(readable)
    by_range: dict[tuple[str, str], ArchivedRange] = {}
    for loaded in readable:
        if loaded.key in superseded:
            continue
        document = loaded.document or {}
        span = document["range"]
        group = by_range.setdefault((str(span.get("start")), str(span.get("end"))), ArchivedRange(
            manifest_bound(span.get("start")), manifest_bound(span.get("end")), []))
        group.documents.append(document)
    ranges = sorted(by_range.values(), key=lambda r: (r.start is not None, r.start or 0, r.names))
    return ranges, problems


def archived_tables(store: Store) -> list[str]:
    found = list_archive_manifests(store, ARCHIVE_CATALOG_PREFIX)
    return sorted({str(loaded.document["table"]) for loaded in found.values() if loaded.document})
