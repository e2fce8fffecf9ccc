"""Plain PostgreSQL: a range-partitioned table (the pg_partman layout) with every mapped type.

Archive exports the partitions past archive_after, the Parquet read back with pyarrow holds every
row exactly as the source has it, and retention drops exactly the partitions past drop_after that
were archived. Runs against the file store and moto's S3 server alike.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from archiver.coldtier import typemap as tm
from archiver.coldtier.archive import run_archive
from archiver.coldtier.plan import run_plan
from archiver.coldtier.retention import run_retention
from archiver.policy.schema import StorageConfig
from archiver.storage.backends import open_store
from tests.coldtier_helpers import (
    ARCHIVED,
    create_device_metrics,
    first_key,
    make_policy,
    manifests,
    parquet_keys,
    read_archive,
    relations,
    sql,
    table,
)

SOURCE = """
SELECT id, recorded_at, local_time, device_id, reading, reading4, energy, big_total::text, free_numeric::text,
       amount, payload::text, raw_json::text, tags, samples, levels, state::text, blob,
       CASE WHEN span IS NOT NULL THEN
            (extract(year FROM span) * 12 + extract(month FROM span))::int END,
       extract(day FROM span)::int,
       ((extract(hour FROM span) * 3600000000 + extract(minute FROM span) * 60000000
         + extract(microseconds FROM span)) * 1000)::bigint,
       day, at_time, flag, small, medium, label, code, note, addr::text, stamps
