"""What a backup records about a database's content: table references, row counts, checksums.

Pure data and the checksum recipe; the queries that compute them are in :mod:`archiver.pg.snapshot`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .quote import quote_ident

# -- consistent snapshots, database facts and content checksums ---------------------------------
#
# A backup's row counts and checksums are taken in the very snapshot pg_dump dumps: one
# connection opens a REPEATABLE READ transaction, exports its snapshot (pg_dump --snapshot=...)
# and keeps it open while pg_dump runs. The same checksum code runs on a restored database,
# so a restore drill compares like with like.

# Text output of every type must not depend on the server's or the session's configuration.
PINNED_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "lc_monetary": "C",
    "xmloption": "content",
}
# Per table: the row count and the exact (numeric) sum over rows of a 64-bit row hash, so the
# result does not depend on row order. The row hash is hash_record_extended(row, 0), which hashes
# each value with its type's own extended hash function (the functions hash partitioning relies
# on, stable across versions); it is 4x cheaper than hashing the row's text and 10x cheaper than
# an md5 of it. It sees values, not their spelling: numeric 1.5 and 1.50 hash alike. A table
# falls back to hashtextextended(row text, 0), which sees the text exactly, when a column type
# has no extended hash function (json, point, ...) or hashes an OID that a restore changes
# (enums and reg* types, also inside arrays, domains, composites and ranges), and on servers
# before PostgreSQL 14. Both assume the same byte order on both sides, as hash partitioning does.
#
# v2 (what backups record now) hashes a row's columns in the order of their names (sorted by
# code point: a fixed order that no server setting changes), not in column-position order as
# v1 did: pg_dump re-creates an inheritance child whose parent gained a column after it with
# another column order, and the same rows must give the same checksum there. A manifest names
# its method (content.method); a restore drill computes with that method, so backups taken
# before v2 still verify. Every function is schema-qualified, on top of the session's safe
# search_path: hashing runs on databases whose users may have planted look-alike functions.
CHECKSUM_V1 = "hash64-sum/v1"
CHECKSUM_V2 = "hash64-sum/v2"
CHECKSUM_METHOD = CHECKSUM_V2
CHECKSUM_METHODS = (CHECKSUM_V1, CHECKSUM_V2)
ROW_HASHES = {  # v1; {row} is the whole row
    "record": "pg_catalog.sum(pg_catalog.hash_record_extended({row}, 0))",
    "text": "pg_catalog.sum(pg_catalog.hashtextextended(({row})::text, 0))",
}


def row_expression(method: str, columns: Sequence[str]) -> str:
    """The row a checksum hashes: ``t`` / ``ROW(t.*)`` (v1), or its columns by name (v2)."""
    if method == CHECKSUM_V1:
        return "t"
    return "ROW(" + ", ".join(f"t.{quote_ident(name)}" for name in sorted(columns)) + ")"


def row_hash_sql(method: str, row_hash: str, columns: Sequence[str]) -> str:
    """The aggregate that sums a table's row hashes (``t`` is the table's alias)."""
    row = row_expression(method, columns)
    if method == CHECKSUM_V1 and row_hash == "text":
        row = "ROW(t.*)"
    return ROW_HASHES[row_hash].format(row=row)


@dataclass(frozen=True)
class DatabaseFacts:
    name: str
    server_version: str
    server_version_num: int
    size_bytes: int
    extensions: dict[str, str]  # name -> installed version (pg_extension.extversion)
    snapshot_time: datetime
    extension_schemas: dict[str, str] = field(default_factory=dict)  # name -> schema (pg_extension.extnamespace)
    # relations outside the system schemas (tables, chunks, indexes, sequences, views) and their
    # TOAST tables and indexes: a restore in one transaction locks about as many
    relations: int = 0


@dataclass(frozen=True)
class TableRef:
    """A table whose rows a backup accounts for.

    ``kind``: ``table``; ``partition`` (a leaf of a declaratively partitioned table);
    ``hypertable`` (a TimescaleDB hypertable, counted whole: all its chunks, compressed ones
    decompressed); ``continuous_aggregate`` (the materialization hypertable of a cagg, whose
    view is ``view``). Chunks and TimescaleDB's internal compressed tables are not listed:
    their rows are in their hypertable's totals, and their names are internal.
    """

    schema: str
    name: str
    kind: str
    parent: str | None = None
    view: str | None = None
    data_excluded: bool = False
    row_hash: str | None = None  # the row hash a manifest recorded, to checksum the same way again

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> TableRef:
        """A table entry of a backup manifest (``content.tables[]``), to count it again elsewhere."""
        return cls(entry["schema"], entry["name"], entry["kind"], parent=entry.get("parent"), view=entry.get("view"),
                   data_excluded=bool(entry.get("data_excluded")), row_hash=entry.get("row_hash"))


@dataclass(frozen=True)
class TableStats:
    table: TableRef
    rows: int
    checksum: str | None  # None when checksums were not asked for
    row_hash: str | None = None  # "record" or "text" (see ROW_HASHES)

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"schema": self.table.schema, "name": self.table.name, "kind": self.table.kind,
                                 "rows": self.rows}
        if self.checksum is not None:
            entry["checksum"] = self.checksum
            entry["row_hash"] = self.row_hash
        if self.table.parent:
            entry["parent"] = self.table.parent
        if self.table.view:
            entry["view"] = self.table.view
        if self.table.data_excluded:
            entry["data_excluded"] = True
        return entry


@dataclass(frozen=True)
class LargeObjectStats:
    count: int
    checksum: str | None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"count": self.count}
        if self.checksum is not None:
            entry["checksum"] = self.checksum
        if self.note:
            entry["note"] = self.note
        return entry


@dataclass(frozen=True)
class ContentStats:
    tables: list[TableStats]
    large_objects: LargeObjectStats
    materialized_views: list[MatviewStats] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(stats.rows for stats in self.tables)


@dataclass(frozen=True)
class TableFilter:
    """Tables pg_dump leaves out, as anchored regexes (see ``archiver.backup.dump.parse_name_pattern``).

    Each table pattern is ``(schema_regex or None, name_regex)``; without a schema part it
    matches tables visible on the search path, as pg_dump's own pattern expansion does.
    """

    exclude_schemas: tuple[str, ...] = ()
    exclude_tables: tuple[tuple[str | None, str], ...] = ()
    exclude_table_data: tuple[tuple[str | None, str], ...] = ()


def combine_checksum(rows: int, hash_sum: Any, row_hash: str = "record", method: str = CHECKSUM_METHOD) -> str:
    """32 hex digits from a table's row count and the sum of its rows' hashes."""
    return hashlib.sha256(f"{method}:{row_hash}:{rows}:{int(hash_sum or 0)}".encode()).hexdigest()[:32]


def empty_checksum(method: str = CHECKSUM_METHOD) -> str:
    return combine_checksum(0, 0, method=method)


EMPTY_CHECKSUM = empty_checksum()


@dataclass(frozen=True)
class HypertableStats:
    schema: str
    name: str
    chunks: int
    compressed_chunks: int

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {"schema": self.schema, "name": self.name, "chunks": self.chunks,
                "compressed_chunks": self.compressed_chunks}


@dataclass(frozen=True)
class MatviewRef:
    """A materialized view of a dump: pg_dump keeps its definition and re-computes its rows on restore
    (REFRESH), unless it was not populated; ``data_excluded``: pg_dump leaves it unpopulated."""

    schema: str
    name: str
    populated: bool
    data_excluded: bool = False

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> MatviewRef:
        return cls(entry["schema"], entry["name"], bool(entry.get("populated")),
                   data_excluded=bool(entry.get("data_excluded")))


@dataclass(frozen=True)
class MatviewStats:
    view: MatviewRef
    populated: bool | None  # None: the view does not exist
    rows: int | None  # None: not populated (or missing)

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"schema": self.view.schema, "name": self.view.name, "populated": bool(self.populated),
                                 "rows": self.rows}
        if self.view.data_excluded:
            entry["data_excluded"] = True
        return entry
