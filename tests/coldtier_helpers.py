"""Helpers for the cold-tier tests: policies built in code, SQL on the test server, reading archives."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from archiver.coldtier.manifest import list_archive_manifests, objects_of
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


def object_keys(document: dict[str, Any]) -> list[str]:
    """The keys of an archive's objects (one per UTC day, or the one of an older manifest)."""
    return [entry["key"] for entry in objects_of(document)]


def first_key(document: dict[str, Any]) -> str:
    return object_keys(document)[0]


def read_archive(store: Store, document: dict[str, Any]) -> pa.Table:
    """Every row of an archive's objects, in the order of its days."""
    tables = []
    for key in object_keys(document):
        with store.open_seekable(key) as source:
            tables.append(pq.ParquetFile(source).read())
    return pa.concat_tables(tables)


def parquet_keys(store: Store) -> list[str]:
    return sorted(info.key for info in store.list("archive/") if info.key.endswith(".parquet"))


def relations(dsn: str, pattern: str) -> list[str]:
    return [row[0] for row in sql(dsn, "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n "
                                       "ON n.oid = c.relnamespace WHERE c.relname LIKE %s AND c.relkind IN ('r', 'p') "
                                       "ORDER BY 1", (pattern,))]


def file_path(store: Store, key: str) -> Path:
    return Path(store.path_of(key))  # type: ignore[attr-defined]




READING_AGES = (90, 80, 70, 60)


def create_readings(dsn: str, rows: int = 50) -> None:
    sql(dsn, "CREATE TABLE readings (time timestamptz NOT NULL, sensor int, value double precision, "
             "price numeric(10,2)) PARTITION BY RANGE (time)")
    for age in READING_AGES:
        sql(dsn, f"CREATE TABLE readings_d{age} PARTITION OF readings FOR VALUES FROM "
                 f"((current_date - {age})::timestamptz) TO ((current_date - {age} + 1)::timestamptz)")
        sql(dsn, f"INSERT INTO readings SELECT (current_date - {age})::timestamptz + g * interval '10 minutes', g % 5, "
                 f"g * 0.5, g * 1.25 FROM generate_series(1, {rows}) g")


def policy_for(dsn: str, storage: StorageConfig, **options: Any):  # type: ignore[no-untyped-def]
    archive = {key: options.pop(key) for key in list(options) if key in ("parallel", "late_data_check")}
    return make_policy(dsn, storage, [table("public.readings", archive_after=30, drop_after=50, **options)], **archive)


ARCHIVED = ["device_metrics_d100", "device_metrics_d80", "device_metrics_d70", "device_metrics_d60",
            "device_metrics_d40"]


DROPPED = ARCHIVED[:4]


def create_device_metrics(dsn: str) -> None:
    with_rows = {"d100": 150, "d80": 150, "d40": 150, "d20": 20, "d5": 20}
    statements = [SCHEMA]
    for suffix, age in DEVICE_METRICS_AGES.items():
        statements.append(f"CREATE TABLE device_metrics_{suffix} PARTITION OF device_metrics FOR VALUES FROM "
                          f"((current_date - {age})::timestamptz) TO ((current_date - {age} + 1)::timestamptz)")
        if suffix in with_rows:
            statements.append(rows_sql(age * 1000, age, with_rows[suffix]))
    statements.append("INSERT INTO device_metrics (id, recorded_at) SELECT 60000 + g, (current_date - 60)::timestamptz "
                      "+ g * interval '1 hour' FROM generate_series(1, 12) g")  # NULLs in every other column
    statements.append("INSERT INTO device_metrics (id, recorded_at) VALUES (1, current_date - 200)")  # default partition
    for statement in statements:
        sql(dsn, statement)


