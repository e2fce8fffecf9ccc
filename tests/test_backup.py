"""``backup``: the real pg_dump into the real stores, restored with the real pg_restore and checked."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from archiver.backup.task import run_backup
from archiver.pg.connect import connect, execute, query
from archiver.pg.scratch import LocalPostgres
from archiver.pg.stats import TableRef
from archiver.pg.target import content_stats
from archiver.storage.base import Store
from tests.backup_helpers import (
    fetch_object,
    live_stats,
    load_policy,
    manifest_stats,
    new_database,
    pg_restore,
    psql_file,
    read_manifest,
    restore_backup,
    table_digest,
    write_policy,
)

RICH_SCHEMA = """
CREATE SCHEMA identity;
CREATE SCHEMA app;
CREATE TYPE app.device_kind AS ENUM ('meter', 'inverter', 'battery');
CREATE TABLE identity.users (
    id uuid PRIMARY KEY, email text NOT NULL UNIQUE, created_at timestamptz NOT NULL, settings jsonb,
    roles text[], balance numeric(20, 6), avatar bytea, active boolean);
CREATE TABLE identity.api_keys (
    id bigserial PRIMARY KEY, user_id uuid NOT NULL REFERENCES identity.users, key_hash bytea NOT NULL,
    scopes text[] NOT NULL DEFAULT '{}', expires_at timestamptz);
CREATE TABLE app.devices (
    id uuid PRIMARY KEY, kind app.device_kind NOT NULL, name text, meta jsonb, installed_at timestamptz,
    capacity_kw numeric, readings double precision[], firmware bytea, poll interval, "Odd Column" text);
CREATE TABLE app.readings (device_id uuid NOT NULL, ts timestamptz NOT NULL, value double precision,
                           quality numeric(5, 2)) PARTITION BY RANGE (ts);
CREATE TABLE app.readings_2026_01 PARTITION OF app.readings FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
CREATE TABLE app.readings_2026_02 PARTITION OF app.readings FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
CREATE TABLE app.documents (id serial PRIMARY KEY, title text NOT NULL, body oid NOT NULL);
CREATE TABLE app.processed_messages (id bigint PRIMARY KEY, seen_at timestamptz NOT NULL);

INSERT INTO identity.users
SELECT gen_random_uuid(), 'user' || i || '@example.com', '2026-01-01 00:00:00+00'::timestamptz + i * interval '37 minutes',
       CASE WHEN i % 3 = 0 THEN jsonb_build_object('theme', 'dark', 'n', i, 'tags', jsonb_build_array('a', i))
            WHEN i % 3 = 1 THEN 'null'::jsonb END,
       CASE WHEN i % 4 = 0 THEN ARRAY['admin', 'viewer'] WHEN i % 4 = 1 THEN '{}'::text[] END,
       (i * 12345.678901)::numeric(20, 6), decode(md5(i::text), 'hex'), i % 2 = 0
FROM generate_series(1, 500) AS i;
INSERT INTO identity.users VALUES
    (gen_random_uuid(), 'ünïcødé@example.com', 'infinity', '{"emoji": "⚡", "quote": "a \\"b\\" c"}', ARRAY['x,y', 'NULL', ''],
     'NaN', '\\x00ff00', NULL),
    (gen_random_uuid(), 'old@example.com', '-infinity', '[]', NULL, -0.000001, '', true);
INSERT INTO identity.api_keys (user_id, key_hash, scopes, expires_at)
SELECT id, sha256(email::bytea), ARRAY['read', 'write'], created_at + interval '90 days' FROM identity.users;
INSERT INTO app.devices
SELECT gen_random_uuid(), (ARRAY['meter', 'inverter', 'battery'])[1 + i % 3]::app.device_kind, 'device ' || i,
       jsonb_build_object('site', 'S' || (i % 7), 'nested', jsonb_build_object('v', i * 1.5)),
       '2025-06-01 12:00:00+02'::timestamptz + i * interval '1 day', i * 0.1, ARRAY[i * 0.5, 1e-300, 'Infinity'],
       decode(repeat('ab', i % 50), 'hex'), i * interval '1 minute 30 seconds', E'tab\\there'
