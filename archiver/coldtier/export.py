"""One chunk to verified Parquet objects (one per UTC day), and the checks that prove an archive holds.

Export streams rows from an exported snapshot (ADBC, COPY binary) through the Parquet writer
into a streaming upload, while the database fingerprint of the same snapshot is computed on a
second connection. A range within one UTC day is one query and one file; a range spanning
several days is read day by day (one query each, the same snapshot) into one file per day that
has rows. An upload commits only when every value was representable; then the objects are read
back *from the store*, each must hold only rows of its day, and together their fingerprint must
equal the database's. Only then may the caller write the manifest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

import pyarrow as pa

from .. import __version__
from ..common.prefetch import Prefetch
from ..common.sysinfo import release_free_memory
from ..errors import ArchiverError, TaskFailed, VerificationFailed
from ..pg.arrow import ArrowConnections, arrow_batches, shared_read_snapshot
from ..pg.connect import Session
from ..storage.base import PutResult, Store
from . import layout, parquet
from .chunks import Chunk, TableInfo
from .fingerprint import Fingerprint, database_query, from_database_row, time_display, unrepresentable
from .fingerprint_arrow import ArrowFingerprint
from .identity import show_value
from .typemap import ColumnPlan, arrow_schema, select_sql

T = TypeVar("T")
ADBC_BATCH_BYTES = 2 * 1024 * 1024


class Unrepresentable(ArchiverError):
    """The chunk holds values its planned Parquet types cannot store; it is held back, not lost."""

    def __init__(self, chunk: str, problems: list[str]) -> None:
        super().__init__(f"{chunk}: " + "; ".join(problems),
                         hint="list the column in archive.tables[].text_columns to archive it as text")
        self.problems = problems


@dataclass
class Piece:
    """One file of a range's archive: its rows of one UTC day."""

    key: str
    day: date
    put: PutResult
    summary: parquet.FileSummary
    time_min: str | None = None  # as read back, for people and query planners
    time_max: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "day": self.day.isoformat(), "rows": self.summary.rows, "size": self.put.size,
                "sha256": self.put.sha256, "etag": self.put.etag, "min_time": self.time_min,
                "max_time": self.time_max, "row_group_rows": self.summary.row_group_rows}


@dataclass
class ExportResult:
    chunk: Chunk
    pieces: list[Piece]
    fingerprint: Fingerprint
    exported_at: datetime
    verified_at: datetime
    seconds: float
    # a merged version: the fingerprint of the rows that were in the database, and how many of its
    # rows were not (kept from earlier versions, their range dropped or only partly restored)
    database_fingerprint: Fingerprint | None = None
    archived_only_rows: int = 0

    @property
    def size(self) -> int:
        return sum(piece.put.size for piece in self.pieces)

    @property
    def keys(self) -> list[str]:
        return [piece.key for piece in self.pieces]

    def describe(self) -> str:
        first = self.pieces[0].key
        return first if len(self.pieces) == 1 else f"{len(self.pieces)} files ({first.rsplit('/', 2)[-2]} ...)"

    def parquet_json(self) -> dict[str, Any]:
        summaries = [piece.summary for piece in self.pieces]
        return {"files": len(summaries), "rows": sum(s.rows for s in summaries),
                "row_groups": sum(s.row_groups for s in summaries),
                "row_group_rows": [rows for s in summaries for rows in s.row_group_rows],
                "uncompressed_bytes": sum(s.uncompressed_bytes for s in summaries),
                "compressed_bytes": sum(s.compressed_bytes for s in summaries),
                "created_by": summaries[0].created_by, "compression": "zstd", "page_checksums": True}


def database_fingerprint(current: Session, chunk: Chunk, plans: list[ColumnPlan],
                         time_column: str) -> Fingerprint:
    query = database_query(plans, chunk.relation, time_column)
    return from_database_row(query, current.query(query.sql)[0])


