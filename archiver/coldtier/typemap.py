"""PostgreSQL column types -> Arrow types, decided from the catalog alone (never guessed from data).

Each column gets a :class:`ColumnPlan`: the expression the export SELECT reads, the Arrow type the
Parquet file holds, and the fingerprint *kind* that says how the column is summarised on both
sides (see :mod:`archiver.coldtier.fingerprint`). The mapping:

==============================  =====================================================
PostgreSQL                      Arrow / Parquet
==============================  =====================================================
bool, int2/4/8, float4/8        bool, int16/32/64, float32/64
numeric(p,s), p <= 38           decimal128(p, s)
numeric, numeric(p>38)          string holding PostgreSQL's text form
timestamptz / timestamp         timestamp[us, UTC] / timestamp[us]
date / time                     date32 / time64[us]
interval                        struct<months: int32, days: int32, nanoseconds: int64>
                                (Arrow's month_day_nano layout; Parquet has no such type)
uuid                            16-byte fixed binary, arrow.uuid extension (Parquet UUID)
json / jsonb                    string holding JSON, arrow.json extension (Parquet JSON)
enum                            dictionary<int32, string>
bytea                           binary
text, varchar, char(n)          string (char(n) keeps its padding, as PostgreSQL sends it)
arrays of the above             list<element>
domains                         as their base type
anything else                   string holding its text form
==============================  =====================================================

The ``portable`` profile (``parquet: {profile: portable}``) differs where engines balk: uuid as its
36-character string, time as int64 microseconds since midnight, interval as an ISO 8601 string
(``P1Y2M3DT4H5M6.5S``), enum as a plain string, arrays of those as the array's text form; such
fields say so in their metadata (``encoding``), and restore-archive reads them back.

Every field carries its PostgreSQL type in the field metadata (``pg_type``), and text-form
columns are marked (``pg_text_form``), so the original type is never lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..errors import UsageError
from ..pg.quote import quote_ident

# fingerprint kinds
BOOL, INT, FLOAT, DECIMAL, NUMERIC_TEXT, TIMESTAMP, DATE, TIME, INTERVAL, UUID, TEXT, BINARY, LIST = (
    "bool", "int", "float", "decimal", "numeric_text", "timestamp", "date", "time", "interval", "uuid", "text",
    "binary", "list")

MAX_DECIMAL128_PRECISION = 38
EXACT, PORTABLE = "exact", "portable"  # profiles (archive.parquet.profile)

_SCALARS: dict[str, tuple[pa.DataType, str]] = {
    "bool": (pa.bool_(), BOOL),
    "int2": (pa.int16(), INT),
    "int4": (pa.int32(), INT),
    "int8": (pa.int64(), INT),
    "float4": (pa.float32(), FLOAT),
    "float8": (pa.float64(), FLOAT),
    "text": (pa.string(), TEXT),
    "varchar": (pa.string(), TEXT),
    "bpchar": (pa.string(), TEXT),
    "json": (pa.json_(pa.string()), TEXT),
    "jsonb": (pa.json_(pa.string()), TEXT),
    "bytea": (pa.binary(), BINARY),
    "uuid": (pa.uuid(), UUID),
    "date": (pa.date32(), DATE),
    "time": (pa.time64("us"), TIME),
    "timestamp": (pa.timestamp("us"), TIMESTAMP),
    "timestamptz": (pa.timestamp("us", tz="UTC"), TIMESTAMP),
    "interval": (pa.struct([("months", pa.int32()), ("days", pa.int32()), ("nanoseconds", pa.int64())]), INTERVAL),
}
INTERVAL_TYPE = _SCALARS["interval"][0]
ENUM_TYPE = pa.dictionary(pa.int32(), pa.string())


@dataclass(frozen=True)
class CatalogColumn:
    """What the catalog says about one column (see :func:`archiver.pg.catalog.table_columns`)."""

    name: str
    pg_type: str  # as declared, e.g. "numeric(12,3)" or a domain's name
    base_type: str  # behind any domain, e.g. "numeric(12,3)"
    typname: str  # base type's name, e.g. "numeric", "_int4"
    typtype: str  # b base, e enum, c composite, r range, m multirange, p pseudo
    category: str  # pg_type.typcategory: A array, N numeric, S string ...
    typmod: int
    is_domain: bool = False
    elem_typname: str | None = None
    elem_typtype: str | None = None
    elem_type: str | None = None
    not_null: bool = False

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CatalogColumn:
        return cls(name=row["name"], pg_type=row["pg_type"], base_type=row["base_type"], typname=row["typname"],
                   typtype=row["typtype"], category=row["category"], typmod=int(row["typmod"]),
                   is_domain=bool(row["is_domain"]), elem_typname=row.get("elem_typname"),
                   elem_typtype=row.get("elem_typtype"), elem_type=row.get("elem_type"),
                   not_null=bool(row.get("not_null")))


@dataclass(frozen=True)
class ColumnPlan:
    name: str
    pg_type: str
    arrow_type: pa.DataType
    kind: str
    value_sql: str  # the column as its base type
    select_sql: str  # what the export reads (value_sql, or its text form)
    text_form: bool = False
    elem_kind: str | None = None  # lists: the element's kind
    length_sql: str = ""  # texts: the exported value as text, for octet_length (json/enum need a cast)
    encoding: str = ""  # the portable profile's encodings (ENCODINGS); "" where the value keeps its type

    @property
    def field(self) -> pa.Field:
        metadata = {"pg_type": self.pg_type}
        if self.text_form:
            metadata["pg_text_form"] = "true"
        if self.encoding:
            metadata["encoding"] = self.encoding
        return pa.field(self.name, self.arrow_type, nullable=True, metadata=metadata)

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "pg_type": self.pg_type, "arrow_type": str(self.arrow_type),
                "text_form": self.text_form, **({"encoding": self.encoding} if self.encoding else {})}


def numeric_precision_scale(typmod: int) -> tuple[int, int] | None:
    """(precision, scale) of a numeric typmod, None for an unconstrained numeric.

    PostgreSQL 15 stores the scale in 11 signed bits, so negative scales exist.
    """
    if typmod < 4:
        return None
    packed = typmod - 4
    precision = (packed >> 16) & 0xFFFF
    scale = packed & 0x7FF
    if scale & 0x400:
        scale -= 0x800
    return precision, scale


def _decimal_type(typmod: int) -> pa.DataType | None:
    shape = numeric_precision_scale(typmod)
    if shape is None:
        return None
    precision, scale = shape
    if 1 <= precision <= MAX_DECIMAL128_PRECISION and 0 <= scale <= precision:
        return pa.decimal128(precision, scale)
    return None


def _scalar(typname: str, typtype: str | None, typmod: int) -> tuple[pa.DataType, str] | None:
    """Arrow type and kind for a non-array base type, or None when it goes out as text."""
    if typtype == "e":
        return ENUM_TYPE, TEXT
    if typtype != "b":
        return None
    if typname == "numeric":
        decimal = _decimal_type(typmod)
        return (decimal, DECIMAL) if decimal is not None else None
    return _SCALARS.get(typname)


# Types any role can create, and so own: their owner may CREATE CAST (the_type AS text) WITH FUNCTION
# of its own, which ``::text`` would run with archiver's privileges (casts are not schema objects: no
# search_path keeps them out). Their text form is taken from their output function instead, which
# is what the cast-free ``::text`` conversion of these types does.
_OWNABLE_TYPTYPES = ("e", "c", "r", "m")  # enum, composite, range, multirange


def _text_sql(column: CatalogColumn, value_sql: str) -> str:
    """``value_sql`` as text without a cast a type's owner could have planted (NULL stays NULL)."""
    ownable = column.typtype in _OWNABLE_TYPTYPES or (column.category == "A" and
                                                      column.elem_typtype in _OWNABLE_TYPTYPES)
    if ownable:
        return f"CASE WHEN pg_catalog.num_nulls({value_sql}) = 0 THEN pg_catalog.concat({value_sql}) END"
    return f"({value_sql})::text"


