"""What is archivable: TimescaleDB chunks and native range partitions, with their time ranges.

A chunk (or partition) is *due* for an action when its whole range ends at or before the
cutoff ``now - duration`` (ranges end exclusively, as in TimescaleDB's ``drop_chunks``).
The default partition and unbounded ranges are never due. All catalog SQL lives in
:mod:`archiver.pg.catalog`; this module turns its rows into :class:`TableInfo` and :class:`Chunk`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ..errors import UsageError
from ..pg.catalog import (
    call_integer_now,
    chunk_space_slices,
    current_database,
    hypertable_chunks,
    hypertable_dimensions,
    is_hypertable,
    range_partitions,
    relation_facts,
    table_columns,
    timescaledb_version,
)
from ..pg.connect import Session
from ..pg.quote import qualified
from ..policy.schema import ArchiveTable
from . import typemap as tm
from .identity import Identity, SpaceSlice, key_part
from .identity import show_value as show_value  # re-exported: a range's bounds are shown as chunks show them

HYPERTABLE = "hypertable"
PARTITIONED = "partitioned"
INTEGER = "integer"
TIME_TYPES = {"timestamptz": "timestamptz", "timestamp": "timestamp", "date": "date",
              "int2": INTEGER, "int4": INTEGER, "int8": INTEGER}
UNIT_MICROS = {"us": 1, "ms": 1_000, "s": 1_000_000, "min": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

TimeValue = datetime | int


@dataclass(frozen=True)
class Chunk:
    schema: str
    name: str
    start: TimeValue | None  # None: unbounded (MINVALUE)
    end: TimeValue | None  # None: unbounded (MAXVALUE)
    compressed: bool = False
    space: tuple[SpaceSlice, ...] = ()  # the chunk's slices of the hypertable's space dimensions

    @property
    def relation(self) -> str:
        return qualified(self.schema, self.name)

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class TableInfo:
    schema: str
    name: str
    kind: str  # HYPERTABLE or PARTITIONED
    time_column: str
    time_type: str  # timestamptz, timestamp, date or integer
    columns: list[tm.CatalogColumn]
    chunks: list[Chunk]
    config: ArchiveTable
    integer_now_call: str | None = None
    space_partitioned: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def is_integer(self) -> bool:
        return self.time_type == INTEGER

    @property
    def time_sql_type(self) -> str:
        """The SQL type to cast a boundary to (for drop_chunks)."""
        if self.is_integer:
            return next(column.typname for column in self.columns if column.name == self.time_column)
        return self.time_type

    def identity(self, chunk: Chunk) -> Identity:
        return Identity(self.display, chunk.start, chunk.end, chunk.space)

    def chunk_slices(self) -> dict[str, tuple[SpaceSlice, ...]]:
        """Space slices of the chunks by name (to place legacy manifests, which record only the name)."""
        return {chunk.name: chunk.space for chunk in self.chunks}

    def plans(self) -> list[tm.ColumnPlan]:
        return tm.plan_columns(self.columns, time_column=self.time_column, text_columns=self.config.text_columns,
                               table=self.display, profile=self.config.profile)


# --------------------------------------------------------------------------------------------
# Time arithmetic (pure)


def duration_in_units(duration: timedelta, unit: str) -> int:
    """A policy duration in the integer time column's units (ns, us, ms, s, min, h, d)."""
    micros = (duration.days * 86_400 + duration.seconds) * 1_000_000 + duration.microseconds
    if unit == "ns":
        return micros * 1_000
    return micros // UNIT_MICROS[unit]


def integer_to_datetime(value: int, unit: str) -> datetime:
    """An integer time value as a UTC datetime, reading it as ``unit``s since the Unix epoch."""
    micros = value // 1_000 if unit == "ns" else value * UNIT_MICROS[unit]
    return EPOCH + timedelta(microseconds=micros)


def cutoff(now: TimeValue, duration: timedelta, time_unit: str | None) -> TimeValue:
    """``now - duration`` in the table's time domain."""
    if isinstance(now, int):
        assert time_unit is not None
        return now - duration_in_units(duration, time_unit)
    return now - duration


def ends_by(chunk: Chunk, boundary: TimeValue) -> bool:
    """True when the chunk's whole range ends at or before ``boundary``."""
    return chunk.end is not None and chunk.end <= boundary  # type: ignore[operator]


