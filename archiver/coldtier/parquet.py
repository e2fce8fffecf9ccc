"""Arrow record batches -> Parquet, streamed into a store object, and read back.

Files are written with zstd, page checksums, statistics and a page index; row groups close at
``row_group_rows`` rows or ``row_group_bytes`` of buffered Arrow data, whichever comes first,
so memory stays bounded by one row group whatever the chunk's size. The schema comes from the
catalog (:mod:`archiver.coldtier.typemap`), so a batch of NULLs never changes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..common.sysinfo import release_free_memory
from ..errors import TaskFailed

METADATA_PREFIX = "archiver."
READ_BATCH_ROWS = 64 * 1024
READ_BUFFER_BYTES = 4 * 1024 * 1024  # stream column chunks instead of loading each whole


class ConversionError(TaskFailed):
    """A value the planned Arrow type cannot hold (e.g. NaN in a numeric(p,s) column)."""

    def __init__(self, column: str, source: pa.DataType, target: pa.DataType, detail: str) -> None:
        super().__init__(f"column {column!r}: cannot convert {source} to {target}: {detail}")
        self.column = column


@dataclass(frozen=True)
class WriterSettings:
    zstd_level: int = 3
    row_group_rows: int = 1_000_000
    row_group_bytes: int = 128 * 1024 * 1024


@dataclass(frozen=True)
class FileSummary:
    rows: int
    row_groups: int
    row_group_rows: list[int]
    uncompressed_bytes: int
    compressed_bytes: int
    created_by: str

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "row_groups": self.row_groups, "row_group_rows": self.row_group_rows,
                "uncompressed_bytes": self.uncompressed_bytes, "compressed_bytes": self.compressed_bytes,
                "created_by": self.created_by, "compression": "zstd", "page_checksums": True}


# --------------------------------------------------------------------------------------------
# Conforming driver batches to the planned schema


def conform(values: pa.Array, target: pa.DataType, column: str) -> pa.Array:
    """``values`` as ``target``: unwrap driver extension types (numeric arrives as an opaque string),
    wrap canonical ones (uuid, json), recurse into lists, cast the rest. Exact or an error."""
    if values.type == target:
        return values
    try:
        if isinstance(values.type, pa.BaseExtensionType):
            values = values.storage
            if values.type == target:
                return values
        if isinstance(target, pa.BaseExtensionType):
            return pa.ExtensionArray.from_storage(target, conform(values, target.storage_type, column))
        if values.type == pa.month_day_nano_interval() and pa.types.is_struct(target):
            return interval_struct(values, target)
        if pa.types.is_list(values.type) and pa.types.is_list(target):
            inner = conform(values.values, target.value_type, column)
            mask = values.is_null() if values.null_count else None
            return pa.ListArray.from_arrays(values.offsets, inner, type=target, mask=mask)
        return values.cast(target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise ConversionError(column, values.type, target, str(exc).splitlines()[0]) from None


def interval_struct(values: pa.Array, target: pa.DataType) -> pa.Array:
    """month_day_nano intervals as a struct of their three fields (what Parquet can store)."""
    data = values.buffers()[1]
    count = len(values)
    words32 = pa.Array.from_buffers(pa.int32(), count * 4, [None, data], offset=values.offset * 4)
    words64 = pa.Array.from_buffers(pa.int64(), count * 2, [None, data], offset=values.offset * 2)
    months = pc.list_element(pa.FixedSizeListArray.from_arrays(words32, 4), 0)
    days = pc.list_element(pa.FixedSizeListArray.from_arrays(words32, 4), 1)
    nanos = pc.list_element(pa.FixedSizeListArray.from_arrays(words64, 2), 1)
    mask = values.is_null() if values.null_count else None
    return pa.StructArray.from_arrays([months, days, nanos], fields=list(target), mask=mask)


def conform_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if batch.schema.names != schema.names:
        raise TaskFailed(f"the database returned columns {batch.schema.names}, expected {schema.names}")
    columns = [conform(batch.column(index), field.type, field.name) for index, field in enumerate(schema)]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


# --------------------------------------------------------------------------------------------
# Writing


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Dictionary-encode what repeats (labels, ids, JSON); not floats, decimals or timestamps,
    whose dictionaries only cost memory before Parquet falls back to plain encoding."""
    chosen = []
    for field in schema:
        kind = field.type.storage_type if isinstance(field.type, pa.BaseExtensionType) else field.type
        if (pa.types.is_string(kind) or pa.types.is_binary(kind) or pa.types.is_fixed_size_binary(kind)
                or pa.types.is_dictionary(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind)):
            chosen.append(field.name)
    return chosen