ASSET_METRICS = """
CREATE EXTENSION IF NOT EXISTS timescaledb;
CREATE TABLE asset_metrics (time timestamptz NOT NULL, asset_id uuid NOT NULL, metric text NOT NULL,
                            value double precision, quality smallint, meta jsonb);
SELECT create_hypertable('asset_metrics', by_range('time', INTERVAL '1 day'));
INSERT INTO asset_metrics
SELECT now() - g * interval '37 minutes', md5((g % 7)::text)::uuid, (ARRAY['power', 'soc', 'temp'])[1 + g % 3],
       CASE WHEN g % 13 = 0 THEN 'NaN' ELSE g * 0.5 END, (g % 100)::smallint,
       CASE WHEN g % 10 = 0 THEN jsonb_build_object('src', 'modbus', 'g', g) END
FROM generate_series(1, 60 * 24 * 60 / 37) AS g;
ALTER TABLE asset_metrics SET (timescaledb.compress, timescaledb.compress_segmentby = 'asset_id');
SELECT count(compress_chunk(c)) FROM show_chunks('asset_metrics', older_than => now() - interval '30 days') AS c;
"""


def days_ago(days: int) -> str:
    return (date.today() - timedelta(days=days)).isoformat()


SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive_amount AS numeric(10,2) CHECK (VALUE > 0);
CREATE TABLE device_metrics (
    id bigint NOT NULL,
    recorded_at timestamptz NOT NULL,
    local_time timestamp,
    device_id uuid,
    reading double precision,
    reading4 real,
    energy numeric(12,3),
    big_total numeric(50,10),
    free_numeric numeric,
    amount positive_amount,
    payload jsonb,
    raw_json json,
    tags text[],
    samples int[],
    levels numeric(6,2)[],
    state mood,
    blob bytea,
    span interval,
    day date,
    at_time time,
    flag boolean,
    small smallint,
    medium integer,
    label varchar(20),
    code char(3),
    note text,
    addr inet,
    stamps timestamptz[]
) PARTITION BY RANGE (recorded_at);
CREATE TABLE device_metrics_default PARTITION OF device_metrics DEFAULT;
"""


ROWS = """
INSERT INTO device_metrics
SELECT {base} + g,
       (current_date - {age})::timestamptz + g * interval '7 minutes',
       (current_date - {age})::timestamp + g * interval '7 minutes',
       md5(g::text)::uuid,
       CASE g % 11 WHEN 0 THEN 'NaN'::float8 WHEN 1 THEN 'Infinity' WHEN 2 THEN '-Infinity' WHEN 3 THEN NULL
                   ELSE g * 1.25 - 7.3 END,
       (g * 0.5)::real,
       CASE WHEN g % 9 = 0 THEN NULL ELSE (g * 1.001)::numeric(12,3) END,
       '12345678901234567890123456789012345678.0123456789'::numeric(50,10) + g,
       CASE g % 4 WHEN 0 THEN 'NaN'::numeric WHEN 1 THEN 1e-30 * g ELSE 1e60 + g END,
       (g % 50 + 1)::numeric(10,2),
       CASE WHEN g % 5 = 0 THEN jsonb_build_object('fw', '1.' || g, 'nested', jsonb_build_array(g, 'x', NULL)) END,
       ('{"raw": ' || g || ',  "spaces":  true}')::json,
       ARRAY['t' || g, NULL, 'ü'],
       CASE WHEN g % 6 = 0 THEN '{}'::int[] ELSE ARRAY[g, g + 1] END,
       ARRAY[(g * 0.25)::numeric(6,2), NULL],
       (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::mood,
       decode(lpad(to_hex(g), 8, '0'), 'hex'),
       make_interval(months => g % 14, days => g % 3, secs => g * 1.5),
       current_date - {age},
       make_time(g % 24, g % 60, (g % 60) + 0.125),
       g % 2 = 0,
       (g % 30000)::smallint,
       g * 7,
       'label ' || g,
       CASE WHEN g % 3 = 0 THEN 'ab' ELSE 'xyz' END,
       repeat('note ', g % 4),
       ('10.0.' || (g % 256) || '.1')::inet,
       ARRAY[(current_date - {age})::timestamptz, NULL]
FROM generate_series(1, {count}) AS g
"""


DEVICE_METRICS_AGES = {"d100": 100, "d80": 80, "d70": 70, "d60": 60, "d40": 40, "d20": 20, "d5": 5}


def rows_sql(base: int, age: int, count: int) -> str:
    return ROWS.replace("{base}", str(base)).replace("{age}", str(age)).replace("{count}", str(count))
