"""``backup``: the real pg_dump into the real stores, restored with the real pg_restore and checked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from archiver.backup.task import run_backup
from archiver.pg.connect import connect, execute, query
from archiver.pg.scratch import LocalPostgres
from archiver.pg.stats import TableRef
from archiver.pg.target import content_stats
from archiver.storage.base import Store
from tests.backup_helpers import (
    DIGEST_ORDER,
    TELEMETRY_SCHEMA,
    backup_policy,
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
    timescale_state,
)

EXPECTED_ROWS = {
    "identity.users": 502, "identity.api_keys": 502, "app.devices": 300, "app.documents": 2,
    "app.readings_2026_01": 20 * 136, "app.readings_2026_02": 20 * 165, "app.processed_messages": 0,
}




@pytest.fixture(scope="module")
def fresh_instance() -> Iterator[LocalPostgres]:
    """A second, empty PostgreSQL: where a restore onto a new instance lands."""
    with LocalPostgres() as instance:
        yield instance






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
