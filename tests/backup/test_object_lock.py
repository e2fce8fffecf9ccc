"""S3 Object Lock on moto's server (a bucket created with ObjectLockEnabledForBucket): every backup object and
manifest is put locked, prune keeps locked backups and says until when, the lock is real (a versioned delete
through boto3 fails), and once the lock has ended (an injected clock) prune proceeds."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
import yaml

from archiver.backup.manifest import backup_manifest_key, list_backups
from archiver.backup.prune import run_prune
from archiver.backup.task import run_backup
from archiver.pg.connect import execute
from archiver.storage.backends import open_store
from archiver.storage.base import Store
from tests.backup_helpers import load_policy, read_manifest, write_policy
from tests.helpers import run_cli


@pytest.fixture
def locked_bucket(s3_client: Any) -> str:
    name = f"locked-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


@pytest.fixture
def small_database(database: str) -> str:
    execute(database, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, md5(i::text) "
                      "FROM generate_series(1, 1000) AS i")
    return database


def locked_policy(tmp_path: Path, dsn: str, bucket: str, endpoint: str, **lock: Any) -> Path:
    path = write_policy(tmp_path / "policies", "app", dsn, f"s3://{bucket}/app", endpoint_url=endpoint,
                        backup={"retention": {"keep_last": 1, "orphan_grace": "1h"}})
    document = yaml.safe_load(path.read_text())
    document["storage"]["object_lock"] = {"mode": "governance", "retain": "1d", **lock}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_prune_keeps_locked_backups_the_lock_is_real_and_an_ended_lock_lets_prune_proceed(
        tmp_path: Path, small_database: str, locked_bucket: str, s3_endpoint: str, s3_client: Any) -> None:
    policy = load_policy(locked_policy(tmp_path, small_database, locked_bucket, s3_endpoint))
    store: Store = open_store(policy.storage)
    before = datetime.now(UTC)
    old = str(run_backup(policy, store=store).data["id"])
    new = str(run_backup(policy, store=store).data["id"])

    manifest = read_manifest(store, old)
    for key in (manifest["objects"]["dump"]["key"], manifest["objects"]["globals"]["key"], backup_manifest_key(old)):
        head = s3_client.head_object(Bucket=locked_bucket, Key=f"app/{key}")
        assert head["ObjectLockMode"] == "GOVERNANCE"
        until = head["ObjectLockRetainUntilDate"]
        assert before + timedelta(hours=23) < until < datetime.now(UTC) + timedelta(days=1, minutes=1)
    store.put_bytes("locks/backup-probe.json", b"{}")  # leases and run records are rewritten and deleted: never locked
    assert "ObjectLockMode" not in s3_client.head_object(Bucket=locked_bucket, Key="app/locks/backup-probe.json")

    kept = run_prune(policy, store=store)
    old_line = next(line for line in kept.lines if line.startswith(old))
    assert "keep: object locked until " in old_line and "retention alone would delete it" in old_line
    assert [entry.id for entry in list_backups(store)] == [new, old]
    assert kept.metrics["deleted"] == 0

    dump_key = f"app/{manifest['objects']['dump']['key']}"
    version = s3_client.head_object(Bucket=locked_bucket, Key=dump_key)["VersionId"]
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        s3_client.delete_object(Bucket=locked_bucket, Key=dump_key, VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert s3_client.head_object(Bucket=locked_bucket, Key=dump_key)["ContentLength"] == manifest["objects"]["dump"]["size"]

    later = run_prune(policy, store=store, now=datetime.now(UTC) + timedelta(days=2))
    old_line = next(line for line in later.lines if line.startswith(old))
    assert old_line.split("  ", 2)[2].startswith("delete: ")
    assert later.metrics["deleted"] == 1
    assert [entry.id for entry in list_backups(store)] == [new]


def test_object_lock_on_a_bucket_without_it_is_refused_before_anything_is_written(
        tmp_path: Path, small_database: str, bucket: str, s3_endpoint: str, s3_client: Any) -> None:
    path = locked_policy(tmp_path, small_database, bucket, s3_endpoint)
    result = run_cli("--policies", str(path.parent), "backup", "app")
    assert result.code == 2, result.output
    assert f"storage.object_lock is set but bucket '{bucket}' (s3://{bucket}/app) does not have Object Lock enabled" \
        in result.stderr
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_status_plan_and_metrics_say_whether_a_policy_encrypts_and_locks(
        tmp_path: Path, small_database: str, locked_bucket: str, s3_endpoint: str) -> None:
    import json

    import pyrage

    from archiver.ops.gauges import set_schedules
    from archiver.ops.metrics import Metrics
    from archiver.storage.agekeys import fingerprint

    recipient = str(pyrage.x25519.Identity.generate().to_public())
    path = locked_policy(tmp_path, small_database, locked_bucket, s3_endpoint, retain="2d")
    document = yaml.safe_load(path.read_text())
    document["encryption"] = {"recipients": [recipient]}
    document["backup"]["retention"] = {"keep_daily": 7}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    policy = load_policy(path)
    run_backup(policy, store=open_store(policy.storage))

    status = run_cli("--policies", str(path.parent), "status", "--json", "--no-database")
    (entry,) = json.loads(status.stdout)["policies"]
    assert entry["protection"] == {"backups_encrypted": True, "archives_encrypted": False,
                                   "recipients": [fingerprint(recipient)],
                                   "object_lock": {"mode": "governance", "retain_seconds": 2 * 86400}}
    text = run_cli("--policies", str(path.parent), "status", "--no-database")
    assert "app: protection: backups encrypted (age), archives not encrypted, object lock governance 2d" in text.stdout

    metrics = Metrics()
    set_schedules(metrics, policy)
    sample = metrics.registry.get_sample_value
    assert sample("archiver_policy_protected", {"policy": "app", "protection": "backup_encryption"}) == 1
    assert sample("archiver_policy_protected", {"policy": "app", "protection": "archive_encryption"}) == 0
    assert sample("archiver_policy_protected", {"policy": "app", "protection": "object_lock"}) == 1


def test_cold_file_expiry_keeps_locked_archives_and_expires_them_once_the_lock_ended(
        database: str, locked_bucket: str, s3_endpoint: str, s3_client: Any) -> None:
    from archiver.coldtier.archive import run_archive
    from archiver.coldtier.retention import run_retention
    from archiver.policy.protect import ObjectLockConfig
    from archiver.policy.schema import StorageConfig
    from tests.coldtier_helpers import create_readings, manifests, policy_for

    create_readings(database)
    storage = StorageConfig(url=f"s3://{locked_bucket}/telemetry", endpoint_url=s3_endpoint, region="us-east-1",
                            object_lock=ObjectLockConfig(mode="governance", retain=timedelta(days=1)))
    base = policy_for(database, storage)
    policy = base.__class__(**{**base.__dict__, "archive": base.archive.__class__(
        **{**base.archive.__dict__, "cold_retention": timedelta(days=55)})})
    store = open_store(storage)
    assert run_archive(policy).status == "ok"
    documents = manifests(store)
    key = documents["readings_d90"]["objects"][0]["key"]
    assert s3_client.head_object(Bucket=locked_bucket, Key=f"telemetry/{key}")["ObjectLockMode"] == "GOVERNANCE"

    assert run_retention(policy).metrics["chunks_dropped"] == 4  # expiry waits for the next run: the rows were there
    kept = run_retention(policy)
    locked = [line for line in kept.lines if "object locked until" in line]
    assert len(locked) == 4, kept.lines  # every range is past cold_retention (55d), every object locked for a day
    assert sorted(manifests(store)) == sorted(documents)

    later = run_retention(policy, now=datetime.now(UTC) + timedelta(days=2))
    assert not [line for line in later.lines if "object locked until" in line], later.lines
    assert manifests(store) == {}