FROM generate_series(1, 300) AS i;
INSERT INTO app.readings
SELECT d.id, '2026-01-15'::timestamptz + (i * interval '3 hours'), sin(i) * 100, (i % 100)::numeric / 3
FROM (SELECT id FROM app.devices LIMIT 20) AS d, generate_series(0, 300) AS i;
INSERT INTO app.documents (title, body) VALUES
    ('manual', lo_from_bytea(0, convert_to(repeat('PostgreSQL large object. ', 20000), 'UTF8'))),
    ('firmware', lo_from_bytea(0, decode(repeat('deadbeef', 1000), 'hex')));
INSERT INTO app.processed_messages SELECT i, now() FROM generate_series(1, 1000) AS i;
"""

EXPECTED_ROWS = {
    "identity.users": 502, "identity.api_keys": 502, "app.devices": 300, "app.documents": 2,
    "app.readings_2026_01": 20 * 136, "app.readings_2026_02": 20 * 165, "app.processed_messages": 0,
}
DIGEST_ORDER = {
    "identity.users": "t.email", "identity.api_keys": "t.id", "app.devices": "t.name", "app.documents": "t.id",
    "app.readings_2026_01": "t.device_id, t.ts", "app.readings_2026_02": "t.device_id, t.ts",
}


@pytest.fixture
def rich_database(database: str) -> tuple[str, str]:
    """A database with several schemas and types, two large objects and a role with grants; (dsn, role)."""
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with connect(database) as conn:
        conn.execute(RICH_SCHEMA)
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA app TO {role}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA app TO {role}")
    return database, role


@pytest.fixture(scope="module")
def fresh_instance() -> Iterator[LocalPostgres]:
    """A second, empty PostgreSQL: where a restore onto a new instance lands."""
    with LocalPostgres() as instance:
        yield instance


def backup_policy(tmp_path: Path, dsn: str, store: Store, s3_endpoint: str | None, **backup: Any) -> Path:
    url = store.url if store.url.startswith("s3://") else f"file://{tmp_path / 'store'}"
    return write_policy(tmp_path / "policies", "app", dsn, url,
                        endpoint_url=s3_endpoint if url.startswith("s3://") else None,
                        backup={"retention": {"keep_last": 3}, **backup})


@pytest.fixture
def endpoint(request: pytest.FixtureRequest, store: Store) -> str | None:
    return request.getfixturevalue("s3_endpoint") if store.url.startswith("s3://") else None


def test_backup_restores_on_a_new_instance_with_matching_counts_and_checksums(
        tmp_path: Path, rich_database: tuple[str, str], store: Store, endpoint: str | None,
        fresh_instance: LocalPostgres) -> None:
    source, role = rich_database
    policy = load_policy(backup_policy(tmp_path, source, store, endpoint,
                                       pg_dump={"exclude_table_data": ["app.processed_messages"]}))
    result = run_backup(policy, store=store)
    document = read_manifest(store, result.data["id"])

    # the manifest: what was dumped, from which server, with what
    assert document["id"] == result.data["id"] and document["policy"] == "app"
    assert document["database"]["server_version_num"] // 10000 == 15
    assert document["database"]["extensions"]["plpgsql"] == "1.0"
    assert document["tools"]["pg_dump"]["version"].startswith("pg_dump (PostgreSQL) 15")
    assert document["objects"]["dump"]["codec"] == "zstd" and document["objects"]["dump"]["key"].endswith(".pgdump.zst")
    assert "--snapshot=" in " ".join(document["pg_dump_options"])
    counted = manifest_stats(document)
    assert {name: rows for name, (rows, _) in counted.items()} == EXPECTED_ROWS
    kinds = {f"{t['schema']}.{t['name']}": t["kind"] for t in document["content"]["tables"]}
    assert kinds["app.readings_2026_01"] == "partition" and kinds["identity.users"] == "table"
    assert "app.readings" not in kinds  # the partitioned parent holds no rows of its own
    row_hashes = {f"{t['schema']}.{t['name']}": t["row_hash"] for t in document["content"]["tables"]}
    assert row_hashes["identity.users"] == "record"
    assert row_hashes["app.devices"] == "text"  # an enum hashes by OID, which the restore changes
    excluded = [t for t in document["content"]["tables"] if t.get("data_excluded")]
    assert [t["name"] for t in excluded] == ["processed_messages"]
    assert document["content"]["large_objects"]["count"] == 2
    assert result.metrics["rows"] == sum(EXPECTED_ROWS.values())
    assert result.metrics["bytes"] == document["objects"]["dump"]["size"] + document["objects"]["globals"]["size"]
    assert document["started_at"] <= document["finished_at"]

    # a new instance: roles first (pg_dumpall --globals-only), then plain pg_restore
    globals_sql = fetch_object(store, document["objects"]["globals"])
    assert f"CREATE ROLE {role};".encode() in globals_sql and b"PASSWORD" not in globals_sql
    psql_file(fresh_instance, "postgres", globals_sql)
    name, restored = new_database(fresh_instance)
    pg_restore(fresh_instance, name, fetch_object(store, document["objects"]["dump"]))

    assert live_stats(restored) == counted
    recounted = content_stats(restored, tables=[TableRef.from_json(t) for t in document["content"]["tables"]])
    assert [stats.to_json() for stats in recounted.tables] == document["content"]["tables"]
    for table, order in DIGEST_ORDER.items():
        assert table_digest(restored, table, order) == table_digest(source, table, order), table
    assert content_stats(restored).large_objects.to_json() == document["content"]["large_objects"]
    with connect(restored) as conn:
        manual = conn.execute("SELECT convert_from(lo_get(body), 'UTF8') FROM app.documents WHERE title = 'manual'")
        assert manual.fetchone() == ("PostgreSQL large object. " * 20000,)
        conn.execute(f"SET ROLE {role}")
        assert conn.execute("SELECT count(*) FROM app.devices").fetchone() == (300,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM identity.users")


def test_counts_come_from_the_dumped_snapshot(tmp_path: Path, rich_database: tuple[str, str],
                                              file_store: Store, pg: LocalPostgres) -> None:
    """Rows committed while pg_dump runs are in neither the dump nor the manifest's counts."""
    source, _ = rich_database
    policy = load_policy(backup_policy(tmp_path, source, file_store, None))

    class InsertWhileDumping:
        inserted = False

        def phase(self, name: str, total: int | None = None, unit: str = "B") -> None:
            return None

        def advance(self, amount: int) -> None:
            if not self.inserted:
                self.inserted = True
                execute(source, "INSERT INTO app.devices (id, kind) SELECT gen_random_uuid(), 'meter' "
                                   "FROM generate_series(1, 50)")

        def done(self) -> None:
            return None

    progress = InsertWhileDumping()
    result = run_backup(policy, store=file_store, progress=progress)
    assert progress.inserted
    assert query(source, "SELECT count(*) FROM app.devices") == [(350,)]
    document = read_manifest(file_store, result.data["id"])
    assert manifest_stats(document)["app.devices"][0] == 300
    restored = restore_backup(pg, file_store, result.data["id"])
    assert query(restored, "SELECT count(*) FROM app.devices") == [(300,)]
    assert live_stats(restored)["app.devices"] == manifest_stats(document)["app.devices"]


