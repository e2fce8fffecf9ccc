"""One chunk to one verified Parquet object, and the checks that prove an archive still holds.

Export streams rows from an exported snapshot (ADBC, COPY binary) through the Parquet writer
into a streaming upload, while the database fingerprint of the same snapshot is computed on a
second connection. The upload commits only when every value was representable and the row count
matches; then the object is read back *from the store* and its fingerprint compared with the
database's. Only then may the caller write the manifest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import pyarrow as pa

from .. import __version__
from ..common.prefetch import Prefetch
from ..common.sysinfo import release_free_memory
from ..errors import ArchiverError, TaskFailed, VerificationFailed
from ..pg.arrow import arrow_batches, shared_read_snapshot
from ..pg.connect import Session
from ..storage.base import PutResult, Store
from . import parquet
from .chunks import Chunk, TableInfo
from .fingerprint import Fingerprint, database_query, from_database_row, unrepresentable
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
class ExportResult:
    chunk: Chunk
    key: str
    put: PutResult
    summary: parquet.FileSummary
    fingerprint: Fingerprint
    exported_at: datetime
    verified_at: datetime
    seconds: float
    # a merged version: the fingerprint of the rows that were in the database, and how many of its
    # rows were not (kept from earlier versions, their range dropped or only partly restored)
    database_fingerprint: Fingerprint | None = None
    archived_only_rows: int = 0


def database_fingerprint(current: Session, chunk: Chunk, plans: list[ColumnPlan],
                         time_column: str) -> Fingerprint:
    query = database_query(plans, chunk.relation, time_column)
    return from_database_row(query, current.query(query.sql)[0])


def archive_fingerprint(store: Store, key: str, plans: list[ColumnPlan], time_column: str) -> Fingerprint:
    """The fingerprint of the object as the store returns it (ranged reads, page checksums verified)."""
    accumulator = ArrowFingerprint(plans, time_column)
    try:
        with store.open_seekable(key) as source:
            for rows, columns in parquet.read_columns(source, [plan.name for plan in plans]):
                accumulator.add_rows(rows)
                for name, values in columns:
                    accumulator.add_column(name, values)
    except (pa.ArrowException, OSError) as exc:
        raise VerificationFailed(f"{store.describe(key)} cannot be read back as Parquet: {exc}") from None
    return accumulator.result()


# --------------------------------------------------------------------------------------------
# Streaming export


def export_metadata(database: str, info: TableInfo, chunk: Chunk, plans: list[ColumnPlan],
                    version: int) -> dict[str, str]:
    """What the file says about itself: checked against its manifest before any drop or load."""
    return parquet.file_metadata({
        "database": database, "source_table": info.display, "chunk": chunk.display, "time_column": info.time_column,
        "range_start": show_value(chunk.start), "range_end": show_value(chunk.end),
        "identity": info.identity(chunk).to_json(), "version": str(version),
        "pg_types": {plan.name: plan.pg_type for plan in plans}, "archiver_version": __version__,
    })


def export_chunk(dsn: str, store: Store, *, database: str, info: TableInfo, chunk: Chunk, key: str, version: int,
                 settings: parquet.WriterSettings, size_hint: int | None = None,
                 on_rows: Callable[[int], None] | None = None, now: Callable[[], datetime]) -> ExportResult:
    """Export one chunk to ``key`` and verify it; raises Unrepresentable, VerificationFailed or TaskFailed.

    On any failure nothing is left at ``key`` by this run (the upload is aborted, or the object
    that failed verification deleted); a previous version there is replaced only by a complete
    object, never by a partial one.
    """
    started = time.monotonic()
    plans = info.plans()
    schema = arrow_schema(plans, export_metadata(database, info, chunk, plans, version))
    sql = select_sql(plans, chunk.relation)
    with shared_read_snapshot(dsn) as (snapshot_id, snapshot_session), ThreadPoolExecutor(1) as pool:
        counted: Future[Fingerprint] = pool.submit(database_fingerprint, snapshot_session, chunk, plans,
                                                      info.time_column)
        exported_at = now()
        put, summary = _stream(dsn, store, key, sql, snapshot_id, schema, settings, size_hint, counted, chunk, plans,
                               on_rows)
        expected = counted.result()
    release_free_memory()
    read_back(store, key, plans, info.time_column, expected, chunk.display)
    return ExportResult(chunk, key, put, summary, expected, exported_at, now(), time.monotonic() - started)


def read_back(store: Store, key: str, plans: list[ColumnPlan], time_column: str, expected: Fingerprint,
              what: str) -> None:
    """The object as the store returns it must have ``expected``'s fingerprint; otherwise it is
    removed (a wrong object must not stay where readers look) and VerificationFailed raised."""
    try:
        differences = expected.differences(archive_fingerprint(store, key, plans, time_column))
        if differences:
            raise VerificationFailed(f"{what}: the archive read back from {store.describe(key)} does not "
                                     f"match the database: {'; '.join(differences[:5])}")
    except VerificationFailed as exc:
        store.delete(key)
        raise VerificationFailed(f"{exc.message}; the object was removed") from None


def _stream(dsn: str, store: Store, key: str, sql: str, snapshot_id: str, schema: pa.Schema,
            settings: parquet.WriterSettings, size_hint: int | None, counted: Future[Fingerprint], chunk: Chunk,
            plans: list[ColumnPlan], on_rows: Callable[[int], None] | None) -> tuple[PutResult, parquet.FileSummary]:
    writer = store.writer(key, size_hint=size_hint, content_type="application/vnd.apache.parquet")
    batches = Prefetch(arrow_batches(dsn, sql, snapshot_id=snapshot_id, batch_bytes=ADBC_BATCH_BYTES))
    try:
        summary = parquet.write_batches(batches, writer, schema, settings,
                                        on_batch=(lambda batch: on_rows(batch.num_rows)) if on_rows else None)
        expected = counted.result()
        problems = unrepresentable(expected, plans)
        if problems:
            raise Unrepresentable(chunk.display, problems)
        if summary.rows != expected.rows:
            raise VerificationFailed(f"{chunk.display}: {summary.rows} rows were streamed but the snapshot holds "
                                     f"{expected.rows}")
        return writer.commit(), summary
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
