"""Helpers for the cold-tier tests: policies built in code, SQL on the test server, reading archives."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from archiver.coldtier.manifest import list_archive_manifests
from archiver.pg.connect import session
from archiver.policy.fields import Secret
from archiver.policy.schema import ArchiveConfig, ArchiveTable, DatabaseConfig, Policy, StorageConfig
from archiver.storage.base import Store


def make_policy(dsn: str, storage: StorageConfig, tables: list[ArchiveTable], name: str = "telemetry",
                **archive: Any) -> Policy:
    return Policy(database=DatabaseConfig(dsn=Secret(dsn)), storage=storage, name=name,
                  archive=ArchiveConfig(schedule="30 1 * * *", tables=tables, **archive))


def table(name: str, archive_after: int, drop_after: int | None = None, **options: Any) -> ArchiveTable:
    """An archive.tables entry with durations in days."""
    return ArchiveTable(table=name, archive_after=timedelta(days=archive_after),
                        drop_after=timedelta(days=drop_after) if drop_after is not None else None, **options)


def sql(dsn: str, statement: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    """The test's own SQL, with the role's search_path (as psql would run it)."""
    with session(dsn, safe_search_path=False) as current:
        return current.query(statement, params)


def manifests(store: Store, prefix: str = "catalog/archive/") -> dict[str, dict[str, Any]]:
    """Every archive manifest in the store, by chunk name."""
    found = list_archive_manifests(store, prefix)
    return {loaded.document["chunk"]["name"]: loaded.document for loaded in found.values() if loaded.document}


def read_archive(store: Store, document: dict[str, Any]) -> pa.Table:
    with store.open_seekable(document["object"]["key"]) as source:
        return pq.ParquetFile(source).read()


def parquet_keys(store: Store) -> list[str]:
    return sorted(info.key for info in store.list("archive/") if info.key.endswith(".parquet"))


def relations(dsn: str, pattern: str) -> list[str]:
    return [row[0] for row in sql(dsn, "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n "
                                       "ON n.oid = c.relnamespace WHERE c.relname LIKE %s AND c.relkind IN ('r', 'p') "
                                       "ORDER BY 1", (pattern,))]


def file_path(store: Store, key: str) -> Path:
    return Path(store.path_of(key))  # type: ignore[attr-defined]


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> StorageConfig:
    """The cold-tier tests run against both stores: a file:// directory and moto's S3 (import it
    into a test module to use it)."""
    if request.param == "file":
        return StorageConfig(url=f"file://{tmp_path}/store")
    bucket, endpoint = request.getfixturevalue("bucket"), request.getfixturevalue("s3_endpoint")
    return StorageConfig(url=f"s3://{bucket}/telemetry", endpoint_url=endpoint, region="us-east-1")