def test_oid_hashed_types_are_found_through_domains_arrays_and_composites(database: str) -> None:
    execute(database, """
        CREATE TYPE mood AS ENUM ('ok', 'sad');
        CREATE DOMAIN moods AS mood[];
        CREATE TYPE reading AS (at timestamptz, how moods);
        CREATE TABLE plain (id int, at timestamptz, tags text[], doc jsonb);
        CREATE TABLE nested (id int, r reading[]);
        CREATE TABLE registry (id int, rel regclass);
        INSERT INTO nested VALUES (1, ARRAY[ROW(now(), ARRAY['ok']::moods)::reading]);
        INSERT INTO registry VALUES (1, 'plain');
    """)
    hashes = {stats.table.name: stats.row_hash for stats in content_stats(database).tables}
    assert hashes == {"plain": "record", "nested": "text", "registry": "text"}


@pytest.mark.parametrize("extra_column, row_hash, changes", [
    # every type hashable: values are hashed with their types' hash functions
    ("", "record", [("amount = 1.6", "amount = 1.5"), ("at = at + interval '1 microsecond'", "at = at - interval '1 microsecond'"),
                    ("tags = ARRAY['b']", "tags = ARRAY['a']"), ("id = 1001", "id = 1")]),
    # json has no hash function: the row's text is hashed, which sees even numeric scale
    (", doc json", "text", [("amount = 1.50", "amount = 1.5"), ("doc = '{\"a\": 1}'", "doc = NULL"),
                            ("at = at + interval '1 microsecond'", "at = at - interval '1 microsecond'")]),
])
def test_checksums_change_with_any_value_and_not_with_row_order(database: str, extra_column: str, row_hash: str,
                                                                 changes: list[tuple[str, str]]) -> None:
    execute(database, f"CREATE TABLE t (id int, amount numeric, at timestamptz, tags text[]{extra_column});"
                         "INSERT INTO t (id, amount, at, tags) SELECT i, 1.5, '2026-03-01'::timestamptz + i * interval '1 h',"
                         " ARRAY['a'] FROM generate_series(1, 1000) AS i")

    def checksum() -> tuple[int, str | None]:
        (stats,) = content_stats(database).tables
        assert stats.row_hash == row_hash
        return stats.rows, stats.checksum

    original = checksum()
    execute(database, "UPDATE t SET id = id WHERE id % 2 = 0")  # moves half the rows: another scan order
    assert query(database, "SELECT id FROM t LIMIT 2") == [(1,), (3,)]
    assert checksum() == original
    for change, undo in changes:
        execute(database, f"UPDATE t SET {change} WHERE id = 1")
        changed = checksum()
        assert changed[0] == original[0] and changed[1] != original[1], change
        execute(database, f"UPDATE t SET {undo} WHERE id {'= 1001' if change == 'id = 1001' else '= 1'}")
        assert checksum() == original, undo
    execute(database, "DELETE FROM t WHERE id = 500")
    assert checksum()[0] == 999


