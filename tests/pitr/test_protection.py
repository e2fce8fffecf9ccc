"""Object Lock on the point-in-time archive (moto's server, a bucket created with ObjectLockEnabledForBucket):
base backups and WAL are put locked, prune keeps locked base backups and WAL and says until when, never opens
a gap in the WAL it keeps, the lock is real, and an injected clock past the lock lets prune proceed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import botocore.exceptions
import pytest

from archiver.pg.connect import execute
from archiver.pitr.catalog import base_manifest_key, scan_base_backups, server_manifest_key
from archiver.pitr.prune import run_pitr_prune
from archiver.pitr.state import load_state
from archiver.pitr.walstore import scan_wal
from archiver.storage.backends import open_store
from archiver.storage.base import Store
from tests.backup_helpers import load_policy
from tests.pitr_helpers import Rig, pitr_rig

LOCK = {"mode": "governance", "retain": "1d"}


@pytest.fixture
def locked_rig(s3_client: Any, s3_endpoint: str) -> Iterator[Rig]:
    bucket = f"locked-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    storage = {"url": f"s3://{bucket}/app", "endpoint_url": s3_endpoint, "region": "us-east-1", "object_lock": LOCK}
    with pitr_rig("archive_command", storage, retention={"keep_last": 1}) as rig:
        execute(rig.dsn, "CREATE TABLE markers (name text PRIMARY KEY)")
        yield rig


def _store(rig: Rig) -> Store:
    return open_store(load_policy(rig.policy_path).storage)


def _head(s3_client: Any, rig: Rig, key: str) -> dict[str, Any]:
    bucket = str(rig.storage["url"]).split("/")[2]
    return dict(s3_client.head_object(Bucket=bucket, Key=f"app/{key}"))


def test_base_backups_and_wal_are_locked_and_prune_keeps_them_until_the_lock_ends(
        locked_rig: Rig, s3_client: Any) -> None:
    rig, before = locked_rig, datetime.now(UTC)
    old = rig.cli("basebackup", "app")
    assert old.code == 0, old.output
    old_id = old.stdout.strip()
    for marker in ("A", "B"):
        execute(rig.dsn, f"INSERT INTO markers VALUES ('{marker}')")
        rig.switch_and_wait()
    new = rig.cli("basebackup", "app")
    assert new.code == 0, new.output
    new_id = new.stdout.strip()
    execute(rig.dsn, "INSERT INTO markers VALUES ('C')")
    rig.switch_and_wait()
    store = _store(rig)

    (old_base,) = [entry for entry in scan_base_backups(store).backups if entry.id == old_id]
    wal = scan_wal(store)
    keys = [old_base.manifest["objects"]["base"]["key"], server_manifest_key(old_id), base_manifest_key(old_id),
            *(item.key for item in wal)]
    for key in keys:
        head = _head(s3_client, rig, key)
        assert head["ObjectLockMode"] == "GOVERNANCE", key
        assert before + timedelta(hours=23) < head["ObjectLockRetainUntilDate"] < datetime.now(UTC) + timedelta(days=1, minutes=1)

    kept = rig.cli("prune", "app")
    assert kept.code == 0, kept.output
    old_line = next(line for line in kept.stdout.splitlines() if f"base {old_id}" in line)
    assert "keep: object locked until " in old_line and "retention alone would delete it" in old_line
    assert {entry.id for entry in scan_base_backups(store).backups} == {old_id, new_id}
    assert [item.key for item in scan_wal(store)] == [item.key for item in wal], "the locked base backup needs them"

    tar = f"app/{old_base.manifest['objects']['base']['key']}"
    version = _head(s3_client, rig, old_base.manifest["objects"]["base"]["key"])["VersionId"]
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        s3_client.delete_object(Bucket=str(rig.storage["url"]).split("/")[2], Key=tar, VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"

    # one WAL file older than the newer base backup's start stays locked past the injected clock: it and every
    # later file stay (no gap), only the files before it go
    (new_base,) = [entry for entry in scan_base_backups(store).backups if entry.id == new_id]
    older = sorted((item for item in wal if item.file.kind != "history" and item.file.segno() < new_base.start_segno),
                   key=lambda item: (item.file.segno(), item.completed))
    assert len(older) >= 2, [item.name for item in older]
    later, held = datetime.now(UTC) + timedelta(days=2), older[1]
    s3_client.put_object_retention(Bucket=str(rig.storage["url"]).split("/")[2], Key=f"app/{held.key}",
                                   Retention={"Mode": "GOVERNANCE", "RetainUntilDate": later + timedelta(days=3)})
    policy = load_policy(rig.policy_path)
    result = run_pitr_prune(policy, dry_run=False, store=store, now=later)
    assert [entry.id for entry in scan_base_backups(store).backups] == [new_id]
    assert next(d for d in result.data["decisions"] if d["id"] == old_id)["keep"] is False
    assert result.data["wal_deleted"] == [older[0].key]
    assert any(line.startswith("wal  ") and "keep: object locked until " in line and held.name in line
               for line in result.lines), result.lines
    remaining = {item.key for item in scan_wal(store)}
    assert {item.key for item in wal} - remaining == {older[0].key}
    state = load_state(store)
    assert state.window.gaps() == [] and [span.restorable for span in state.window.spans] == [True]