def plan_column(column: CatalogColumn, *, text_form: bool = False, profile: str = EXACT) -> ColumnPlan:
    """How one column is read, typed and fingerprinted."""
    ident = quote_ident(column.name)
    value_sql = f"{ident}::{column.base_type}" if column.is_domain else ident

    def as_text(kind: str = TEXT) -> ColumnPlan:
        return ColumnPlan(column.name, column.pg_type, pa.string(), kind, value_sql, _text_sql(column, value_sql),
                          text_form=True)

    if text_form:
        return as_text()
    if profile == PORTABLE and (portable := _portable(column, value_sql)) is not None:
        return portable
    if column.typname == "numeric" and column.typtype == "b":
        decimal = _decimal_type(column.typmod)
        if decimal is None:
            return as_text(NUMERIC_TEXT)
        # read as PostgreSQL's text form, then parsed by Arrow: exact, and far cheaper than the
        # driver's own numeric decoding
        return ColumnPlan(column.name, column.pg_type, decimal, DECIMAL, value_sql, f"({value_sql})::text")
    if column.category == "A" and column.elem_typname:
        return _plan_array(column, value_sql) or as_text()
    scalar = _scalar(column.typname, column.typtype, column.typmod)
    if scalar is None:
        return as_text()
    arrow_type, kind = scalar
    as_text_sql = _text_sql(column, value_sql) if column.typname in ("json", "jsonb") or column.typtype == "e" \
        else value_sql
    return ColumnPlan(column.name, column.pg_type, arrow_type, kind, value_sql, value_sql, length_sql=as_text_sql)