def test_without_table_checksums_rows_are_still_counted(tmp_path: Path, rich_database: tuple[str, str],
                                                        file_store: Store) -> None:
    source, _ = rich_database
    policy = load_policy(backup_policy(tmp_path, source, file_store, None, table_checksums=False))
    document = read_manifest(file_store, run_backup(policy, store=file_store).data["id"])
    assert document["content"]["method"] is None
    assert all("checksum" not in t for t in document["content"]["tables"])
    assert {name: rows for name, (rows, _) in manifest_stats(document).items()}["identity.users"] == 502


@pytest.mark.parametrize("codec", ["gzip", "none"])
def test_other_codecs_restore_too(tmp_path: Path, rich_database: tuple[str, str], file_store: Store,
                                  pg: LocalPostgres, codec: str) -> None:
    source, _ = rich_database
    policy = load_policy(backup_policy(tmp_path, source, file_store, None, compression={"codec": codec}, globals=False))
    result = run_backup(policy, store=file_store)
    document = read_manifest(file_store, result.data["id"])
    assert document["objects"]["dump"]["codec"] == codec and "globals" not in document["objects"]
    assert document["objects"]["dump"]["key"].endswith({"gzip": ".pgdump.gz", "none": ".pgdump"}[codec])
    restored = restore_backup(pg, file_store, result.data["id"])
    assert live_stats(restored) == manifest_stats(document)


# -- TimescaleDB ------------------------------------------------------------------------------------

TELEMETRY_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS timescaledb;
CREATE TABLE asset_metrics (
    time timestamptz NOT NULL, asset_id uuid NOT NULL, metric text NOT NULL, value double precision,
    quality numeric(6, 3), meta jsonb);
SELECT create_hypertable('asset_metrics', 'time', chunk_time_interval => interval '1 day');
INSERT INTO asset_metrics
SELECT '2026-01-01'::timestamptz + i * interval '1 minute', a.id, (ARRAY['power', 'soc', 'temp'])[1 + i % 3],
       sin(i / 100.0) * 50, (i % 1000) / 7.0, CASE WHEN i % 97 = 0 THEN jsonb_build_object('flag', i) END
