"""Nothing lost, nothing doubled across archive, retention and restore-archive (issue 10, items 1-2).

Each test replays, deterministically, a sequence of ordinary commands that lost or doubled rows
before archives were identified by their range; the model test (test_model_invariants.py) found
the same sequences at random. Rows are read back from the Parquet objects with pyarrow.
"""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from archiver.coldtier.archive import run_archive
from archiver.coldtier.retention import run_retention
from archiver.common.progress import NULL_PROGRESS
from archiver.policy.schema import StorageConfig
from archiver.restore.archive import run_restore_archive
from archiver.restore.drill import _archive_checks
from archiver.storage.backends import open_store
from archiver.storage.base import Store
from archiver.storage.documents import read_json, write_json
from tests.coldtier_helpers import (
    ASSET_METRICS,
    create_device_metrics,
    days_ago,
    first_key,
    make_policy,
    manifests,
    parquet_keys,
    relations,
    sql,
    table,
)
from tests.helpers import run_cli


@pytest.fixture
def storage(tmp_path: Path) -> StorageConfig:
    return StorageConfig(url=f"file://{tmp_path}/store")


def lake_ids(store: Store, column: str = "id") -> collections.Counter[Any]:
    """Every value of ``column`` in the current archive objects (those a manifest references)."""
    found: collections.Counter[Any] = collections.Counter()
    for document in manifests(store).values():
        with store.open_seekable(first_key(document)) as source:
            found.update(pq.read_table(source, columns=[column]).column(column).to_pylist())
    return found


def database_ids(dsn: str, relation: str = "device_metrics", column: str = "id") -> collections.Counter[Any]:
    return collections.Counter(row[0] for row in sql(dsn, f"SELECT {column} FROM {relation}"))


def test_a_partly_restored_partition_is_never_exported_over_its_archive(database: str, storage: StorageConfig) -> None:
    """Issue 10, problem 1: restore-archive of a partial window, then archive and retention."""
    create_device_metrics(database)
    policy = make_policy(database, storage, [table("public.device_metrics", archive_after=30, drop_after=50)])
    store = open_store(storage)
    everything = database_ids(database)
    assert run_archive(policy).status == "ok"
    assert run_retention(policy).metrics["chunks_dropped"] == 4
    archived = lake_ids(store)
    assert set(archived) | set(database_ids(database)) == set(everything) and max(archived.values()) == 1

    window = (f"{days_ago(100)}T06:00:00Z", f"{days_ago(100)}T12:00:00Z")
    partial = run_restore_archive(policy, table="device_metrics", start=window[0], end=window[1])
    assert partial.status == "ok" and 0 < partial.metrics["rows"] < 150, partial.lines
    keys = parquet_keys(store)

    again = run_archive(policy)
    assert again.metrics["chunks_archived"] == 0, again.lines
    assert any("brought back by restore-archive" in line for line in again.lines), again.lines
    assert parquet_keys(store) == keys and lake_ids(store) == archived, "the archive keeps every row, once"

    dropped = run_retention(policy)
    assert any(line.startswith("dropped") and "device_metrics_d100" in line and "dropped again" in line
               for line in dropped.lines), dropped.lines
    assert "public.device_metrics_d100" not in relations(database, "device_metrics_%")
    assert lake_ids(store) == archived and set(archived) | set(database_ids(database)) == set(everything)


def test_rows_deleted_from_an_archived_partition_are_held_until_the_operator_accepts(
        database: str, storage: StorageConfig) -> None:
    create_device_metrics(database)
    policy = make_policy(database, storage, [table("public.device_metrics", archive_after=30, drop_after=50)])
    store = open_store(storage)
    assert run_archive(policy).status == "ok"
    sql(database, "DELETE FROM device_metrics_d80 WHERE id % 2 = 0")  # a cleanup gone too far, or on purpose

    archived = run_archive(policy)
    assert archived.status == "held_back"
    (held,) = [line for line in archived.lines if line.startswith("hold")]
    assert "the database holds 75 of 150 archived rows: rows were deleted or only partly restored" in held
    retained = run_retention(policy)
    assert any(line.startswith("hold") and "device_metrics_d80" in line for line in retained.lines)
    assert "public.device_metrics_d80" in relations(database, "device_metrics_%")
    assert manifests(store)["device_metrics_d80"]["rows"] == 150

    accepted = held.split("--accept-deletes ")[1].split("`")[0]
    result = run_cli("--policies", str(_policy_file(storage, database)), "archive", "telemetry",
                     "--accept-deletes", accepted)
    assert result.code == 0, result.output
    document = manifests(store)["device_metrics_d80"]
    assert (document["version"], document["rows"]) == (2, 75)
    assert "deletion accepted by the operator" in document["change"]["reason"]
    assert any(line.startswith("dropped") and "device_metrics_d80" in line
               for line in run_retention(policy).lines)