def object_fingerprint(store: Store, key: str, plans: list[ColumnPlan], time_column: str) -> ArrowFingerprint:
    """The fingerprint of one object as the store returns it (ranged reads, page checksums verified)."""
    accumulator = ArrowFingerprint(plans, time_column)
    try:
        with store.open_seekable(key) as source:
            for rows, columns in parquet.read_columns(source, [plan.name for plan in plans]):
                accumulator.add_rows(rows)
                for name, values in columns:
                    accumulator.add_column(name, values)
    except (pa.ArrowException, OSError) as exc:
        raise VerificationFailed(f"{store.describe(key)} cannot be read back as Parquet: {exc}") from None
    return accumulator


def archive_fingerprint(store: Store, key: str, plans: list[ColumnPlan], time_column: str) -> Fingerprint:
    return object_fingerprint(store, key, plans, time_column).result()


# --------------------------------------------------------------------------------------------
# Streaming export


def export_metadata(database: str, info: TableInfo, chunk: Chunk, plans: list[ColumnPlan],
                    version: int, day: date) -> dict[str, str]:
    """What the file says about itself: checked against its manifest before any drop or load."""
    return parquet.file_metadata({
        "database": database, "source_table": info.display, "chunk": chunk.display, "time_column": info.time_column,
        "range_start": show_value(chunk.start), "range_end": show_value(chunk.end),
        "identity": info.identity(chunk).to_json(), "version": str(version), "day": day.isoformat(),
        "partition_key": info.config.partition_key, "profile": info.config.profile,
        "pg_types": {plan.name: plan.pg_type for plan in plans}, "archiver_version": __version__,
    })


@dataclass(frozen=True)
class Target:
    """Where a version's files go: the range's identity and the version's number."""

    database: str
    info: TableInfo
    chunk: Chunk
    version: int

    def key(self, day: date) -> str:
        return layout.data_key(self.database, self.info, self.info.identity(self.chunk), self.version, day)

    def schema(self, plans: list[ColumnPlan], day: date) -> pa.Schema:
        return arrow_schema(plans, export_metadata(self.database, self.info, self.chunk, plans, self.version, day))


def export_chunk(dsn: str, store: Store, *, target: Target, settings: parquet.WriterSettings,
                 size_hint: int | None = None, on_rows: Callable[[int], None] | None = None,
                 now: Callable[[], datetime], connections: ArrowConnections | None = None) -> ExportResult:
    """Export one chunk, one file per UTC day, and verify the set; raises Unrepresentable,
    VerificationFailed or TaskFailed.

    On any failure nothing is left by this run (uploads are aborted, objects already written or
    that failed verification deleted); a previous version is never touched.
    """
    started = time.monotonic()
    info, chunk = target.info, target.chunk
    plans = info.plans()
    with shared_read_snapshot(dsn) as (snapshot_id, snapshot_session), ThreadPoolExecutor(1) as pool:
        windows = layout.windows_for(info, chunk.start, chunk.end,
                                     lambda: tuple(snapshot_session.query(layout.bounds_sql(info, chunk.relation))[0]))
        counted: Future[Fingerprint] = pool.submit(database_fingerprint, snapshot_session, chunk, plans,
                                                      info.time_column)
        exported_at = now()
        pieces: list[Piece] = []
        try:
            for index, window in enumerate(windows):
                sql = select_sql(plans, chunk.relation)
                if len(windows) > 1:
                    sql += f" WHERE {layout.condition_sql(info, window)}"
                keep_empty = index == len(windows) - 1 and not pieces
                piece = _stream(dsn, store, target.key(window.day), window.day, sql, snapshot_id,
                                target.schema(plans, window.day), settings, (size_hint or 0) // len(windows) or None,
                                counted, chunk, plans, on_rows, keep_empty=keep_empty, connections=connections)
                if piece is not None:
                    pieces.append(piece)
            expected = counted.result()
            _check_rows(pieces, expected, chunk.display)
        except BaseException:
            remove_pieces(store, pieces)
            raise
    release_free_memory()
    read_back(store, pieces, plans, info, expected, chunk.display)
    return ExportResult(chunk, pieces, expected, exported_at, now(), time.monotonic() - started)