# -- the portable profile: strings and integers where engines balk -------------------------------

UUID_TEXT, TIME_MICROS, INTERVAL_ISO, ENUM_TEXT, ARRAY_TEXT = (
    "uuid_text", "time_micros", "interval_iso8601", "enum_text", "array_text")
_NOT_PORTABLE = ("uuid", "time", "interval")


def _portable(column: CatalogColumn, value_sql: str) -> ColumnPlan | None:
    """The portable profile's plan where it differs from the exact one, else None: Spark rejects
    Parquet's UUID type, Athena/Glue have no TIME or UUID, intervals are a struct only archiver
    reads back, and dictionary-encoded enums are not every engine's string."""
    if column.category == "A" and (column.elem_typname in _NOT_PORTABLE or column.elem_typtype == "e"):
        text = _text_sql(column, value_sql)  # the array's text form, e.g. {a0eebc99-...,...}
        return ColumnPlan(column.name, column.pg_type, pa.string(), TEXT, value_sql, text, length_sql=text,
                          encoding=ARRAY_TEXT)
    if column.typtype == "e":
        text = _text_sql(column, value_sql)
        return ColumnPlan(column.name, column.pg_type, pa.string(), TEXT, value_sql, text, length_sql=text,
                          encoding=ENUM_TEXT)
    if column.typtype != "b" or column.category == "A":
        return None
    if column.typname == "uuid":  # 36 characters, lowercase, with hyphens
        text = f"({value_sql})::text"
        return ColumnPlan(column.name, column.pg_type, pa.string(), TEXT, value_sql, text, length_sql=text,
                          encoding=UUID_TEXT)
    if column.typname == "time":  # microseconds since midnight
        micros = f"(extract(epoch FROM {value_sql}) * 1000000)::int8"
        return ColumnPlan(column.name, column.pg_type, pa.int64(), TIME, value_sql, micros, encoding=TIME_MICROS)
    if column.typname == "interval":
        iso = iso_interval_sql(value_sql)
        return ColumnPlan(column.name, column.pg_type, pa.string(), TEXT, value_sql, iso, length_sql=iso,
                          encoding=INTERVAL_ISO)
    return None


