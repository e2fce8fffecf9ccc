"""Cold files expire after cold_retention (manifest first, then data); orphans are swept with care."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from archiver.coldtier.archive import run_archive
from archiver.coldtier.retention import run_retention
from archiver.common.timeutil import utcnow
from archiver.policy.schema import StorageConfig
from archiver.storage.backends import open_store
from archiver.storage.local import LocalStore
from tests.coldtier_helpers import create_readings, make_policy, manifests, parquet_keys, sql, table


class RecordingStore(LocalStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.deleted: list[str] = []

    def delete(self, key: str) -> None:
        self.deleted.append(key)
        super().delete(key)


def policy(dsn: str, storage: StorageConfig, **archive: Any):  # type: ignore[no-untyped-def]
    return make_policy(dsn, storage, [table("public.readings", archive_after=30, drop_after=50),
                                      table("public.totals", archive_after=30)], cold_retention=timedelta(days=730),
                       **archive)


def create_totals(dsn: str) -> None:
    sql(dsn, "CREATE TABLE totals (day date NOT NULL, total numeric(12,2)) PARTITION BY RANGE (day)")
    sql(dsn, "CREATE TABLE totals_d90 PARTITION OF totals FOR VALUES FROM (current_date - 90) TO (current_date - 89)")
    sql(dsn, "INSERT INTO totals VALUES (current_date - 90, 12.5)")


def test_cold_files_expire_manifest_first_and_files_of_chunks_still_in_the_database_stay(
        database: str, tmp_path: Path) -> None:
    create_readings(database)
    create_totals(database)
    storage = StorageConfig(url=f"file://{tmp_path}/store")
    store = RecordingStore(tmp_path / "store")
    run_archive(policy(database, storage), store=store)
    assert run_retention(policy(database, storage), store=store).metrics["chunks_dropped"] == 4
    assert len(parquet_keys(store)) == 5

    early = run_retention(policy(database, storage), store=store, now=utcnow() + timedelta(days=365))
    assert early.metrics["cold_files_expired"] == 0

    later = utcnow() + timedelta(days=3 * 365)
    sql(database, "CREATE TABLE readings_d90 (LIKE readings)")  # restored to the hot tier: its file stays
    dry = run_retention(policy(database, storage), store=store, now=later, dry_run=True)
    assert sum(line.startswith("would expire") for line in dry.lines) == 3 and store.deleted == []

    store.deleted.clear()
    result = run_retention(policy(database, storage), store=store, now=later)
    assert result.metrics["cold_files_expired"] == 3
    kept = [line for line in result.lines if line.startswith("keep") and "still in the database" in line]
    assert len(kept) == 2  # public.totals_d90 (no drop_after) and the recreated readings_d90
    expired = sorted(manifests(LocalStore(tmp_path / "store")))
    assert expired == ["readings_d90", "totals_d90"]
    assert len(parquet_keys(store)) == 2
    for manifest_key, data_key in zip(store.deleted[::2], store.deleted[1::2], strict=True):
        assert manifest_key.startswith("catalog/archive/") and data_key.startswith("archive/")
        assert Path(data_key).name.startswith(Path(manifest_key).stem + ".v"), "a file's manifest goes first, then the file"


def test_orphans_are_removed_by_the_next_run_but_never_in_bulk(database: str, tmp_path: Path) -> None:
    create_readings(database)
    create_totals(database)
    storage = StorageConfig(url=f"file://{tmp_path}/store")
    store = open_store(storage)
    run_archive(policy(database, storage))
    prefix = parquet_keys(store)[0].rsplit("/dt=", 1)[0]
    store.put_bytes(f"{prefix}/year=2020/month=01/day=01/gone_chunk_1_2.parquet", b"left by a killed run")

    dry = run_retention(policy(database, storage), dry_run=True)
    assert any(line.startswith("would remove") and "gone_chunk_1_2.parquet" in line for line in dry.lines)
    assert len(parquet_keys(store)) == 6

    # the run holds the cold-tier lock: no export can be writing, so what no manifest references goes now
    later = run_retention(policy(database, storage))
    assert later.metrics["orphans_removed"] == 1 and len(parquet_keys(store)) == 5
    assert any(line.startswith("removed") and "gone_chunk_1_2.parquet: no manifest references it" in line
               for line in later.lines)

    for index in range(11):
        store.put_bytes(f"{prefix}/year=2020/month=01/day=01/stray_{index}.parquet", b"?")
    refused = run_retention(policy(database, storage), now=utcnow() + timedelta(days=2))
    assert refused.status == "held_back" and refused.metrics["orphans_removed"] == 0
    assert any("not deleting that many" in line for line in refused.lines)
    assert len(parquet_keys(store)) == 16


def test_cold_retention_shorter_than_a_drop_after_is_a_policy_error(tmp_path: Path) -> None:
    from archiver.policy.files import load

    path = tmp_path / "telemetry.yaml"
    path.write_text("database: {dsn: 'dbname=telemetry'}\nstorage: {url: 'file:///srv/cold'}\narchive:\n"
                    "  schedule: '30 1 * * *'\n  tables:\n    - {table: public.asset_metrics, archive_after: 7d, "
                    "drop_after: 90d, time_unit: s, text_columns: [value]}\n  cold_retention: 30d\n  parallel: 9\n")
    issues = [str(issue) for issue in load([path], environ={}).issues]
    assert len(issues) == 2, issues
    assert "archive.cold_retention: is shorter than archive.tables[0].drop_after" in issues[0]
    assert "archive.parallel: out of range (got 9; allowed 1..8)" in issues[1]
