"""``archiver restore-archive``: archive -> drop -> restore-archive -> the same rows; twice adds nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from archiver.coldtier.archive import run_archive
from archiver.coldtier.retention import run_retention
from archiver.errors import LockBusy
from archiver.ops.locking import database_lock
from archiver.pg.connect import connect
from archiver.pg.stats import PINNED_SETTINGS
from archiver.policy.schema import StorageConfig
from archiver.restore.archive import run_restore_archive
from archiver.storage.backends import open_store
from tests.coldtier_helpers import (
    ASSET_METRICS,
    DROPPED,
    create_device_metrics,
    days_ago,
    first_key,
    make_policy,
    manifests,
    relations,
    sql,
    table,
)
from tests.helpers import run_cli


def digest(dsn: str, relation: str, time_column: str, start: str, end: str, order: str) -> tuple[int, str]:
    """Row count and an ordered digest of every column's text, in a time range (settings pinned)."""
    with connect(dsn, safe_search_path=False) as conn:  # the test's own SQL, as psql would run it
        for name, value in PINNED_SETTINGS.items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        row = conn.execute(f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY {order}), '')) "
                           f"FROM {relation} AS t WHERE {time_column} >= %s::timestamptz "
                           f"AND {time_column} < %s::timestamptz", (start, end)).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])




def test_dropped_partitions_come_back_with_every_value_and_a_second_run_adds_nothing(
        database: str, storage: StorageConfig) -> None:
    create_device_metrics(database)
    start, end = days_ago(110), days_ago(50)
    before = digest(database, "device_metrics", "recorded_at", start, end, "t.id")
    policy = make_policy(database, storage, [table("public.device_metrics", archive_after=30, drop_after=50)])
    assert run_archive(policy).status == "ok"
    assert run_retention(policy).metrics["chunks_dropped"] == 4
    assert digest(database, "device_metrics", "recorded_at", start, end, "t.id")[0] == 0

    result = run_restore_archive(policy, table="device_metrics", start=start, end=end)
    assert result.status == "ok", result.lines
    assert result.metrics["ranges_loaded"] == 3 and result.metrics["rows"] == before[0] == 150 + 150 + 12
    assert sum(line.startswith("load") and "recreated partition public.device_metrics_d" in line
               for line in result.lines) == 3, result.lines
    assert any(line.startswith("skip") and "device_metrics_d70" in line for line in result.lines)  # an empty one
    assert digest(database, "device_metrics", "recorded_at", start, end, "t.id") == before
    assert set(relations(database, "device_metrics_%")) >= {f"public.{name}" for name in DROPPED if name != "device_metrics_d70"}
    assert sql(database, "SELECT count(*) FROM device_metrics_default")[0][0] == 1  # routed to partitions, not here

    again = run_restore_archive(policy, table="device_metrics", start=start, end=end)
    assert again.status == "ok" and again.metrics["rows"] == 0 and again.metrics["ranges_loaded"] == 0
    assert all(line.startswith("skip") for line in again.lines), again.lines
    assert digest(database, "device_metrics", "recorded_at", start, end, "t.id") == before


def test_into_another_database_a_plain_table_is_made(database: str, tmp_path: Path, pg: Any) -> None:
    create_device_metrics(database)
    storage = StorageConfig(url=f"file://{tmp_path}/store")
    policy = make_policy(database, storage, [table("public.device_metrics", archive_after=30)])
    assert run_archive(policy).status == "ok"
    start, end = days_ago(101), days_ago(79)
    other = pg.create_database(f"audit_{tmp_path.name[-8:].replace('-', '_')}")
    result = run_restore_archive(policy, table="public.device_metrics", start=start, end=end, target=other)
    assert result.status == "ok", result.lines
    assert "does not exist in the target: created it as a plain table" in result.lines[0]
    assert digest(other, "device_metrics", "recorded_at", start, end, "t.id") == \
        digest(database, "device_metrics", "recorded_at", start, end, "t.id")
    assert sql(other, "SELECT relkind FROM pg_class WHERE relname = 'device_metrics'") == [("r",)]


