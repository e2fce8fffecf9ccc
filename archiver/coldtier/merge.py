"""Row-level truth for when fingerprints differ, and new versions that never lose a row.

A fingerprint says *that* a range's rows in the database and in its archive differ; only a
row-by-row comparison says *how*: rows the archive lacks (late data), rows the database lacks
(dropped by retention, deleted, or never restored), or both. The archived objects are
downloaded (checked), staged next to the table in one ADBC session, and compared as multisets.

A merged version holds every row of the database's range plus every archived row it lacks (per
distinct row, as many copies as the source holding most of them), so that late rows into a
dropped or partly restored range extend the archive instead of replacing it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from ..common.sysinfo import release_free_memory
from ..errors import VerificationFailed
from ..pg import staging as pg_staging
from ..pg.staging import RowComparison
from ..storage.base import Store
from . import layout, parquet
from .chunks import Chunk, TableInfo
from .export import ADBC_BATCH_BYTES, ExportResult, Piece, Target, Unrepresentable, read_back, remove_pieces
from .fingerprint import database_query, from_database_row, unrepresentable
from .identity import Identity
from .objects import downloaded, staging_reader
from .typemap import ColumnPlan, select_sql


def table_columns(info: TableInfo) -> list[tuple[str, str]]:
    return [(column.name, column.pg_type) for column in info.columns]


def columns_only_archived(info: TableInfo, documents: list[dict[str, Any]]) -> list[str]:
    """Archived columns the table no longer has: a new version would lose their values."""
    present = {column.name for column in info.columns}
    return sorted({column["name"] for document in documents
                   for column in (document.get("parquet") or {}).get("columns", []) if column["name"] not in present})


def compare(dsn: str, store: Store, info: TableInfo, chunk: Chunk, document: dict[str, Any],
            work_dir: str | None = None) -> RowComparison:
    """How the chunk's rows and its archive's rows differ (the object checked while it downloads)."""
    with downloaded(store, [document], work_dir) as copies, \
            pg_staging.staging(dsn, table_columns(info), what="archive (compare)") as staging:
        reader, staged = staging_reader(copies[0].paths)
        staging.stage(reader, staged)
        return staging.compare(chunk.relation)


@dataclass(frozen=True)
class MergeSource:
    """What a merged version is made of: the chunk in the database (None when its range was
    dropped) and the archived versions whose rows it must keep."""

    identity: Identity
    chunk: Chunk | None
    documents: list[dict[str, Any]]

    def as_chunk(self, info: TableInfo) -> Chunk:
        if self.chunk is not None:
            return self.chunk
        named = self.documents[0]["chunk"]
        return Chunk(str(named["schema"]), str(named["name"]), self.identity.start, self.identity.end,
                     space=tuple(self.identity.space or ()))


def export_merged(dsn: str, store: Store, *, info: TableInfo, source: MergeSource, target: Target,
                  settings: parquet.WriterSettings, now: Callable[[], datetime],
                  work_dir: str | None = None) -> ExportResult:
    """Write the merged rows as ``target``'s version (one file per UTC day), read them back, verify them."""
    started = time.monotonic()
    chunk = target.chunk
    plans = info.plans()
    pieces: list[Piece] = []
    with downloaded(store, source.documents, work_dir) as copies, \
            pg_staging.staging(dsn, table_columns(info), what="archive (merge)") as staging:
        for copy in copies:
            reader, staged = staging_reader(copy.paths)
            staging.stage(reader, staged)
        merged = staging.merge(source.chunk.relation if source.chunk else None)
        query = database_query(plans, merged, info.time_column)
        expected = from_database_row(query, staging.row(query.sql))
        in_database = None
        if source.chunk is not None:
            query = database_query(plans, source.chunk.relation, info.time_column)
            in_database = from_database_row(query, staging.row(query.sql))
        problems = unrepresentable(expected, plans)
        if problems:
            raise Unrepresentable(chunk.display, problems)
        exported_at = now()
        windows = layout.windows_for(info, chunk.start, chunk.end,
                                     lambda: staging.row(layout.bounds_sql(info, merged)))
        try:
            for index, window in enumerate(windows):
                sql = select_sql(plans, merged) + (f" WHERE {layout.condition_sql(info, window)}"
                                                   if len(windows) > 1 else "")
                piece = _write_day(store, staging, sql, target, plans, window.day, settings,
                                   keep_empty=index == len(windows) - 1 and not pieces)
                if piece is not None:
                    pieces.append(piece)
            written = sum(piece.summary.rows for piece in pieces)
            if written != expected.rows:
                raise VerificationFailed(f"{chunk.display}: {written} merged rows were written but "
                                         f"{expected.rows} were merged")
        except BaseException:
            remove_pieces(store, pieces)
            raise
    release_free_memory()
    read_back(store, pieces, plans, info, expected, chunk.display)
    return ExportResult(chunk, pieces, expected, exported_at, now(), time.monotonic() - started,
                        database_fingerprint=in_database,
                        archived_only_rows=expected.rows - (in_database.rows if in_database else 0))


def _write_day(store: Store, staging: pg_staging.Staging, sql: str, target: Target, plans: list[ColumnPlan],
               day: date, settings: parquet.WriterSettings, *, keep_empty: bool) -> Piece | None:
    key = target.key(day)
    writer = store.writer(key, content_type="application/vnd.apache.parquet")
    try:
        summary = parquet.write_batches(staging.batches(sql, batch_bytes=ADBC_BATCH_BYTES), writer,
                                        target.schema(plans, day), settings)
        if not summary.rows and not keep_empty:
            writer.abort()
            return None
        return Piece(key, day, writer.commit(), summary)
    except BaseException:
        writer.abort()
        raise