FROM generate_series(0, 6 * 1440 - 1) AS i,
     (VALUES ('6f1c2a9e-0000-4000-8000-000000000001'::uuid), ('6f1c2a9e-0000-4000-8000-000000000002'::uuid)) AS a(id);
ALTER TABLE asset_metrics SET (timescaledb.compress, timescaledb.compress_segmentby = 'asset_id',
                               timescaledb.compress_orderby = 'time');
SELECT compress_chunk(c) FROM show_chunks('asset_metrics', older_than => '2026-01-04'::timestamptz) AS c;
CREATE MATERIALIZED VIEW asset_metrics_hourly WITH (timescaledb.continuous) AS
    SELECT time_bucket('1 hour', time) AS bucket, asset_id, metric, avg(value) AS avg_value, count(*) AS samples
    FROM asset_metrics GROUP BY 1, 2, 3 WITH NO DATA;
"""


def timescale_state(dsn: str) -> dict[str, Any]:
    with connect(dsn, safe_search_path=False) as conn:
        chunks = conn.execute("SELECT count(*) FILTER (WHERE is_compressed), count(*) FILTER (WHERE NOT is_compressed) "
                              "FROM timescaledb_information.chunks WHERE hypertable_name = 'asset_metrics'").fetchone()
        cagg = conn.execute("SELECT count(*), sum(samples), round(sum(avg_value)::numeric, 6) "
                            "FROM asset_metrics_hourly").fetchone()
        per_day = conn.execute("SELECT time_bucket('1 day', time)::text, count(*), round(sum(value)::numeric, 6) "
                               "FROM asset_metrics GROUP BY 1 ORDER BY 1").fetchall()
    return {"chunks": chunks, "cagg": cagg, "per_day": per_day}


@pytest.mark.timescaledb
def test_timescaledb_hypertable_and_continuous_aggregate_restore_identically(
        tmp_path: Path, database: str, s3_store: Store, s3_endpoint: str, pg: LocalPostgres) -> None:
    with connect(database, safe_search_path=False) as conn:
        conn.execute(TELEMETRY_SCHEMA)
        conn.execute("CALL refresh_continuous_aggregate('asset_metrics_hourly', NULL, NULL)")
    source_state = timescale_state(database)
    assert source_state["chunks"] == (3, 3)  # compressed and uncompressed chunks
    policy = load_policy(backup_policy(tmp_path, database, s3_store, s3_endpoint))
    document = read_manifest(s3_store, run_backup(policy, store=s3_store).data["id"])

    version = document["database"]["extensions"]["timescaledb"]
    assert document["timescaledb_version"] == version == query(
        database, "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")[0][0]
    tables = {f"{t['schema']}.{t['name']}": t for t in document["content"]["tables"]}
    assert tables["public.asset_metrics"]["kind"] == "hypertable" and tables["public.asset_metrics"]["rows"] == 2 * 6 * 1440
    (cagg,) = [t for t in tables.values() if t["kind"] == "continuous_aggregate"]
    assert cagg["view"] == "public.asset_metrics_hourly" and cagg["rows"] == 2 * 3 * 6 * 24
    assert not any("_hyper_" in name for name in tables)  # chunks are counted in their hypertable
    assert document["warnings"] and all(w["expected"] for w in document["warnings"])

    name, restored = new_database(pg)
    with connect(restored, safe_search_path=False) as conn:
        conn.execute(f"CREATE EXTENSION timescaledb VERSION '{version}'")
        conn.execute("SELECT timescaledb_pre_restore()")
    pg_restore(pg, name, fetch_object(s3_store, document["objects"]["dump"]))
    execute(restored, "SELECT timescaledb_post_restore()")

    # a new connection after post_restore, as the TimescaleDB docs ask
    assert timescale_state(restored) == source_state
    assert live_stats(restored) == manifest_stats(document)
    assert table_digest(restored, "asset_metrics", "t.time, t.asset_id") == \
        table_digest(database, "asset_metrics", "t.time, t.asset_id")
