"""What an archived range *is*: (table, time range, space partition), never a chunk's name.

TimescaleDB gives a chunk re-created for the same range (by a late row, or by
``restore-archive``) a new name; a native partition may come back as ``<name>_restored``. Both
are the same range, so they must find, and replace, the same archive. An identity is spelled as
a *stem* (``20261101T000000Z_20261102T000000Z`` plus ``_s<lo>_<hi>`` per space dimension) that
names the range's one manifest and its data objects.

Manifests written before identities existed (format_version 1) are keyed by chunk name; their
identity is read from their contents: the range they record, and for space-partitioned
hypertables the slices of the chunk of that name while it exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from ..common.timeutil import isoformat, parse_timestamp

TimeValue = datetime | int
# TimescaleDB's open ends of a dimension slice
SLICE_MIN, SLICE_MAX = -(2 ** 63), 2 ** 63 - 1


@dataclass(frozen=True, order=True)
class SpaceSlice:
    """One closed (space) dimension's slice of a chunk: ``column`` values hashing into [start, end)."""

    column: str
    start: int
    end: int

    def to_json(self) -> dict[str, Any]:
        return {"column": self.column, "start": self.start, "end": self.end}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> SpaceSlice:
        return cls(str(entry["column"]), int(entry["start"]), int(entry["end"]))


@dataclass(frozen=True)
class Identity:
    """An archived range. ``space`` is () for tables without space partitions; None when a
    legacy manifest of a space-partitioned table does not say which slice it holds."""

    table: str
    start: TimeValue | None
    end: TimeValue | None
    space: tuple[SpaceSlice, ...] | None = ()

    @property
    def stem(self) -> str:
        text = f"{range_token(self.start, unbounded='min')}_{range_token(self.end, unbounded='max')}"
        for piece in self.space or ():
            text += f"_s{_slice_token(piece.start, 'min')}_{_slice_token(piece.end, 'max')}"
        return text

    @property
    def time_range(self) -> tuple[TimeValue | None, TimeValue | None]:
        return self.start, self.end

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "start": bound_json(self.start), "end": bound_json(self.end),
                "space": [piece.to_json() for piece in self.space or ()], "stem": self.stem}

    def describe(self) -> str:
        text = f"[{show_value(self.start)}, {show_value(self.end)})"
        for piece in self.space or ():
            text += f" {piece.column} slice [{piece.start}, {piece.end})"
        return text


def range_token(value: TimeValue | None, *, unbounded: str) -> str:
    """A range bound in a key: ``20261101T000000Z``, an integer, or ``min``/``max``."""
    if value is None:
        return unbounded
    if isinstance(value, int):
        return str(value)
    moment = value.astimezone(UTC)
    text = f"{moment:%Y%m%dT%H%M%S}"
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return text + "Z"


def _slice_token(value: int, extreme: str) -> str:
    return extreme if value in (SLICE_MIN, SLICE_MAX) else str(value)


def key_part(text: str) -> str:
    """A name made safe for one key segment (no '/', nothing readers would misparse)."""
    return quote(text, safe="_.$-")


def bound_json(value: TimeValue | None) -> str | int | None:
    if value is None or isinstance(value, int):
        return value
    return isoformat(value)


def parse_bound_json(value: Any) -> TimeValue | None:
    if value is None or isinstance(value, int):
        return value
    return parse_timestamp(str(value))


def show_value(value: TimeValue | None) -> str:
    if value is None:
        return "unbounded"
    if isinstance(value, int):
        return str(value)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def of_manifest(document: dict[str, Any], chunk_slices: dict[str, tuple[SpaceSlice, ...]] | None = None,
                space_partitioned: bool = False) -> Identity:
    """The identity a manifest describes. Legacy (format 1) manifests carry no identity: their
    range is what they recorded; their space slice comes from ``chunk_slices`` (the slices of the
    table's chunks by name) when the chunk still exists, else it is unknown (None)."""
    recorded = document.get("identity")
    if recorded:
        return Identity(str(recorded["table"]), parse_bound_json(recorded.get("start")),
                        parse_bound_json(recorded.get("end")),
                        tuple(SpaceSlice.from_json(entry) for entry in recorded.get("space") or ()))
    span = document.get("range") or {}
    space: tuple[SpaceSlice, ...] | None = ()
    if space_partitioned:
        name = str((document.get("chunk") or {}).get("name", ""))
        space = (chunk_slices or {}).get(name)
    return Identity(str(document["table"]), parse_bound_json(span.get("start")), parse_bound_json(span.get("end")),
                    space)


def covers(window: tuple[TimeValue | None, TimeValue | None], identity: Identity) -> bool:
    """Does ``[window)`` contain the identity's whole time range?"""
    low, high = window
    starts = low is None or (identity.start is not None and low <= identity.start)  # type: ignore[operator]
    ends = high is None or (identity.end is not None and high >= identity.end)  # type: ignore[operator]
    return starts and ends