def _policy_file(storage: StorageConfig, dsn: str) -> Path:
    import yaml

    directory = Path(storage.url.removeprefix("file://")).parent / "policies"
    directory.mkdir(exist_ok=True)
    (directory / "telemetry.yaml").write_text(yaml.safe_dump({
        "database": {"dsn": dsn}, "storage": {"url": storage.url},
        "archive": {"schedule": "30 1 * * *", "tables": [{"table": "public.device_metrics", "archive_after": "30d",
                                                          "drop_after": "50d"}]}}))
    return directory


@pytest.mark.timescaledb
def test_late_rows_into_a_dropped_range_extend_its_archive(database: str, storage: StorageConfig) -> None:
    """TimescaleDB re-creates a dropped chunk (under another name) for a late row: same range, same archive."""
    sql(database, ASSET_METRICS)
    policy = make_policy(database, storage, [table("public.asset_metrics", archive_after=10, drop_after=45)])
    store = open_store(storage)
    assert run_archive(policy).status == "ok" and run_retention(policy).metrics["chunks_dropped"] > 0
    before = lake_ids(store, "time")
    late = f"{days_ago(50)} 13:13:13+00"
    sql(database, f"INSERT INTO asset_metrics VALUES ('{late}', md5('late')::uuid, 'power', 42, 1, NULL)")

    merged = run_archive(policy)
    assert merged.metrics["chunks_archived"] == 1, merged.lines
    assert any(line.startswith("merge") and "1 new row(s) in a range whose" in line and "v2 keeps those" in line
               for line in merged.lines), merged.lines
    after = lake_ids(store, "time")
    assert sum(after.values()) == sum(before.values()) + 1 and max(after.values()) == 1
    assert len(parquet_keys(store)) == len(manifests(store)), "one object per range, no second file"
    assert run_retention(policy).metrics["chunks_dropped"] == 1
    day = (f"{days_ago(50)}", f"{days_ago(49)}")
    assert sql(database, f"SELECT count(*) FROM asset_metrics WHERE time >= '{day[0]}' "
                         f"AND time < '{day[1]}'")[0][0] == 0, "the late row's range is dropped again"
    back = run_restore_archive(policy, table="asset_metrics", start=day[0], end=day[1])  # the merged version loads
    assert back.status == "ok" and back.metrics["rows"] == sum(after[t] for t in after if day[0] <= str(t)[:10] < day[1])


def test_a_manifest_whose_checksum_no_longer_matches_its_object_blocks_the_drop(
        database: str, storage: StorageConfig) -> None:
    create_device_metrics(database)
    policy = make_policy(database, storage, [table("public.device_metrics", archive_after=30, drop_after=50)])
    store = open_store(storage)
    assert run_archive(policy).status == "ok"
    document = manifests(store)["device_metrics_d100"]
    key = f"catalog/archive/{document['database']}/public.device_metrics/{document['identity']['stem']}.json"
    document["objects"][0]["sha256"] = "0" * 64  # the object is intact; its manifest no longer vouches for it
    write_json(store, key, document)

    result = run_retention(policy)
    (held,) = [line for line in result.lines if line.startswith("hold")]
    assert document["chunk"]["name"] in held and "was altered, or its manifest was" in held
    assert f"public.{document['chunk']['name']}" in relations(database, "device_metrics_%")