def test_a_damaged_archive_is_not_loaded_and_the_command_says_so(database: str, tmp_path: Path) -> None:
    create_device_metrics(database)
    storage = StorageConfig(url=f"file://{tmp_path}/store")
    policy = make_policy(database, storage, [table("public.device_metrics", archive_after=30, drop_after=50)])
    assert run_archive(policy).status == "ok"
    assert run_retention(policy).metrics["chunks_dropped"] == 4
    store = open_store(storage)
    key = first_key(manifests(store)["device_metrics_d100"])
    data = bytearray(store.get_bytes(key))
    data[len(data) // 2] ^= 0x01
    store.put_bytes(key, bytes(data))

    policy_file = tmp_path / "policies" / "telemetry.yaml"
    policy_file.parent.mkdir()
    policy_file.write_text(yaml.safe_dump({
        "database": {"dsn": database}, "storage": {"url": storage.url},
        "archive": {"schedule": "30 1 * * *", "tables": [{"table": "public.device_metrics", "archive_after": "30d",
                                                          "drop_after": "50d"}]}}))
    result = run_cli("--policies", str(policy_file.parent), "restore-archive", "telemetry", "--table",
                     "device_metrics", "--from", days_ago(110), "--to", days_ago(50))
    assert result.code == 4, result.output
    assert "mismatch" in result.stdout and "device_metrics_d100" in result.stdout and "SHA-256" in result.stdout
    assert "1 archive(s) FAILED their checksum" in result.stderr
    assert digest(database, "device_metrics", "recorded_at", days_ago(101), days_ago(99), "t.id")[0] == 0
    assert digest(database, "device_metrics", "recorded_at", days_ago(81), days_ago(79), "t.id")[0] == 150

    dry = run_cli("--policies", str(policy_file.parent), "restore-archive", "telemetry", "--table",
                  "device_metrics", "--from", days_ago(110), "--to", days_ago(50), "--dry-run")
    assert dry.code == 0, dry.output
    assert "would load" in dry.stdout and "device_metrics_d100" in dry.stdout and "the table 0 in this window" in dry.stdout
    assert "skip" in dry.stdout and "device_metrics_d80" in dry.stdout


@pytest.mark.timescaledb
def test_hypertable_chunks_come_back_and_a_partial_range_is_never_loaded_twice(database: str, tmp_path: Path) -> None:
    sql(database, ASSET_METRICS)
    storage = StorageConfig(url=f"file://{tmp_path}/store")
    policy = make_policy(database, storage, [table("public.asset_metrics", archive_after=10, drop_after=45)])
    start, end = days_ago(70), days_ago(45)
    order = "t.time, t.asset_id, t.metric"
    middle, later = f"{days_ago(50)}T06:00:00Z", f"{days_ago(50)}T18:00:00Z"
    before = digest(database, "asset_metrics", "time", start, end, order)
    half_day = digest(database, "asset_metrics", "time", middle, later, order)
    assert before[0] > half_day[0] > 0
    assert run_archive(policy).status == "ok"
    assert run_retention(policy).metrics["chunks_dropped"] > 0
    assert digest(database, "asset_metrics", "time", start, end, order)[0] == 0

    # half a day first: only its rows come back
    part = run_restore_archive(policy, table="asset_metrics", start=middle, end=later)
    assert part.status == "ok" and part.metrics["ranges_loaded"] == 1, part.lines
    assert part.metrics["rows"] == half_day[0]
    assert digest(database, "asset_metrics", "time", start, end, order) == half_day

    # the whole range: the half day already back is not loaded again; its other rows and every other day load
    whole = run_restore_archive(policy, table="asset_metrics", start=start, end=end)
    assert whole.status == "ok" and whole.metrics["ranges_held_back"] == 0, whole.lines
    assert sum(f"({half_day[0]:,} already present)" in line for line in whole.lines) == 1, whole.lines
    assert digest(database, "asset_metrics", "time", start, end, order) == before
    assert run_restore_archive(policy, table="asset_metrics", start=start, end=end).metrics["rows"] == 0

    # restored rows are archived already: nothing is exported again, no range gets a second archive,
    # and the next retention drops them again, so every row is in exactly one place
    store = open_store(storage)
    objects = sorted(info.key for info in store.list("archive/"))
    again = run_archive(policy)
    assert again.metrics["chunks_archived"] == 0, again.lines
    assert sorted(info.key for info in store.list("archive/")) == objects
    assert run_retention(policy).metrics["chunks_dropped"] > 0
    assert digest(database, "asset_metrics", "time", start, end, order)[0] == 0
    assert list(store.list("catalog/rehydrated/")) == [], "a range dropped again forgets its rehydration"


def test_restore_archive_does_not_start_while_archive_or_retention_runs(database: str, tmp_path: Path) -> None:
    create_device_metrics(database)
    policy = make_policy(database, StorageConfig(url=f"file://{tmp_path}/store"),
                         [table("public.device_metrics", archive_after=30)])
    assert run_archive(policy).status == "ok"
    with database_lock(policy, "retention"):
        with pytest.raises(LockBusy, match="restore-archive of policy 'telemetry' cannot start: the cold tier"):
            run_restore_archive(policy, table="device_metrics", start=days_ago(110), end=days_ago(50))
