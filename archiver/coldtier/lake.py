"""What the lake holds, as query engines need it: the current files of each archived table.

``archiver cold NAME files`` lists them and ``archiver cold NAME schema`` turns them into
definitions for DuckDB, Athena/Glue and Spark (``coldtier/engines.py``). Only the store is read:
the archive manifests say which objects are current (superseded versions, and objects a killed
run left, are never listed), and the newest file of each table gives its Parquet schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pyarrow as pa

from ..common.timeutil import parse_timestamp
from ..errors import UsageError
from ..storage.base import Store
from . import identity as ident
from . import layout, parquet
from .catalog import superseded_keys
from .manifest import ARCHIVE_CATALOG_PREFIX, list_archive_manifests, object_rows, objects_of

Bound = datetime | int | None


@dataclass(frozen=True)
class LakeFile:
    database: str
    table: str
    key: str
    url: str  # what a reader opens: a local path for file:// stores, s3://bucket/key otherwise
    day: str | None  # the file's UTC day (None: an archive of an earlier layout, one file per range)
    rows: int
    size: int
    version: int
    range_start: str | None
    range_end: str | None

    def to_json(self) -> dict[str, Any]:
        return {"database": self.database, "table": self.table, "key": self.key, "url": self.url, "day": self.day,
                "rows": self.rows, "size": self.size, "version": self.version,
                "range": {"start": self.range_start, "end": self.range_end}}


@dataclass
class LakeTable:
    database: str
    table: str
    location: str  # the table's directory in the lake (a reader's path)
    partition_key: str | None  # None while archives of an earlier layout remain
    profile: str
    files: list[LakeFile] = field(default_factory=list)
    earlier_layout: int = 0  # archives not moved to today's layout yet
    schema: pa.Schema | None = None  # of the newest file
    pg_types: dict[str, str] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(item.rows for item in self.files)

    @property
    def schema_name(self) -> str:
        return self.table.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.table.split(".", 1)[1]


def reader_url(store: Store, key: str) -> str:
    described = store.describe(key)
    return described.removeprefix("file://") if described.startswith("file://") else described


def lake_tables(store: Store, *, table: str | None = None, start: str | None = None, end: str | None = None,
                with_schema: bool = False) -> tuple[list[LakeTable], list[str]]:
    """Every archived table (or ``table``) with its current files, overlapping ``[start, end)`` when
    given, and the problems of unreadable manifests (their files cannot be listed)."""
    wanted = (table if "." in table else f"public.{table}") if table else None
    found = list_archive_manifests(store, ARCHIVE_CATALOG_PREFIX)
    superseded = superseded_keys(found.values())
    problems = [f"{store.describe(key)}: {loaded.error}" for key, loaded in sorted(found.items())
                if loaded.document is None]
    tables: dict[tuple[str, str], LakeTable] = {}
    newest: dict[tuple[str, str], tuple[int, str, dict[str, Any]]] = {}
    for key, loaded in sorted(found.items()):
        document = loaded.document
        if document is None or key in superseded or (wanted and document.get("table") != wanted):
            continue
        ident_key = (str(document.get("database")), str(document["table"]))
        entry = tables.setdefault(ident_key, _table(store, document))
        in_layout = (document.get("layout") or {}).get("version") == layout.LAYOUT_VERSION
        entry.earlier_layout += 0 if in_layout else 1
        if in_layout and entry.partition_key is None:
            entry.partition_key = str(document["layout"]["partition_key"])
        window = _window(document, start, end)
        for recorded in objects_of(document):
            if window is None or _overlaps(document, recorded, window):
                entry.files.append(_file(store, document, recorded))
        stamp = (int(document.get("version", 1)), str(document.get("exported_at", "")), key)
        if entry.files and (ident_key not in newest or stamp[1:] > newest[ident_key][1:]):
            newest[ident_key] = (*stamp[:2], document)
    result = sorted(tables.values(), key=lambda t: (t.table, t.database))
    for entry in result:
        if entry.earlier_layout:
            entry.partition_key = None
        entry.files.sort(key=lambda f: (f.day or "", f.range_start or "", f.key))
        if with_schema and (entry.database, entry.table) in newest:
            _read_schema(store, entry, newest[(entry.database, entry.table)][2])
    if wanted and not result:
        raise UsageError(f"no archives of {wanted} in {store.describe(ARCHIVE_CATALOG_PREFIX)} "
                         f"(archived tables: {', '.join(archived_tables(store)) or 'none'})")
    return result, problems


def archived_tables(store: Store) -> list[str]:
    found = list_archive_manifests(store, ARCHIVE_CATALOG_PREFIX)
    return sorted({str(loaded.document["table"]) for loaded in found.values() if loaded.document})


def _table(store: Store, document: dict[str, Any]) -> LakeTable:
    database, table = str(document.get("database")), str(document["table"])
    columns = (document.get("parquet") or {}).get("columns") or []
    return LakeTable(database, table, reader_url(store, layout.lake_prefix(database, table)), None,
                     str((document.get("parquet") or {}).get("profile", "exact")),
                     pg_types={str(column["name"]): str(column["pg_type"]) for column in columns})


def _file(store: Store, document: dict[str, Any], recorded: dict[str, Any]) -> LakeFile:
    span = document.get("range") or {}
    return LakeFile(str(document.get("database")), str(document["table"]), str(recorded["key"]),
                    reader_url(store, str(recorded["key"])), recorded.get("day"), object_rows(document, recorded),
                    int(recorded.get("size", 0)), int(document.get("version", 1)),
                    _shown(span.get("start")), _shown(span.get("end")))


def _shown(value: Any) -> str | None:
    return None if value is None else str(value)


def _read_schema(store: Store, entry: LakeTable, document: dict[str, Any]) -> None:
    key = str(objects_of(document)[-1]["key"])
    with store.open_seekable(key) as source:
        schema = parquet.open_file(source).schema_arrow
    entry.schema = schema.remove_metadata()
    entry.profile = str((document.get("parquet") or {}).get("profile", entry.profile))


def _window(document: dict[str, Any], start: str | None, end: str | None) -> tuple[Bound, Bound] | None:
    if start is None and end is None:
        return None
    integer = document.get("time_type") == "integer"
    return _bound(start, integer, "--from"), _bound(end, integer, "--to")


def _bound(text: str | None, integer: bool, flag: str) -> Bound:
    if text is None:
        return None
    try:
        return int(text) if integer else parse_timestamp(text)
    except ValueError:
        allowed = "an integer (the table's time column is one)" if integer else "a timestamp such as 2026-01-01"
        raise UsageError(f"{flag} {text!r} is not {allowed}") from None


def _overlaps(document: dict[str, Any], recorded: dict[str, Any], window: tuple[Bound, Bound]) -> bool:
    """Does the file hold rows that may lie in ``window``? Its range, and its UTC day when it has one."""
    span = document.get("range") or {}
    if not _meets((ident.parse_bound_json(span.get("start")), ident.parse_bound_json(span.get("end"))), window):
        return False
    day = recorded.get("day")
    if not day or isinstance(window[0], int) or isinstance(window[1], int):
        return True
    first = datetime.combine(date.fromisoformat(str(day)), time(), tzinfo=UTC)
    return _meets((first, first + timedelta(days=1)), window)


def _meets(span: tuple[Bound, Bound], window: tuple[Bound, Bound]) -> bool:
    starts_before = window[1] is None or span[0] is None or span[0] < window[1]  # type: ignore[operator]
    ends_after = window[0] is None or span[1] is None or span[1] > window[0]  # type: ignore[operator]
    return starts_before and ends_after