def test_an_object_swapped_for_another_ranges_archive_is_refused_by_every_reader(
        database: str, storage: StorageConfig) -> None:
    create_device_metrics(database)
    policy = make_policy(database, storage, [table("public.device_metrics", archive_after=30, drop_after=50)])
    store = open_store(storage)
    assert run_archive(policy).status == "ok"
    found = manifests(store)
    victim, other = found["device_metrics_d100"], found["device_metrics_d80"]
    store.put_bytes(first_key(victim), store.get_bytes(first_key(other)))
    victim["objects"] = [{**other["objects"][0], "key": first_key(victim)}]  # manifest edited to match, rows too
    victim["rows"] = other["rows"]
    write_json(store, f"catalog/archive/{victim['database']}/public.device_metrics/"
                         f"{victim['identity']['stem']}.json", victim)

    retained = run_retention(policy)
    held = [line for line in retained.lines if line.startswith("hold") and "device_metrics_d100" in line]
    assert held and "holds the range" in held[0], retained.lines
    assert "public.device_metrics_d100" in relations(database, "device_metrics_%")
    sql(database, "DROP TABLE device_metrics_d100")
    loaded = run_restore_archive(policy, table="device_metrics", start=days_ago(101), end=days_ago(99))
    assert loaded.status == "verification_failed" and loaded.metrics["rows"] == 0
    assert any(line.startswith("mismatch") and "holds the range" in line for line in loaded.lines), loaded.lines
    failed = [check for check in _archive_checks(store, NULL_PROGRESS) if check.status == "fail"]
    assert [check.name for check in failed] == ["public.device_metrics device_metrics_d100"], "verify --archives too"


def test_archives_of_one_range_written_under_two_chunk_names_are_merged_into_one(
        database: str, storage: StorageConfig) -> None:
    """What archiver wrote before identities: a re-created chunk archived under its new name, a
    second file of the same range. verify --archives says so; the next archive merges them."""
    create_device_metrics(database)
    policy = make_policy(database, storage, [table("public.device_metrics", archive_after=30, drop_after=50)])
    store = open_store(storage)
    assert run_archive(policy).status == "ok"
    archived = sum(lake_ids(store).values())
    document = manifests(store)["device_metrics_d100"]
    root = Path(storage.url.removeprefix("file://"))
    legacy_object = first_key(document).replace(".v1.parquet", "_copy.parquet")
    shutil.copy(root / first_key(document), root / legacy_object)
    legacy = {key: value for key, value in document.items()
              if key not in ("identity", "supersedes", "objects", "layout")}
    legacy.update(format_version=1, chunk={**document["chunk"], "name": "device_metrics_d100_restored"},
                  object={**document["objects"][0], "key": legacy_object})
    write_json(store, f"catalog/archive/{document['database']}/public.device_metrics/"
                         f"device_metrics_d100_restored_x_y.json", legacy)
    assert max(lake_ids(store).values()) == 2, "readers see those rows twice"
    flagged = [check for check in _archive_checks(store, NULL_PROGRESS) if check.status == "fail"]
    assert len(flagged) == 1 and "2 archives claim this range" in flagged[0].detail, "verify --archives says so"

    merged = run_archive(policy)
    assert any(line.startswith("merged") for line in merged.lines), merged.lines
    assert max(lake_ids(store).values()) == 1 and sum(lake_ids(store).values()) == archived
    assert legacy_object not in parquet_keys(store)
    assert run_retention(policy).metrics["chunks_dropped"] == 4


def test_restore_archive_plans_against_a_missing_table_and_refuses_a_missing_database(
        database: str, storage: StorageConfig, pg: Any) -> None:
    create_device_metrics(database)
    policy = make_policy(database, storage, [table("public.device_metrics", archive_after=30)])
    assert run_archive(policy).status == "ok"
    other = pg.create_database(f"audit_{database[-8:]}")
    dry = run_restore_archive(policy, table="device_metrics", start=days_ago(101), end=days_ago(99), target=other,
                              dry_run=True)
    assert dry.status == "ok" and "would create it as a plain table" in dry.lines[0], dry.lines
    assert any("would load" in line and "the table 0 in this window" in line for line in dry.lines)
    assert sql(other, "SELECT count(*) FROM pg_class WHERE relname = 'device_metrics'")[0][0] == 0
    directory = _policy_file(storage, database)
    missing = other.replace(f"audit_{database[-8:]}", "no_such_database")
    result = run_cli("--policies", str(directory), "restore-archive", "telemetry", "--table", "device_metrics",
                     "--from", days_ago(101), "--to", days_ago(99), "--target", missing, "--dry-run")
    assert result.code == 2 and "--target" in result.stderr and "does not exist" in result.stderr, result.output