def due(chunks: list[Chunk], boundary: TimeValue) -> list[Chunk]:
    return [chunk for chunk in chunks if ends_by(chunk, boundary)]


# --------------------------------------------------------------------------------------------
# Storage keys: by the range's identity (archiver.coldtier.identity), never by the chunk's name


def table_prefix(database: str, table: TableInfo | str) -> str:
    name = table.display if isinstance(table, TableInfo) else table
    return f"{key_part(database)}/{key_part(name)}"


def data_prefix(database: str, table: TableInfo | str) -> str:
    """Where layout 1 put the table's data objects (``archiver.coldtier.layout`` has today's keys)."""
    return f"archive/{table_prefix(database, table)}/"


def manifest_key(database: str, table: TableInfo | str, identity: Identity) -> str:
    """``catalog/archive/<database>/<schema>.<table>/<stem>.json`` (outside ``archive/``): one per range."""
    return f"catalog/archive/{table_prefix(database, table)}/{identity.stem}.json"


# --------------------------------------------------------------------------------------------
# Discovery (reads the catalog through archiver.pg.catalog)

_BOUND = re.compile(r"^FOR VALUES FROM \((?P<start>.*)\) TO \((?P<end>.*)\)$", re.S)


def parse_bound(text: str, time_type: str) -> TimeValue | None:
    """One range-partition bound as pg_get_expr prints it (UTC, ISO) -> a value; None if unbounded."""
    value = text.strip()
    if value in ("MINVALUE", "MAXVALUE"):
        return None
    if value.startswith("'") and value.endswith("'"):
        value = value[1:-1].replace("''", "'")
    if value in ("infinity", "-infinity"):
        return None
    if time_type == INTEGER:
        return int(value)
    if time_type == "date":
        day = date.fromisoformat(value)
        return datetime(day.year, day.month, day.day, tzinfo=UTC)
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _as_utc(value: Any) -> TimeValue | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return int(value)


def _split_name(table: ArchiveTable) -> tuple[str, str]:
    schema, _, name = table.qualified_name.partition(".")
    return schema, name


def _time_type(columns: list[tm.CatalogColumn], name: str, table: str) -> str:
    column = next((c for c in columns if c.name == name), None)
    if column is None:
        raise UsageError(f"{table}: time column {name!r} does not exist")
    kind = TIME_TYPES.get(column.typname)
    if kind is None:
        raise UsageError(f"{table}: time column {name!r} has type {column.pg_type}; archiver handles timestamptz, "
                         "timestamp, date and integer time columns")
    return kind


def _check_time_column(config: ArchiveTable, actual: str, table: str, what: str) -> None:
    if config.time_column and config.time_column != actual:
        raise UsageError(f"{table}: time_column is {config.time_column!r} but the table is {what} by {actual!r}",
                         hint=f"remove time_column or set it to {actual}")


def discover(current: Session, config: ArchiveTable) -> TableInfo:
    """The table's chunks/partitions and columns; refuses tables it cannot handle safely."""
    schema, name = _split_name(config)
    display = f"{schema}.{name}"
    facts = relation_facts(current, schema, name)
    if facts is None:
        raise UsageError(f"{display}: no such table in database {current_database(current)!r}")
    columns = [tm.CatalogColumn.from_row(row) for row in table_columns(current, schema, name)]
    if timescaledb_version(current) and is_hypertable(current, schema, name):
        info = _discover_hypertable(current, config, schema, name, columns)
    elif facts["relkind"] == "p":
        info = _discover_partitioned(current, config, schema, name, columns, facts)
    else:
        raise UsageError(f"{display} is neither a TimescaleDB hypertable nor a range-partitioned table; "
                         "archiver exports whole chunks or partitions only")
    if info.is_integer and not config.time_unit:
        raise UsageError(f"{display}: the time column {info.time_column!r} is an integer; set "
                         "archive.tables[].time_unit (ns, us, ms, s, min, h or d) so durations can be converted")
    info.plans()  # refuse bad text_columns now, before anything runs
    _check_partition_key(info)
    return info


def _check_partition_key(info: TableInfo) -> None:
    """A Hive partition key named like a column makes readers replace the column's values with the key's."""
    key = info.config.partition_key
    if any(column.name == key for column in info.columns):
        raise UsageError(f"{info.display}: column {key!r} has the name of the cold tier's partition key: readers with "
                         "Hive partitioning on would return the partition's value in place of the column's",
                         hint=f"set archive.tables[].partition_key of {info.display} to a name no column has "
                              f"(e.g. {'archive_day' if key == 'dt' else 'dt'})")


