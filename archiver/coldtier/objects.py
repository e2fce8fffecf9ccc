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

READ_BATCH_ROWS = 64 * 1024
INTERVAL_PARTS = ("months", "days", "nanoseconds")


def embedded_problem(metadata: dict[str, str], rows: int, document: dict[str, Any]) -> str | None:
    """What the file says about itself that contradicts its manifest, or None."""
    if rows != int(document["rows"]):
        return f"holds {rows} rows, the manifest says {document['rows']}"
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
    """Does the store still hold exactly the object the manifest describes? The problem, or None.

    Always: it exists with the recorded size, and its footer agrees with the manifest. Then the
    ETag when both sides have one; ``thorough`` (before a drop) reads every byte for the SHA-256
    whatever the ETag says.
    """
    recorded = document["object"]
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
                                       document)
    except (pa.ArrowException, OSError, StoreError, ValueError) as exc:
        return f"the object {store.describe(key)} is not readable Parquet ({exc})"
    return f"the object {store.describe(key)} {problem}" if problem else None


@dataclass(frozen=True)
class LocalCopy:
    document: dict[str, Any]
    path: Path


@contextlib.contextmanager
def downloaded(store: Store, documents: list[dict[str, Any]], work_dir: str | None) -> Iterator[list[LocalCopy]]:
    """Each object in a private temp directory, its size and SHA-256 proven while it downloads and
    its footer checked against the manifest; ObjectMismatch (exit 4) otherwise."""
    directory = Path(tempfile.mkdtemp(prefix="archiver-archive-", dir=work_dir))
    try:
        copies = []
        for index, document in enumerate(documents):
            path = directory / f"{index}.parquet"
            entry = {**document["object"], "codec": "none"}
            what = f"the archive of {document['table']} {document.get('identity', {}).get('stem') or document['chunk']['name']}"
            with CheckedObject(store, entry, what) as obj, open(path, "wb") as out:
                for piece in obj.chunks():
                    out.write(piece)
                obj.finish()
            parquet_file = pq.ParquetFile(path)
            problem = embedded_problem(parquet.archiver_metadata(parquet_file), parquet_file.metadata.num_rows, document)
            if problem:
                raise ObjectMismatch(f"{what} {store.describe(entry['key'])} {problem}", key=str(entry["key"]),
                                     reason="contents")
            copies.append(LocalCopy(document, path))
        yield copies
    finally:
        shutil.rmtree(directory, ignore_errors=True)


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
            staged.append(StagedColumn(f.name, (f.name,)))
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