def test_every_archive_object_says_which_range_and_version_it_holds(database: str, storage: StorageConfig) -> None:
    create_device_metrics(database)
    policy = make_policy(database, storage, [table("public.device_metrics", archive_after=30)])
    store = open_store(storage)
    assert run_archive(policy).status == "ok"
    for document in manifests(store).values():
        with store.open_seekable(first_key(document)) as source:
            metadata = {k.decode(): v.decode() for k, v in pq.ParquetFile(source).metadata.metadata.items()}
        assert json.loads(metadata["archiver.identity"])["stem"] == document["identity"]["stem"]
        assert metadata["archiver.version"] == "1" and document["format_version"] == 2


def test_a_restore_archive_killed_while_loading_leaves_nothing_the_next_runs_cannot_repair(
        database: str, storage: StorageConfig) -> None:
    """Issue 10, finding 7: a kill during restore-archive left an empty re-created partition that
    the next archive exported as the range's contents (0 rows over 107,143)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import PROJECT

    sql(database, "CREATE TABLE busy (ts timestamptz NOT NULL, device int, value float8) PARTITION BY RANGE (ts)")
    sql(database, "CREATE TABLE busy_d60 PARTITION OF busy FOR VALUES FROM ((current_date - 60)::timestamptz) "
                  "TO ((current_date - 59)::timestamptz)")
    sql(database, "INSERT INTO busy SELECT (current_date - 60)::timestamptz + g * interval '400 ms', g % 50, g * 0.5 "
                  "FROM generate_series(1, 200000) g")
    policy = make_policy(database, storage, [table("public.busy", archive_after=30, drop_after=50)])
    store = open_store(storage)
    assert run_archive(policy).status == "ok" and run_retention(policy).metrics["chunks_dropped"] == 1
    directory = _policy_file(storage, database)
    (directory / "telemetry.yaml").write_text((directory / "telemetry.yaml").read_text().replace("device_metrics",
                                                                                                "busy"))
    argv = [sys.executable, "-m", "archiver", "--policies", str(directory), "restore-archive", "telemetry",
            "--table", "busy", "--from", days_ago(61), "--to", days_ago(59)]
    process = subprocess.Popen(argv, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(PROJECT)})
    deadline = time.monotonic() + 120
    while not list(store.list("catalog/rehydrated/")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # the record is written: the rows are being loaded
    process.wait()
    for _ in range(100):  # the killed client's backend rolls back its transaction
        if not sql(database, "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'archiver%%' AND "
                             "datname = current_database() AND pid <> pg_backend_pid()"):
            break
        time.sleep(0.1)
    count = sql(database, "SELECT count(*) FROM busy")[0][0]
    assert count in (0, 200000), "a range comes back whole or not at all"
    record = read_json(store, next(iter(store.list("catalog/rehydrated/"))).key)
    assert record["state"] in ("loading", "loaded") and record["archive"]["rows"] == 200000

    again = run_archive(policy)
    assert again.metrics["chunks_archived"] == 0, again.lines
    assert manifests(store)["busy_d60"]["rows"] == 200000 and sum(lake_ids(store, "device").values()) == 200000
    run_retention(policy)
    assert sql(database, "SELECT count(*) FROM busy")[0][0] == 0
    whole = run_restore_archive(policy, table="busy", start=days_ago(61), end=days_ago(59))
    assert whole.status == "ok" and sql(database, "SELECT count(*) FROM busy")[0][0] == 200000


def test_an_upload_left_pending_by_a_killed_export_is_aborted_by_the_next_archive(
        database: str, bucket: str, s3_endpoint: str, s3_client: Any) -> None:
    """A SIGKILLed export cannot abort its multipart upload; S3 keeps (and bills) its parts until
    someone does. The next archive holds the cold-tier lock, so nothing pending there is alive."""
    create_device_metrics(database)
    storage = StorageConfig(url=f"s3://{bucket}/telemetry", endpoint_url=s3_endpoint, region="us-east-1")
    policy = make_policy(database, storage, [table("public.device_metrics", archive_after=30)])
    store = open_store(storage)
    assert run_archive(policy).status == "ok"
    document = manifests(store)["device_metrics_d100"]
    pending = first_key(document).replace(".v1.parquet", ".v2.parquet")
    writer = store.writer(pending, size_hint=64 * 1024 * 1024)
    writer.write(b"\0" * (9 * 1024 * 1024))  # one part uploaded; then the process "dies" (no commit, no abort)
    assert len(s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1

    result = run_archive(policy)
    assert any(line.startswith("removed") and pending in line and "unfinished upload" in line
               for line in result.lines), result.lines
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert first_key(manifests(store)["device_metrics_d100"]) == first_key(document)