def iso_interval_sql(value_sql: str) -> str:
    """An interval as ISO 8601 with designators, every field present and signed on its own (as
    PostgreSQL's IntervalStyle iso_8601 signs them, and as its interval input reads them back):
    ``P1Y2M3DT4H5M6.5S``, ``P0Y-1M0DT0H0M0S``."""
    def part(field: str) -> str:
        return f"extract({field} FROM {value_sql})::int8::text"
    seconds = f"pg_catalog.trim_scale(extract(second FROM {value_sql})::numeric)::text"
    return (f"CASE WHEN {value_sql} IS NULL THEN NULL ELSE 'P' || {part('year')} || 'Y' || {part('month')} || 'M' || "
            f"{part('day')} || 'DT' || {part('hour')} || 'H' || {part('minute')} || 'M' || {seconds} || 'S' END")


def _plan_array(column: CatalogColumn, value_sql: str) -> ColumnPlan | None:
    if column.elem_typname == "numeric":
        decimal = _decimal_type(column.typmod)
        element = decimal if decimal is not None else pa.string()
        # numeric elements are read in PostgreSQL's text form, then typed (exact, no float detour)
        return ColumnPlan(column.name, column.pg_type, pa.list_(element), LIST, value_sql, f"({value_sql})::text[]",
                          elem_kind=DECIMAL if decimal is not None else NUMERIC_TEXT)
    scalar = _scalar(column.elem_typname or "", column.elem_typtype, column.typmod)
    if scalar is None:
        return None
    element, kind = scalar
    return ColumnPlan(column.name, column.pg_type, pa.list_(element), LIST, value_sql, value_sql, elem_kind=kind)


def plan_columns(columns: list[CatalogColumn], *, time_column: str, text_columns: list[str] | None = None,
                 table: str = "", profile: str = EXACT) -> list[ColumnPlan]:
    """Plans for every column; refuses unknown text_columns and a time column of an unusable type."""
    names = {column.name for column in columns}
    forced = list(text_columns or [])
    unknown = [name for name in forced if name not in names]
    if unknown:
        raise UsageError(f"{table}: text_columns names columns that do not exist: {', '.join(unknown)} "
                         f"(columns: {', '.join(sorted(names))})")
    if time_column in forced:
        raise UsageError(f"{table}: the time column {time_column!r} cannot be exported as text")
    plans = [plan_column(column, text_form=column.name in forced, profile=profile) for column in columns]
    time_plan = next((plan for plan in plans if plan.name == time_column), None)
    if time_plan is None:
        raise UsageError(f"{table}: time column {time_column!r} does not exist")
    return plans


def arrow_schema(plans: list[ColumnPlan], metadata: dict[str, str] | None = None) -> pa.Schema:
    return pa.schema([plan.field for plan in plans], metadata=metadata)


def select_sql(plans: list[ColumnPlan], relation: str) -> str:
    """The export query: every column under its own name, typed as planned."""
    columns = ", ".join(f"{plan.select_sql} AS {quote_ident(plan.name)}" for plan in plans)
    return f"SELECT {columns} FROM {relation}"


def plans_of_schema(schema: pa.Schema) -> list[ColumnPlan]:
    """Plans for fingerprinting a file by its own Arrow schema alone (its rows compared with a copy
    of themselves, as when an archive moves to a new layout): every string by its bytes."""
    return [ColumnPlan(field.name, (field.metadata or {}).get(b"pg_type", b"").decode(), field.type, kind, "", "",
                       elem_kind=elem)
            for field in schema for kind, elem in [_kind_of(field.type)]]


def _kind_of(arrow_type: pa.DataType) -> tuple[str, str | None]:
    if isinstance(arrow_type, pa.BaseExtensionType):
        return (UUID, None) if arrow_type.extension_name == "arrow.uuid" else _kind_of(arrow_type.storage_type)
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return LIST, _kind_of(arrow_type.value_type)[0]
    checks = ((pa.types.is_boolean, BOOL), (pa.types.is_integer, INT), (pa.types.is_floating, FLOAT),
              (pa.types.is_decimal, DECIMAL), (pa.types.is_timestamp, TIMESTAMP), (pa.types.is_date, DATE),
              (pa.types.is_time, TIME), (pa.types.is_struct, INTERVAL), (pa.types.is_fixed_size_binary, UUID),
              (pa.types.is_binary, BINARY), (pa.types.is_large_binary, BINARY))
    return next((kind for check, kind in checks if check(arrow_type)), TEXT), None
