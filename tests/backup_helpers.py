"""Shared pieces of the backup tests: policies on disk, restoring a backup with the real pg_restore."""

from __future__ import annotations

import hashlib
import io
import subprocess
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from archiver.backup.manifest import backup_manifest_key, dump_key, globals_key, new_id, verification_key
from archiver.common.timeutil import isoformat
from archiver.pg.connect import connect
from archiver.pg.dsn import dsn_env
from archiver.pg.scratch import LocalPostgres
from archiver.pg.stats import PINNED_SETTINGS
from archiver.pg.target import content_stats
from archiver.policy.files import get_policy
from archiver.policy.schema import Policy
from archiver.storage.base import Store
from archiver.storage.compress import open_decompressed
from archiver.storage.documents import read_json, write_json
from archiver.storage.s3 import S3Store


def write_policy(directory: Path, name: str, dsn: str, storage_url: str, *, endpoint_url: str | None = None,
                 backup: dict[str, Any] | None = None, database: dict[str, Any] | None = None) -> Path:
    storage: dict[str, Any] = {"url": storage_url}
    if endpoint_url:
        storage.update(endpoint_url=endpoint_url, region="us-east-1")
    document = {
        "database": {"dsn": dsn, **(database or {})},
        "storage": storage,
        "backup": {"schedule": "0 2 * * *", **(backup or {})},
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def load_policy(path: Path) -> Policy:
    return get_policy([path], path.stem)


def read_manifest(store: Store, backup_id: str) -> dict[str, Any]:
    return read_json(store, backup_manifest_key(backup_id))


def fetch_object(store: Store, entry: dict[str, Any]) -> bytes:
    """An object's original bytes, after checking its stored size and SHA-256 against the manifest."""
    with store.open(entry["key"]) as stream:
        stored = stream.read()
    assert len(stored) == entry["size"]
    assert hashlib.sha256(stored).hexdigest() == entry["sha256"]
    data = open_decompressed(io.BytesIO(stored), entry["codec"]).read()
    assert len(data) == entry["uncompressed_size"]
    return data


def pg_restore(instance: LocalPostgres, dbname: str, dump: bytes, *extra: str) -> subprocess.CompletedProcess[str]:
    """Plain pg_restore, reading the dump from stdin; the connection from PG* variables."""
    env = {"PATH": "/usr/bin:/bin", **dsn_env(instance.dsn(dbname))}
    argv = [str(instance.bindir / "pg_restore"), "--no-password", "--exit-on-error", f"--dbname={dbname}", *extra]
    result = subprocess.run(argv, input=dump, capture_output=True, env=env)
    assert result.returncode == 0, result.stderr.decode()
    return subprocess.CompletedProcess(argv, 0, result.stdout.decode(), result.stderr.decode())


def psql_file(instance: LocalPostgres, dbname: str, script: bytes) -> str:
    """Run a SQL script with psql (errors reported, not fatal: globals re-create existing roles)."""
    env = {"PATH": "/usr/bin:/bin", **dsn_env(instance.dsn(dbname))}
    result = subprocess.run([str(instance.bindir / "psql"), "-X", "-q", "-f", "-"], input=script,
                            capture_output=True, env=env)
    assert result.returncode == 0, result.stderr.decode()
    return result.stderr.decode()


def new_database(instance: LocalPostgres) -> tuple[str, str]:
    name = f"r_{uuid.uuid4().hex[:12]}"
    return name, instance.create_database(name)


def restore_backup(instance: LocalPostgres, store: Store, backup_id: str) -> str:
    """Restore a (non-TimescaleDB) backup into a new database of ``instance``; its DSN."""
    document = read_manifest(store, backup_id)
    name, dsn = new_database(instance)
    pg_restore(instance, name, fetch_object(store, document["objects"]["dump"]))
    return dsn


def manifest_stats(document: dict[str, Any]) -> dict[str, tuple[int, str | None]]:
    return {f"{t['schema']}.{t['name']}": (t["rows"], t.get("checksum")) for t in document["content"]["tables"]}


def live_stats(dsn: str) -> dict[str, tuple[int, str | None]]:
    stats = content_stats(dsn)
    return {s.table.qualified_name: (s.rows, s.checksum) for s in stats.tables}


def table_digest(dsn: str, table: str, order_by: str) -> tuple[int, str]:
    """Row count and an ordered digest of a table's text, computed independently of archiver's checksum."""
    with connect(dsn, safe_search_path=False) as conn:  # the test's own SQL, as psql would run it
        for name, value in PINNED_SETTINGS.items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        row = conn.execute(f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY {order_by}), '')) "
                           f"FROM {table} AS t").fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


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


DIGEST_ORDER = {
    "identity.users": "t.email", "identity.api_keys": "t.id", "app.devices": "t.name", "app.documents": "t.id",
    "app.readings_2026_01": "t.device_id, t.ts", "app.readings_2026_02": "t.device_id, t.ts",
}


def backup_policy(tmp_path: Path, dsn: str, store: Store, s3_endpoint: str | None, **backup: Any) -> Path:
    url = store.url if store.url.startswith("s3://") else f"file://{tmp_path / 'store'}"
    return write_policy(tmp_path / "policies", "app", dsn, url,
                        endpoint_url=s3_endpoint if url.startswith("s3://") else None,
                        backup={"retention": {"keep_last": 3}, **backup})


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


MiB = 1024 * 1024


def policy_path(tmp_path: Path, dsn: str, store: S3Store, endpoint: str, **backup: Any) -> Path:
    return write_policy(tmp_path / "policies", "app", dsn, store.url, endpoint_url=endpoint,
                        backup={"compression": {"codec": "none"}, "retention": {"keep_last": 2}, **backup})


def fake_backup(store: Store, moment: datetime, *, verified: str | None = None) -> str:
    """A backup as run_backup leaves it (data objects, then the manifest), dated ``moment``."""
    backup_id = new_id(moment)
    objects = {}
    for role, key in (("dump", dump_key(backup_id, ".zst")), ("globals", globals_key(backup_id, ".zst"))):
        data = f"{role} of {backup_id}".encode() * 100
        store.put_bytes(key, data)
        objects[role] = {"key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "codec": "zstd",
                         "uncompressed_size": len(data)}
    write_json(store, backup_manifest_key(backup_id), {
        "format_version": 1, "kind": "backup", "id": backup_id, "policy": "app",
        "database": {"name": "app"}, "snapshot_time": isoformat(moment), "started_at": isoformat(moment),
        "finished_at": isoformat(moment + timedelta(seconds=42)), "duration_seconds": 42.0, "objects": objects,
    })
    if verified:
        write_json(store, verification_key(backup_id),
                            {"result": verified, "finished_at": isoformat(moment + timedelta(hours=3))})
    return backup_id