def _discover_hypertable(current: Session, config: ArchiveTable, schema: str, name: str,
                         columns: list[tm.CatalogColumn]) -> TableInfo:
    display = f"{schema}.{name}"
    dimensions = hypertable_dimensions(current, schema, name)
    time_dims = [d for d in dimensions if d["dimension_type"] == "Time"]
    if not time_dims:
        raise UsageError(f"{display}: hypertable without a time dimension")
    time_dim = time_dims[0]
    _check_time_column(config, time_dim["column_name"], display, "partitioned")
    time_type = _time_type(columns, time_dim["column_name"], display)
    if time_type == INTEGER and not time_dim["integer_now_call"]:
        raise UsageError(f"{display}: integer-time hypertable without an integer_now function; archiver needs it "
                         "to know 'now' in the table's units, as TimescaleDB's own policies do",
                         hint=f"SELECT set_integer_now_func('{display}', 'your_now_function')")
    slices: dict[str, list[SpaceSlice]] = {}
    for row in chunk_space_slices(current, schema, name):
        slices.setdefault(row["chunk"], []).append(SpaceSlice(row["column_name"], int(row["range_start"]),
                                                              int(row["range_end"])))
    chunks = []
    for row in hypertable_chunks(current, schema, name):
        if time_type == INTEGER:
            start, end = row["range_start_integer"], row["range_end_integer"]
        else:
            start, end = row["range_start"], row["range_end"]
        chunks.append(Chunk(row["schema"], row["name"], _as_utc(start), _as_utc(end), bool(row["is_compressed"]),
                            tuple(sorted(slices.get(row["name"], ())))))
    return TableInfo(schema, name, HYPERTABLE, time_dim["column_name"], time_type, columns, chunks, config,
                     integer_now_call=time_dim["integer_now_call"],
                     space_partitioned=any(d["dimension_type"] != "Time" for d in dimensions))


def _discover_partitioned(current: Session, config: ArchiveTable, schema: str, name: str,
                          columns: list[tm.CatalogColumn], facts: dict[str, Any]) -> TableInfo:
    display = f"{schema}.{name}"
    if facts["partstrat"] != "r":
        strategy = {"l": "list", "h": "hash"}.get(facts["partstrat"], facts["partstrat"])
        raise UsageError(f"{display} is {strategy}-partitioned; archiver handles range partitions by time")
    keys = facts["partcols"] or []
    if facts["partnatts"] != 1 or len(keys) != 1:
        raise UsageError(f"{display}: partition key {facts['partkeydef']} is not a single column; archiver handles "
                         "range partitions on one time column")
    time_column = keys[0]
    _check_time_column(config, time_column, display, "partitioned")
    time_type = _time_type(columns, time_column, display)
    chunks, notes = [], []
    for row in range_partitions(current, schema, name):
        bound = row["bound"] or ""
        if bound == "DEFAULT":
            notes.append(f"default partition {row['schema']}.{row['name']} is never archived or dropped")
            continue
        match = _BOUND.match(bound)
        if not match:
            raise UsageError(f"{display}: cannot read the bounds of partition {row['schema']}.{row['name']} "
                             f"({bound!r})")
        try:
            start, end = parse_bound(match["start"], time_type), parse_bound(match["end"], time_type)
        except ValueError as exc:
            raise UsageError(f"{display}: cannot read the bounds of partition {row['schema']}.{row['name']} "
                             f"({bound!r}): {exc}") from None
        chunks.append(Chunk(row["schema"], row["name"], start, end))
    chunks.sort(key=lambda c: (c.start is not None, c.start or 0, c.name))
    return TableInfo(schema, name, PARTITIONED, time_column, time_type, columns, chunks, config, notes=notes)


def table_now(current: Session, info: TableInfo, now: datetime) -> TimeValue:
    """'Now' in the table's time domain: the integer_now function's value for integer hypertables,
    the wall clock in time_unit since the epoch for integer partitions, ``now`` otherwise."""
    if not info.is_integer:
        return now
    if info.integer_now_call:
        return call_integer_now(current, info.integer_now_call)
    assert info.config.time_unit is not None
    micros = int((now - EPOCH) / timedelta(microseconds=1))
    return micros * 1_000 if info.config.time_unit == "ns" else micros // UNIT_MICROS[info.config.time_unit]