def _check_rows(pieces: list[Piece], expected: Fingerprint, what: str) -> None:
    written = sum(piece.summary.rows for piece in pieces)
    if written != expected.rows:
        raise VerificationFailed(f"{what}: {written} rows were streamed but the snapshot holds {expected.rows}")


def remove_pieces(store: Store, pieces: list[Piece]) -> None:
    """Objects of a version that will not get its manifest (best effort: the next run removes orphans)."""
    for piece in pieces:
        try:
            store.delete(piece.key)
        except ArchiverError:
            pass


def read_back(store: Store, pieces: list[Piece], plans: list[ColumnPlan], info: TableInfo, expected: Fingerprint,
              what: str) -> None:
    """The objects as the store returns them must together have ``expected``'s fingerprint, and each
    hold only rows of its day; otherwise they are removed (a wrong object must not stay where
    readers look) and VerificationFailed raised."""
    time_kind = next(plan.kind for plan in plans if plan.name == info.time_column)
    try:
        total = ArrowFingerprint(plans, info.time_column)
        for piece in pieces:
            found = object_fingerprint(store, piece.key, plans, info.time_column)
            _check_piece(piece, found.result(), time_kind, info, store)
            total.merge(found)
        differences = expected.differences(total.result())
        if differences:
            files = "the archive" if len(pieces) == 1 else f"the {len(pieces)} files of the archive"
            raise VerificationFailed(f"{what}: {files} read back from {store.describe(pieces[0].key)} "
                                     f"does not match the database: {'; '.join(differences[:5])}")
    except VerificationFailed as exc:
        remove_pieces(store, pieces)
        raise VerificationFailed(f"{exc.message}; the object(s) were removed") from None


def _check_piece(piece: Piece, found: Fingerprint, time_kind: str, info: TableInfo, store: Store) -> None:
    if found.rows != piece.summary.rows:
        raise VerificationFailed(f"{store.describe(piece.key)} holds {found.rows} rows, {piece.summary.rows} were "
                                 "written to it")
    if found.rows:
        low, high = layout.fingerprint_bounds(piece.day, time_kind, info.config.time_unit)
        if not (low <= Decimal(str(found.time_min)) and Decimal(str(found.time_max)) < high):
            raise VerificationFailed(f"{store.describe(piece.key)} holds times from {found.time_min} to "
                                     f"{found.time_max}, not only of its day {piece.day}")
    piece.time_min, piece.time_max = time_display(found.time_min, time_kind), time_display(found.time_max, time_kind)


def _stream(dsn: str, store: Store, key: str, day: date, sql: str, snapshot_id: str, schema: pa.Schema,
            settings: parquet.WriterSettings, size_hint: int | None, counted: Future[Fingerprint], chunk: Chunk,
            plans: list[ColumnPlan], on_rows: Callable[[int], None] | None, *, keep_empty: bool,
            connections: ArrowConnections | None = None) -> Piece | None:
    """One day's rows into one object; None (nothing written) for a day without rows."""
    writer = store.writer(key, size_hint=size_hint, content_type="application/vnd.apache.parquet")
    batches = Prefetch(arrow_batches(dsn, sql, snapshot_id=snapshot_id, batch_bytes=ADBC_BATCH_BYTES,
                                     connections=connections))
    try:
        summary = parquet.write_batches(batches, writer, schema, settings,
                                        on_batch=(lambda batch: on_rows(batch.num_rows)) if on_rows else None)
        problems = unrepresentable(counted.result(), plans)
        if problems:
            raise Unrepresentable(chunk.display, problems)
        if not summary.rows and not keep_empty:
            writer.abort()
            return None
        return Piece(key, day, writer.commit(), summary)
    except parquet.ConversionError as exc:
        writer.abort()
        problems = unrepresentable(counted.result(), plans)
        if problems:
            raise Unrepresentable(chunk.display, problems) from None
        raise TaskFailed(f"{chunk.display}: {exc}") from None
    except BaseException:
        writer.abort()
        raise
    finally:
        batches.close()