class RowGroupWriter:
    """A ParquetWriter that buffers batches into full row groups (pyarrow writes one row group per call)."""

    def __init__(self, sink: Any, schema: pa.Schema, settings: WriterSettings) -> None:
        self.schema = schema
        self.settings = settings
        self._writer = pq.ParquetWriter(
            sink, schema, compression="zstd", compression_level=settings.zstd_level, write_statistics=True,
            write_page_checksum=True, write_page_index=True, use_dictionary=_dictionary_columns(schema),
            store_schema=True)
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._pending_bytes = 0
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        while batch.num_rows:
            room = self.settings.row_group_rows - self._pending_rows
            piece = batch if batch.num_rows <= room else batch.slice(0, room)
            self._pending.append(piece)
            self._pending_rows += piece.num_rows
            self._pending_bytes += piece.nbytes
            self.rows += piece.num_rows
            batch = batch.slice(piece.num_rows)
            full = (self._pending_rows >= self.settings.row_group_rows
                    or self._pending_bytes >= self.settings.row_group_bytes)
            if full:
                self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        self._pending, self._pending_rows, self._pending_bytes = [], 0, 0
        self._writer.write_table(table, row_group_size=table.num_rows)
        del table
        release_free_memory()

    def close(self) -> FileSummary:
        self._flush()
        self._writer.close()
        return summarize(self._writer.writer.metadata)

    def abandon(self) -> None:
        self._pending = []
        try:
            self._writer.close()
        except Exception:  # the sink is aborted by its owner; nothing to save here
            pass


def summarize(metadata: pq.FileMetaData) -> FileSummary:
    groups = [metadata.row_group(index) for index in range(metadata.num_row_groups)]
    compressed = sum(group.column(c).total_compressed_size for group in groups for c in range(group.num_columns))
    return FileSummary(rows=metadata.num_rows, row_groups=metadata.num_row_groups,
                       row_group_rows=[group.num_rows for group in groups],
                       uncompressed_bytes=sum(group.total_byte_size for group in groups),
                       compressed_bytes=compressed, created_by=str(metadata.created_by))


def file_metadata(values: dict[str, Any]) -> dict[str, str]:
    """Key-value metadata for the file (``archiver.*`` keys; JSON for structured values)."""
    return {METADATA_PREFIX + key: value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
            for key, value in values.items()}


def write_batches(batches: Iterable[pa.RecordBatch], sink: Any, schema: pa.Schema, settings: WriterSettings, *,
                  on_batch: Callable[[pa.RecordBatch], None] | None = None) -> FileSummary:
    """Conform and write every batch to ``sink``; on any error nothing is left half-written by us
    (the caller aborts the sink)."""
    writer = RowGroupWriter(sink, schema, settings)
    try:
        for raw in batches:
            batch = conform_batch(raw, schema)
            if on_batch is not None:
                on_batch(batch)
            writer.write(batch)
        return writer.close()
    except BaseException:
        writer.abandon()
        raise


# --------------------------------------------------------------------------------------------
# Reading


def open_file(source: BinaryIO) -> pq.ParquetFile:
    """A Parquet file whose page checksums are verified as its pages are read."""
    return pq.ParquetFile(source, page_checksum_verification=True, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)


def read_columns(source: BinaryIO, names: list[str], *,
                 batch_rows: int = READ_BATCH_ROWS) -> Iterator[tuple[int, Iterator[tuple[str, pa.Array]]]]:
    """Row group by row group, column by column, a batch at a time: memory holds one slice of one
    column, whatever the size of the file or its row groups."""
    parquet = open_file(source)

    def pieces(index: int) -> Iterator[tuple[str, pa.Array]]:
        for name in names:
            for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[index], columns=[name],
                                              use_threads=False):
                yield name, batch.column(0)
        release_free_memory()

    for index in range(parquet.num_row_groups):
        yield parquet.metadata.row_group(index).num_rows, pieces(index)


def archiver_metadata(parquet: pq.ParquetFile) -> dict[str, str]:
    raw = parquet.metadata.metadata or {}
    return {key.decode()[len(METADATA_PREFIX):]: value.decode() for key, value in raw.items()
            if key.decode().startswith(METADATA_PREFIX)}
