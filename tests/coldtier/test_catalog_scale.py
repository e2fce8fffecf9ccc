"""Catalog scale: a run's catalog reads and ADBC connections do not grow with its chunks.

ADBC's connect reads the server's whole type catalog (every chunk adds a row type), so a
connection per chunk made one-row chunks cost seconds each on a 10,000-chunk database; catalog
queries per chunk grow the same way. The counters are the pg package's own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from archiver.coldtier.archive import run_archive
from archiver.coldtier.retention import run_retention
from archiver.pg import arrow, catalog
from archiver.pg.connect import execute
from archiver.policy.schema import StorageConfig
from tests.coldtier_helpers import make_policy, manifests, table


def one_row_partitions(dsn: str, name: str, count: int) -> None:
    execute(dsn, f"CREATE TABLE public.{name} (time timestamptz NOT NULL, value int) PARTITION BY RANGE (time)")
    execute(dsn, "".join(f"CREATE TABLE public.{name}_d{day} PARTITION OF public.{name} FOR VALUES FROM "
                         f"(current_date - {day + 1}) TO (current_date - {day});" for day in range(count)))
    execute(dsn, f"INSERT INTO public.{name} SELECT current_date - g + interval '1 hour', g "
                 f"FROM generate_series(1, {count}) g")


def one_row_chunks(dsn: str, name: str, count: int) -> None:
    execute(dsn, "CREATE EXTENSION IF NOT EXISTS timescaledb SCHEMA public")
    execute(dsn, f"CREATE TABLE public.{name} (time timestamptz NOT NULL, value int)")
    execute(dsn, f"SELECT public.create_hypertable('public.{name}', 'time', chunk_time_interval => interval '1 hour')")
    execute(dsn, f"INSERT INTO public.{name} SELECT date_trunc('hour', now()) - g * interval '1 hour' "
                 f"+ interval '1 minute', g FROM generate_series(1, {count}) g")


def catalog_work(run: object) -> tuple[int, int]:
    """(catalog reads, ADBC connections) that ``run()`` made."""
    reads, connects = sum(catalog.CALLS.values()), arrow.CONNECTS[0]
    run()  # type: ignore[operator]
    return sum(catalog.CALLS.values()) - reads, arrow.CONNECTS[0] - connects


def measure(dsn: str, tmp_path: Path, name: str, archive_after: int) -> tuple[tuple[int, int], tuple[int, int]]:
    storage = StorageConfig(url=f"file://{tmp_path}/{name}")
    policy = make_policy(dsn, storage, [table(f"public.{name}", archive_after=archive_after,
                                              drop_after=archive_after)])
    archived = catalog_work(lambda: run_archive(policy))
    assert len(manifests(open_store_of(storage))) > 0
    dropped = catalog_work(lambda: run_retention(policy))
    return archived, dropped


def open_store_of(storage: StorageConfig):  # type: ignore[no-untyped-def]
    from archiver.storage.backends import open_store

    return open_store(storage)


def test_native_partitions_cost_the_same_catalog_reads_and_connections_at_60_and_240(
        database: str, tmp_path: Path) -> None:
    one_row_partitions(database, "few", 60)
    one_row_partitions(database, "many", 240)
    few = measure(database, tmp_path, "few", 0)
    many = measure(database, tmp_path, "many", 0)
    assert few == many, f"60 partitions: {few}; 240 partitions: {many} (archive, retention: catalog reads, connections)"
    assert many[0][1] == 1, "one ADBC connection for the whole export (parallel: 1)"


@pytest.mark.timescaledb
def test_hypertable_chunks_cost_the_same_catalog_reads_and_connections_at_60_and_240(
        database: str, tmp_path: Path) -> None:
    one_row_chunks(database, "few", 60)
    one_row_chunks(database, "many", 240)
    few = measure(database, tmp_path, "few", 0)
    many = measure(database, tmp_path, "many", 0)
    assert few == many, f"60 chunks: {few}; 240 chunks: {many} (archive, retention: catalog reads, connections)"
    assert many[0][1] == 1
