"""TimescaleDB hypertables: compressed and uncompressed chunks, integer time, space partitions,
and the TimescaleDB jobs that could drop or re-aggregate chunks behind archiver's back."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from archiver.coldtier.archive import run_archive
from archiver.coldtier.retention import run_retention
from archiver.errors import UsageError
from archiver.policy.schema import StorageConfig
from archiver.storage.backends import open_store
from tests.coldtier_helpers import ASSET_METRICS, first_key, make_policy, manifests, parquet_keys, read_archive, sql, table

pytestmark = pytest.mark.timescaledb



@pytest.fixture
def storage(tmp_path: Path) -> StorageConfig:
    return StorageConfig(url=f"file://{tmp_path}/store")


def chunk_rows(dsn: str, relation: str, columns: str, order: str) -> list[tuple[Any, ...]]:
    return sql(dsn, f"SELECT {columns} FROM {relation} ORDER BY {order}")


def same_rows(expected: list[tuple[Any, ...]], actual: list[tuple[Any, ...]]) -> bool:
    def normal(value: Any) -> Any:
        return "NaN" if isinstance(value, float) and math.isnan(value) else value
    return [tuple(map(normal, row)) for row in expected] == [tuple(map(normal, row)) for row in actual]


def timescaledb_chunks(dsn: str, hypertable: str) -> list[tuple[str, bool]]:
    return [(f"{row[0]}.{row[1]}", row[2]) for row in sql(
        dsn, "SELECT chunk_schema, chunk_name, is_compressed FROM timescaledb_information.chunks "
             "WHERE hypertable_name = %s ORDER BY range_start, chunk_name", (hypertable,))]


def test_compressed_and_uncompressed_chunks_are_archived_and_dropped_with_drop_chunks(
        database: str, storage: StorageConfig) -> None:
    sql(database, ASSET_METRICS)
    before = timescaledb_chunks(database, "asset_metrics")
    assert any(compressed for _, compressed in before) and not all(compressed for _, compressed in before)
    policy = make_policy(database, storage, [table("public.asset_metrics", archive_after=10, drop_after=45)])
    store = open_store(storage)

    result = run_archive(policy)
    assert result.status == "ok", result.lines
    found = manifests(store)
    due = sql(database, "SELECT chunk_name FROM timescaledb_information.chunks WHERE hypertable_name = "
                        "'asset_metrics' AND range_end <= now() - interval '10 days'")
    assert sorted(found) == sorted(row[0] for row in due)
    assert {document["chunk"]["compressed"] for document in found.values()} == {True, False}
    for name, document in found.items():
        archive = read_archive(store, document)
        expected = chunk_rows(database, f"_timescaledb_internal.{name}",
                              "time, asset_id, metric, value, quality, meta::text", "time, asset_id, metric")
        actual = sorted(((r["time"], r["asset_id"], r["metric"], r["value"], r["quality"], r["meta"])
                         for r in archive.to_pylist()), key=lambda r: (r[0], r[1], r[2]))
        assert len(expected) == document["rows"] > 0
        assert same_rows(expected, actual), name

    old = sql(database, "SELECT chunk_schema || '.' || chunk_name FROM timescaledb_information.chunks WHERE "
                        "hypertable_name = 'asset_metrics' AND range_end <= now() - interval '45 days'")
    retained = run_retention(policy)
    assert retained.status == "ok", retained.lines
    assert retained.metrics["chunks_dropped"] == len(old) > 0
    assert all("drop_chunks older_than" in line for line in retained.lines if line.startswith("dropped"))
    after = timescaledb_chunks(database, "asset_metrics")
    assert not {name for name, _ in after} & {row[0] for row in old}
    companions = sql(database, "SELECT count(*) FROM pg_class WHERE relname LIKE 'compress\\_hyper\\_%%' "
                               "AND relkind = 'r'")[0][0]
    assert companions == sum(1 for _, compressed in after if compressed)  # dropped chunks took their compressed data
    assert len(parquet_keys(store)) == len(found)


MARKET_PRICES = """
CREATE EXTENSION IF NOT EXISTS timescaledb;
CREATE TABLE market_prices (ts bigint NOT NULL, area text NOT NULL, price numeric(10,4), volume numeric);
SELECT create_hypertable('market_prices', by_range('ts', 86400));
CREATE FUNCTION market_now() RETURNS bigint LANGUAGE sql STABLE AS $$ SELECT 100 * 86400::bigint $$;
INSERT INTO market_prices
SELECT g, (ARRAY['DE-LU', 'FR', 'NL'])[1 + (g / 3600) % 3], round((g % 9973) / 7.0, 4), (g % 1000) * 1.5
FROM generate_series(60 * 86400, 100 * 86400 - 1, 3600) AS g;
"""


def test_integer_time_uses_the_hypertables_integer_now(database: str, storage: StorageConfig) -> None:
    sql(database, MARKET_PRICES)
    policy = make_policy(database, storage, [table("public.market_prices", archive_after=10, drop_after=20,
                                                   time_unit="s")])
    with pytest.raises(UsageError, match="without an integer_now function"):
        run_archive(policy)
    sql(database, "SELECT set_integer_now_func('market_prices', 'market_now')")
    without_unit = make_policy(database, storage, [table("public.market_prices", archive_after=10)])
    with pytest.raises(UsageError, match="set archive.tables\\[\\].time_unit"):
        run_archive(without_unit)

    store = open_store(storage)
    result = run_archive(policy)
    assert result.metrics["chunks_archived"] == 30  # days 60..89 end by day 90 = integer_now - 10 days
    found = manifests(store)
    first = min(found.values(), key=lambda d: d["range"]["start"])
    assert first["range"] == {"start": 60 * 86400, "end": 61 * 86400, "start_utc": "1970-03-02T00:00:00Z",
                              "end_utc": "1970-03-03T00:00:00Z"}
    assert first_key(first).endswith("/dt=1970-03-02/5184000_5270400.v1.parquet")
    archive = read_archive(store, first)
    expected = chunk_rows(database, f"_timescaledb_internal.{first['chunk']['name']}", "ts, area, price, volume::text",
                          "ts")
    assert [(r["ts"], r["area"], r["price"], r["volume"]) for r in archive.to_pylist()] == expected

    assert run_retention(policy).metrics["chunks_dropped"] == 20
    assert sql(database, "SELECT min(ts) FROM market_prices")[0][0] == 80 * 86400


FLOWS = """
CREATE EXTENSION IF NOT EXISTS timescaledb;
CREATE TABLE interconnection_flows (time timestamptz NOT NULL, region int NOT NULL, mw double precision);
SELECT create_hypertable('interconnection_flows', by_range('time', INTERVAL '1 day'));
SELECT add_dimension('interconnection_flows', by_hash('region', 2));
INSERT INTO interconnection_flows
SELECT date_trunc('day', now()) - d * interval '1 day' + h * interval '1 hour', r, d * 100 + h + r / 10.0
FROM generate_series(1, 20) d, generate_series(0, 23) h, generate_series(1, 4) r;
"""


def test_space_partitioned_chunks_share_ranges_and_are_dropped_one_by_one_when_one_is_not_verified(
        database: str, storage: StorageConfig) -> None:
    sql(database, FLOWS)
    policy = make_policy(database, storage, [table("public.interconnection_flows", archive_after=5, drop_after=10)])
    store = open_store(storage)
    run_archive(policy)
    found = manifests(store)
    ranges: dict[Any, list[str]] = {}
    for name, document in found.items():
        ranges.setdefault(document["range"]["start"], []).append(name)
    assert all(len(names) == 2 for names in ranges.values()), "two hash partitions per time range"
    assert len(parquet_keys(store)) == len(found)
    for names in ranges.values():
        total = sum(read_archive(store, found[name]).num_rows for name in names)
        assert total == 24 * 4

    victim = min(found.values(), key=lambda d: d["range"]["start"])
    store.put_bytes(first_key(victim), b"not parquet any more")
    retained = run_retention(policy)
    assert retained.status == "held_back"
    assert any(line.startswith("note") and "drop_chunks not used" in line for line in retained.lines) is False
    held = [line for line in retained.lines if line.startswith("hold")]
    assert len(held) == 1 and victim["chunk"]["name"] in held[0] and "has 20 bytes" in held[0]
    remaining = {name.split(".")[1] for name, _ in timescaledb_chunks(database, "interconnection_flows")}
    assert victim["chunk"]["name"] in remaining
    dropped = [line for line in retained.lines if line.startswith("dropped")]
    assert len(dropped) == retained.metrics["chunks_dropped"] > 0
    assert not any("drop_chunks older_than" in line for line in dropped)


def test_a_timescaledb_retention_job_is_refused_unless_allowed_and_caggs_are_warned_about(
        database: str, storage: StorageConfig) -> None:
    sql(database, ASSET_METRICS)
    sql(database, "SELECT add_retention_policy('asset_metrics', INTERVAL '50 days')")
    sql(database, "CREATE MATERIALIZED VIEW asset_hourly WITH (timescaledb.continuous) AS SELECT time_bucket('1 hour', "
                  "time) AS bucket, asset_id, avg(value) FROM asset_metrics GROUP BY 1, 2 WITH NO DATA")
    sql(database, "SELECT add_continuous_aggregate_policy('asset_hourly', start_offset => INTERVAL '120 days', "
                  "end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '1 hour')")
    tables = [table("public.asset_metrics", archive_after=10, drop_after=45)]
    refused = make_policy(database, storage, tables)
    run_archive(refused)
    count = len(timescaledb_chunks(database, "asset_metrics"))
    result = run_retention(refused)
    assert result.status == "held_back" and result.metrics["chunks_dropped"] == 0
    assert any(line.startswith("refuse") and "retention policy job" in line for line in result.lines)
    assert any(line.startswith("warn") and "asset_hourly refreshes with start_offset 120 days" in line
               for line in result.lines)
    assert len(timescaledb_chunks(database, "asset_metrics")) == count

    allowed = make_policy(database, storage, tables, allow_timescaledb_retention_policy=True)
    result = run_retention(allowed)
    assert any(line.startswith("warn") and "allowed by archive.allow_timescaledb_retention_policy" in line
               for line in result.lines)
    assert result.metrics["chunks_dropped"] > 0 and result.status == "ok"
