"""The lake as earlier archivers left it, and as users' readers see it.

``downgrade`` rewrites a current archive the way an earlier archiver wrote it: all its rows in one
file under ``year=/month=/day=`` of its range's start (layout 1), or, with ``legacy_name``, named
after its chunk and keyed by it, without an identity (format 1: ``_hyper_1_7_chunk_<start>_<end>``,
which readers skip). The migration must carry both to today's layout.
"""

from __future__ import annotations

import collections
import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from archiver.coldtier.identity import key_part, parse_bound_json, range_token
from archiver.coldtier.manifest import objects_of
from archiver.storage.base import Store
from archiver.storage.documents import write_json

NEW_ONLY = (b"archiver.day", b"archiver.partition_key", b"archiver.profile")
IDENTITY_ONLY = (b"archiver.identity", b"archiver.version")


def downgrade(store: Store, manifest_key: str, document: dict[str, Any], *, legacy_name: str | None = None) -> str:
    """Rewrite the archive at ``manifest_key`` in layout 1 (or format 1 with ``legacy_name``); its data key."""
    tables = []
    for entry in objects_of(document):
        with store.open_seekable(entry["key"]) as source:
            tables.append(pq.ParquetFile(source).read())
    data = pa.concat_tables(tables)
    dropped = NEW_ONLY + (IDENTITY_ONLY if legacy_name else ())
    data = data.replace_schema_metadata({key: value for key, value in (data.schema.metadata or {}).items()
                                         if key not in dropped})
    span = document["range"]
    start, end = parse_bound_json(span["start"]), parse_bound_json(span["end"])
    day = str(span["start_utc"])[:10].split("-")
    stem = (f"{key_part(legacy_name)}_{range_token(start, unbounded='min')}_{range_token(end, unbounded='max')}"
            if legacy_name else f"{document['identity']['stem']}.v{document['version']}")
    table_prefix = f"{key_part(document['database'])}/{key_part(document['table'])}"
    key = f"archive/{table_prefix}/year={day[0]}/month={day[1]}/day={day[2]}/{stem}.parquet"
    buffer = io.BytesIO()
    pq.write_table(data, buffer, compression="zstd")
    put = store.put_bytes(key, buffer.getvalue())
    old = {key: value for key, value in document.items() if key not in ("objects", "layout")}
    old["object"] = {"key": key, "size": put.size, "sha256": put.sha256, "etag": put.etag}
    if legacy_name:
        old = {key: value for key, value in old.items() if key not in ("identity", "supersedes")}
        old.update(format_version=1, chunk={**document["chunk"], "name": legacy_name})
        write_json(store, f"catalog/archive/{table_prefix}/{stem}.json", old)
        store.delete(manifest_key)
    else:
        write_json(store, manifest_key, old)
    for entry in objects_of(document):
        store.delete(entry["key"])
    return key


def hive_rows(root: Path, columns: list[str]) -> collections.Counter[tuple[Any, ...]]:
    """What pyarrow.dataset with Hive partitioning and its default rules sees under ``root``."""
    if not root.exists():
        return collections.Counter()
    dataset = ds.dataset(str(root), partitioning="hive")
    if not dataset.files:
        return collections.Counter()
    data = dataset.to_table(columns=columns)
    return collections.Counter(zip(*(data.column(name).to_pylist() for name in columns), strict=True))