FROM {relation} ORDER BY id
"""







def same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, float) and isinstance(actual, float) and math.isnan(expected):
        return math.isnan(actual)
    return bool(expected == actual)


def archived_rows(table: pa.Table) -> list[tuple[Any, ...]]:
    rows = []
    for row in sorted(table.to_pylist(), key=lambda r: r["id"]):
        span = row["span"] or {"months": None, "days": None, "nanoseconds": None}
        values = [row[name] for name in table.column_names]
        index = table.column_names.index("span")
        values[index:index + 1] = [span["months"], span["days"], span["nanoseconds"]]
        rows.append(tuple(values))
    return rows


def assert_same_rows(dsn: str, relation: str, table: pa.Table) -> int:
    source = sql(dsn, SOURCE.format(relation=relation))
    archived = archived_rows(table)
    assert len(archived) == len(source)
    for expected, actual in zip(source, archived):
        for position, (want, got) in enumerate(zip(expected, actual)):
            assert same(want, got), f"{relation} id {expected[0]} column #{position}: {want!r} != {got!r}"
    return len(source)


def test_every_type_round_trips_and_retention_drops_exactly_the_archived_old_partitions(
        database: str, storage: StorageConfig) -> None:
    create_device_metrics(database)
    policy = make_policy(database, storage, [table("public.device_metrics", archive_after=30, drop_after=50)])
    store = open_store(storage)

    plan = run_plan(policy)
    assert "public.device_metrics" in plan.lines[0]
    assert sum("would export" in line for line in plan.lines) == 5

    result = run_archive(policy)
    assert result.status == "ok", result.lines
    assert result.metrics["chunks_archived"] == 5
    found = manifests(store)
    assert sorted(found) == sorted(ARCHIVED)

    rows = 0
    for name, document in found.items():
        archive = read_archive(store, document)
        rows += assert_same_rows(database, f"public.{name}", archive)
        assert document["rows"] == archive.num_rows
    assert rows == result.metrics["rows"] == 150 + 150 + 0 + 12 + 150

    schemas = {name: read_archive(store, document).schema for name, document in found.items()}
    assert len({schema.remove_metadata() for schema in schemas.values()}) == 1, "empty and NULL-only partitions " \
                                                                               "must not change the schema"
    assert_types(schemas["device_metrics_d60"])

    assert run_archive(policy).metrics["chunks_skipped"] == 5  # idempotent

    retained = run_retention(policy)
    assert retained.status == "ok", retained.lines
    assert retained.metrics["chunks_dropped"] == 4
    remaining = relations(database, "device_metrics_%")
    assert remaining == ["public.device_metrics_d20", "public.device_metrics_d40", "public.device_metrics_d5",
                         "public.device_metrics_default"]
    assert sql(database, "SELECT count(*) FROM device_metrics_default")[0][0] == 1
    assert len(parquet_keys(store)) == 5  # the cold tier keeps the dropped partitions
    assert run_retention(policy).metrics["chunks_dropped"] == 0


def assert_types(schema: pa.Schema) -> None:
    types = {field.name: field.type for field in schema}
    assert types["recorded_at"] == pa.timestamp("us", tz="UTC")
    assert types["local_time"] == pa.timestamp("us")
    assert types["device_id"] == pa.uuid()
    assert types["energy"] == pa.decimal128(12, 3)
    assert types["amount"] == pa.decimal128(10, 2)
    assert types["big_total"] == pa.string() and types["free_numeric"] == pa.string()
    assert types["payload"] == pa.json_(pa.string()) and types["raw_json"] == pa.json_(pa.string())
    assert types["tags"] == pa.list_(pa.string()) and types["levels"] == pa.list_(pa.decimal128(6, 2))
    assert types["state"] == pa.dictionary(pa.int32(), pa.string())
    assert types["span"] == tm.INTERVAL_TYPE
    assert types["blob"] == pa.binary() and types["addr"] == pa.string()
    assert schema.field("big_total").metadata == {b"pg_type": b"numeric(50,10)", b"pg_text_form": b"true"}
    assert schema.field("addr").metadata[b"pg_type"] == b"inet"


def test_parquet_files_carry_what_readers_and_auditors_need(database: str, tmp_path: Path) -> None:
    create_device_metrics(database)
    storage = StorageConfig(url=f"file://{tmp_path}/store")
    policy = make_policy(database, storage, [table("public.device_metrics", archive_after=30)], row_group_rows=1000)
    run_archive(policy)
    store = open_store(storage)
    document = manifests(store)["device_metrics_d100"]
    key = first_key(document)
    day = (datetime.now(UTC).date().toordinal() - 100)
    start = datetime.fromordinal(day).replace(tzinfo=UTC)
    assert key == (f"archive/{database.split('dbname=')[1]}/public.device_metrics/dt={start:%Y-%m-%d}/"
                   f"{start:%Y%m%dT000000Z}_{datetime.fromordinal(day + 1):%Y%m%dT000000Z}.v1.parquet")
    parquet = pq.ParquetFile(store.path_of(key))  # type: ignore[attr-defined]
    meta = parquet.metadata
    kv = {k.decode(): v.decode() for k, v in meta.metadata.items() if k.startswith(b"archiver.")}
    assert kv["archiver.source_table"] == "public.device_metrics"
    assert kv["archiver.chunk"] == "public.device_metrics_d100"
    assert kv["archiver.range_start"] == f"{start:%Y-%m-%d}T00:00:00Z"
    assert json.loads(kv["archiver.identity"])["stem"] == document["identity"]["stem"] and kv["archiver.version"] == "1"
    assert '"energy": "numeric(12,3)"' in kv["archiver.pg_types"]
    column = meta.row_group(0).column(meta.schema.names.index("energy"))
    assert column.compression == "ZSTD" and column.statistics is not None and column.statistics.has_min_max
    assert document["parquet"]["page_checksums"] is True and document["parquet"]["row_groups"] == 1
    assert document["min_time"].startswith(f"{start:%Y-%m-%d}T00:07:00")

    data = bytearray(Path(store.path_of(key)).read_bytes())  # type: ignore[attr-defined]
    middle = meta.row_group(0).column(0).data_page_offset + 40
    data[middle] ^= 0xFF
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(OSError, match="CRC|checksum"):
        pq.ParquetFile(corrupt, page_checksum_verification=True).read()


def test_dry_run_changes_nothing_and_says_what_it_would_do(database: str, tmp_path: Path) -> None:
    create_device_metrics(database)
    storage = StorageConfig(url=f"file://{tmp_path}/store")
    policy = make_policy(database, storage, [table("public.device_metrics", archive_after=30, drop_after=50,
                                                   require_archive=False)])
    archive = run_archive(policy, dry_run=True)
    assert sum(line.startswith("would export") for line in archive.lines) == 5
    retention = run_retention(policy, dry_run=True)
    assert sum(line.startswith("would drop") for line in retention.lines) == 4
    assert not (tmp_path / "store").exists()
    assert len(relations(database, "device_metrics_%")) == 8


def test_large_row_groups_split_by_rows(database: str, tmp_path: Path) -> None:
    create_device_metrics(database)
    storage = StorageConfig(url=f"file://{tmp_path}/store")
    policy = make_policy(database, storage, [table("public.device_metrics", archive_after=30)], row_group_rows=1000)
    sql(database, "INSERT INTO device_metrics (id, recorded_at, reading) SELECT 900000 + g, "
                  "(current_date - 40)::timestamptz + g * interval '1 second', g FROM generate_series(1, 2500) g")
    run_archive(policy, table="device_metrics")
    document = manifests(open_store(storage))["device_metrics_d40"]
    assert document["parquet"]["row_group_rows"] == [1000, 1000, 650]
    assert document["rows"] == 2650


def test_integer_date_and_naive_timestamp_partition_keys(database: str, tmp_path: Path) -> None:
    epoch_day = "(extract(epoch FROM current_date)::bigint / 86400)"
    statements = [
        "CREATE TABLE events (seq bigint NOT NULL, at_s bigint NOT NULL, kind text) PARTITION BY RANGE (at_s)",
        "CREATE TABLE daily_totals (day date NOT NULL, total numeric(14,2)) PARTITION BY RANGE (day)",
        "CREATE TABLE local_readings (at timestamp NOT NULL, value real) PARTITION BY RANGE (at)",
    ]
    for age in (40, 20, 1):
        statements += [
            f"CREATE TABLE events_d{age} PARTITION OF events FOR VALUES FROM (({epoch_day} - {age}) * 86400) "
            f"TO (({epoch_day} - {age} + 1) * 86400)",
            f"INSERT INTO events SELECT g, ({epoch_day} - {age}) * 86400 + g * 60, 'k' || g % 3 "
            "FROM generate_series(0, 99) g",
            f"CREATE TABLE daily_totals_d{age} PARTITION OF daily_totals FOR VALUES FROM (current_date - {age}) "
            f"TO (current_date - {age} + 1)",
            f"INSERT INTO daily_totals VALUES (current_date - {age}, {age} * 1.5)",
            f"CREATE TABLE local_readings_d{age} PARTITION OF local_readings FOR VALUES FROM "
            f"((current_date - {age})::timestamp) TO ((current_date - {age} + 1)::timestamp)",
            f"INSERT INTO local_readings SELECT (current_date - {age})::timestamp + g * interval '1 hour', g / 4.0 "
            "FROM generate_series(0, 23) g",
        ]
    for statement in statements:
        sql(database, statement)
    storage = StorageConfig(url=f"file://{tmp_path}/store")
    tables = [table("public.events", archive_after=10, drop_after=30, time_unit="s"),
              table("public.daily_totals", archive_after=10, drop_after=30),
              table("public.local_readings", archive_after=10, drop_after=30)]
    policy = make_policy(database, storage, tables)
    result = run_archive(policy)
    assert result.status == "ok" and result.metrics["chunks_archived"] == 6, result.lines
    found = manifests(open_store(storage))
    assert found["events_d40"]["range"]["end_utc"].endswith("T00:00:00Z")
    assert first_key(found["events_d40"]).endswith(
        f"/{found['events_d40']['range']['start']}_{found['events_d40']['range']['end']}.v1.parquet")
    assert found["daily_totals_d40"]["min_time"] == found["daily_totals_d40"]["range"]["start"][:10]
    assert found["local_readings_d20"]["rows"] == 24
    retained = run_retention(policy)
    assert retained.metrics["chunks_dropped"] == 3, retained.lines
    assert relations(database, "%\\_d40") == []
