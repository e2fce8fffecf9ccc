"""Proving that a stored archive object is the one its manifest describes, and reading it back.

An object is checked against its manifest (size, SHA-256 of every byte, ETag where both have
one) *and* against its own embedded metadata (Parquet footer: row count, table, the range's
identity and the version written into the file), so that a manifest edited to point at another
range's valid Parquet file is caught as surely as a flipped byte. Nothing is dropped or loaded
from an object that has not passed these checks right before.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import ObjectNotFound, StoreError
from ..pg.staging import StagedColumn
from ..storage.base import Store, sha256_of
from ..storage.integrity import CheckedObject, ObjectMismatch
from . import identity as ident
from . import parquet, typemap
from .manifest import object_rows, objects_of

READ_BATCH_ROWS = 64 * 1024
INTERVAL_PARTS = ("months", "days", "nanoseconds")


def embedded_problem(metadata: dict[str, str], rows: int, document: dict[str, Any],
                     entry: dict[str, Any] | None = None) -> str | None:
    """What the file (the manifest's object ``entry``; its only one by default) says about itself
    that contradicts its manifest, or None."""
    entry = entry if entry is not None else objects_of(document)[0]
    recorded_rows = object_rows(document, entry)
    if rows != recorded_rows:
        return f"holds {rows} rows, the manifest says {recorded_rows}"
    table = metadata.get("source_table")
    if table is not None and table != document["table"]:
        return f"holds rows of {table}, the manifest is of {document['table']}"
    if "identity" in metadata:
        embedded = json.loads(metadata["identity"]).get("stem")
        recorded = (document.get("identity") or {}).get("stem")
        if recorded is not None and embedded != recorded:
            return f"holds the range {embedded}, the manifest describes {recorded}"
        if str(metadata.get("version")) != str(document.get("version")):
            return f"is version {metadata.get('version')} of its range, the manifest says {document.get('version')}"
        if "day" in entry and metadata.get("day") != entry["day"]:
            return f"holds the rows of day {metadata.get('day')}, the manifest lists it for {entry['day']}"
        return None
    expected = f"{document['chunk']['schema']}.{document['chunk']['name']}"
    span = document.get("range") or {}
    bounds = (ident.show_value(ident.parse_bound_json(span.get("start"))),
              ident.show_value(ident.parse_bound_json(span.get("end"))))
    if metadata.get("chunk") != expected:
        return f"holds rows of {metadata.get('chunk')}, the manifest says {expected}"
    if "range_start" in metadata and (metadata.get("range_start"), metadata.get("range_end")) != bounds:
        return (f"holds the range [{metadata.get('range_start')}, {metadata.get('range_end')}), the manifest says "
                f"[{bounds[0]}, {bounds[1]})")
    return None


def check_object(store: Store, document: dict[str, Any], *, thorough: bool = False) -> str | None:
    """Does the store still hold exactly the objects the manifest describes? The first problem, or None.

    Always: each exists with the recorded size, and its footer agrees with the manifest. Then the
    ETag when both sides have one; ``thorough`` (before a drop) reads every byte for the SHA-256
    whatever the ETag says.
    """
    for recorded in objects_of(document):
        problem = _check_one(store, document, recorded, thorough=thorough)
        if problem:
            return problem
    return None


def _check_one(store: Store, document: dict[str, Any], recorded: dict[str, Any], *, thorough: bool) -> str | None:
    key = recorded["key"]
    info = store.head(key)
    if info is None:
        return f"the object {store.describe(key)} is missing"
    if info.size != recorded.get("size"):
        return f"the object {store.describe(key)} has {info.size} bytes, the manifest says {recorded.get('size')}"
    if info.etag and recorded.get("etag") and info.etag != recorded["etag"]:
        return f"the object {store.describe(key)} was replaced (ETag {info.etag}, manifest {recorded['etag']})"
    if thorough or not (info.etag and recorded.get("etag")):
        try:
            with store.open(key) as stream:
                digest, _ = sha256_of(stream)
        except ObjectNotFound:
            return f"the object {store.describe(key)} is missing"
        if digest != recorded.get("sha256"):
            return (f"the object {store.describe(key)} was altered, or its manifest was (SHA-256 {digest[:12]}…, "
                    f"manifest {str(recorded.get('sha256'))[:12]}…)")
    try:
        with store.open_seekable(key) as source:
            parquet_file = parquet.open_file(source)
            problem = embedded_problem(parquet.archiver_metadata(parquet_file), parquet_file.metadata.num_rows,
                                       document, recorded)
    except (pa.ArrowException, OSError, StoreError, ValueError) as exc:
        return f"the object {store.describe(key)} is not readable Parquet ({exc})"
    return f"the object {store.describe(key)} {problem}" if problem else None


@dataclass(frozen=True)
class LocalCopy:
    """The objects of one manifest (one per UTC day), downloaded and checked."""

    document: dict[str, Any]
    paths: list[Path]


@contextlib.contextmanager
def downloaded(store: Store, documents: list[dict[str, Any]], work_dir: str | None) -> Iterator[list[LocalCopy]]:
    """Every object of each manifest in a private temp directory, its size and SHA-256 proven while
    it downloads and its footer checked against the manifest; ObjectMismatch (exit 4) otherwise."""
    directory = Path(tempfile.mkdtemp(prefix="archiver-archive-", dir=work_dir))
    try:
        copies = []
        for index, document in enumerate(documents):
            paths = []
            for part, recorded in enumerate(objects_of(document)):
                path = directory / f"{index}.{part}.parquet"
                _download(store, document, recorded, path)
                paths.append(path)
            copies.append(LocalCopy(document, paths))
        yield copies
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _download(store: Store, document: dict[str, Any], recorded: dict[str, Any], path: Path) -> None:
    entry = {**recorded, "codec": "none"}
    what = f"the archive of {document['table']} {document.get('identity', {}).get('stem') or document['chunk']['name']}"
    with CheckedObject(store, entry, what) as obj, open(path, "wb") as out:
        for piece in obj.chunks():
            out.write(piece)
        obj.finish()
    parquet_file = pq.ParquetFile(path)
    problem = embedded_problem(parquet.archiver_metadata(parquet_file), parquet_file.metadata.num_rows, document,
                               recorded)
    if problem:
        raise ObjectMismatch(f"{what} {store.describe(entry['key'])} {problem}", key=str(entry["key"]),
                             reason="contents")


def staging_reader(paths: list[Path]) -> tuple[pa.RecordBatchReader, list[StagedColumn]]:
    """The files' rows as one stream of batches, ready for ADBC ingestion: interval structs split
    into their three parts (ADBC has no mapping for an Arrow struct)."""
    schema = pq.ParquetFile(paths[0]).schema_arrow
    intervals = {f.name for f in schema if f.type == typemap.INTERVAL_TYPE}
    fields: list[pa.Field] = []
    staged: list[StagedColumn] = []
    for f in schema:
        if f.name in intervals:
            parts = tuple(f"{f.name}#{part}" for part in INTERVAL_PARTS)
            fields += [pa.field(part, f.type.field(i).type) for i, part in enumerate(parts)]
            staged.append(StagedColumn(f.name, parts, "interval"))
        else:
            fields.append(f.remove_metadata())
            encoded = (f.metadata or {}).get(b"encoding") == typemap.TIME_MICROS.encode()
            staged.append(StagedColumn(f.name, (f.name,), "time_micros" if encoded else "value"))
    out_schema = pa.schema(fields)

    def batches() -> Iterator[pa.RecordBatch]:
        for path in paths:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_BATCH_ROWS):
                arrays: list[pa.Array] = []
                for f, column in zip(batch.schema, batch.columns, strict=False):
                    if f.name in intervals:
                        valid = column.is_valid()
                        arrays += [pc.if_else(valid, column.field(part), pa.scalar(None, column.type.field(part).type))
                                   for part in INTERVAL_PARTS]
                    else:
                        arrays.append(column)
                yield pa.RecordBatch.from_arrays(arrays, schema=out_schema)
    return pa.RecordBatchReader.from_batches(out_schema, batches()), staged
