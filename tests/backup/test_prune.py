"""``prune``: retention applied to a real store (moto over HTTP, and the file store)."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from archiver.backup.manifest import (
    BACKUPS_PREFIX,
    backup_id_of,
    backup_manifest_key,
    backup_prefix,
    dump_key,
    globals_key,
    list_backups,
    new_id,
    verification_key,
)
from archiver.backup.prune import run_prune
from archiver.common.timeutil import utcnow
from archiver.errors import TaskFailed
from archiver.storage.base import Store
from archiver.storage.local import TEMP_MARKER, LocalStore
from archiver.storage.s3 import S3Store
from tests.backup_helpers import fake_backup, load_policy, write_policy
from tests.helpers import run_cli

RETENTION = {"keep_last": 2, "keep_daily": 5, "keep_weekly": 3}




def daily_backups(store: Store, days: int, now: datetime) -> list[str]:
    today = now.replace(hour=2, minute=0, second=0, microsecond=0)
    if today > now:
        today -= timedelta(days=1)
    return [fake_backup(store, today - timedelta(days=i)) for i in range(days)]


def ids_under(store: Store) -> set[str]:
    return {backup_id_of(info.key) or "" for info in store.list(BACKUPS_PREFIX)}


def prune_policy(tmp_path: Path, store: Store, endpoint: str | None, **retention: Any) -> Path:
    url = store.url
    return write_policy(tmp_path / "policies", "app", "host=127.0.0.1 dbname=app", url, endpoint_url=endpoint,
                        backup={"retention": retention or RETENTION})


def decisions_of(output: str) -> dict[str, str]:
    found = {}
    for line in output.splitlines():
        match = re.match(r"^(\d{8}T\d{6}Z-[0-9a-f]{4})  \S+ \S+  ((?:keep|delete): .*)$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def test_prune_end_to_end_on_s3(tmp_path: Path, s3_store: S3Store, s3_endpoint: str) -> None:
    now = utcnow()
    ids = daily_backups(s3_store, 40, now)
    verified_old = fake_backup(s3_store, now - timedelta(days=60), verified="passed")
    failed_newer = fake_backup(s3_store, now - timedelta(days=45), verified="failed")
    orphan_id = new_id(now - timedelta(minutes=5))  # a run in progress: data, no manifest yet
    s3_store.put_bytes(globals_key(orphan_id, ".zst"), b"roles")
    path = prune_policy(tmp_path, s3_store, s3_endpoint)
    before = ids_under(s3_store)

    dry = run_cli("--policies", str(path.parent), "prune", "app", "--dry-run")
    assert dry.code == 0, dry.stderr
    decided = decisions_of(dry.stdout)
    assert set(decided) == set(ids) | {verified_old, failed_newer}  # every backup, with a reason
    assert decided[ids[0]] == "keep: last #1, daily #1, weekly #1"
    assert decided[ids[4]].startswith("keep: daily #5")
    assert decided[verified_old] == "keep: newest verified backup"
    assert decided[failed_newer] == "delete: beyond keep_weekly 3"
    assert decided[ids[-1]] == "delete: beyond keep_weekly 3"
    assert f"orphan  {globals_key(orphan_id, '.zst')}" in dry.stdout and "younger than orphan_grace 1d" in dry.stdout
    doomed = {backup_id for backup_id, text in decided.items() if text.startswith("delete")}
    assert 25 < len(doomed) < 40
    assert "dry run:" in dry.stderr and f"would delete {len(doomed)}" in dry.stderr
    assert ids_under(s3_store) == before  # a dry run changes nothing

    real = run_cli("--policies", str(path.parent), "prune", "app")
    assert real.code == 0, real.stderr
    assert decisions_of(real.stdout) == decided
    assert ids_under(s3_store) == before - doomed
    listed = json.loads(run_cli("--policies", str(path.parent), "backups", "list", "app", "--json").stdout)["backups"]
    assert {b["id"] for b in listed} == set(decided) - doomed
    assert s3_store.head(globals_key(orphan_id, ".zst")) is not None


def test_prune_deletes_the_manifest_before_the_data(s3_store: S3Store, tmp_path: Path, s3_endpoint: str) -> None:
    now = utcnow()
    ids = daily_backups(s3_store, 4, now)
    deleted: list[str] = []

    def record(request: Any, **_: Any) -> None:
        deleted.append(request.url.split(f"/{s3_store.prefix}/", 1)[1])

    s3_store.client.meta.events.register("before-send.s3.DeleteObject", record)
    result = run_prune(load_policy(prune_policy(tmp_path, s3_store, s3_endpoint, keep_last=1)), store=s3_store, now=now)
    assert result.metrics["deleted"] == 3
    for backup_id in ids[1:]:
        mine = [key for key in deleted if key.startswith(backup_prefix(backup_id))]
        assert mine[0] == backup_manifest_key(backup_id)
        assert sorted(mine[1:]) == sorted([dump_key(backup_id, ".zst"), globals_key(backup_id, ".zst"),
                                           verification_key(backup_id)])
    assert ids_under(s3_store) == {ids[0]}


def test_prune_refuses_an_empty_listing(tmp_path: Path, s3_store: S3Store, s3_endpoint: str) -> None:
    s3_store.put_bytes("backups/unrelated.txt", b"not a backup")
    path = prune_policy(tmp_path, s3_store, s3_endpoint)
    result = run_cli("--policies", str(path.parent), "prune", "app")
    assert result.code == 1
    assert f"refusing to prune app: no backups found under {s3_store.url}/backups/" in result.stderr
    assert s3_store.head("backups/unrelated.txt") is not None


def test_prune_refuses_when_listing_fails(tmp_path: Path, s3_store: S3Store, s3_endpoint: str) -> None:
    ids = daily_backups(s3_store, 5, utcnow())
    failing = S3Store(s3_store.bucket, s3_store.prefix, endpoint_url=s3_endpoint, region="us-east-1", max_attempts=1)

    def fail(request: Any, **_: Any) -> AWSResponse:
        return AWSResponse(request.url, 503, {}, _Raw(b"<Error><Code>SlowDown</Code><Message>x</Message></Error>"))

    failing.client.meta.events.register("before-send.s3.ListObjectsV2", fail)
    with pytest.raises(TaskFailed, match="refusing to prune app: listing .* failed"):
        run_prune(load_policy(prune_policy(tmp_path, s3_store, s3_endpoint, keep_last=1)), store=failing)
    assert ids_under(s3_store) == set(ids)
    missing_bucket = write_policy(tmp_path / "other", "app", "dbname=app", "s3://no-such-bucket-here/app",
                                  endpoint_url=s3_endpoint, backup={"retention": {"keep_last": 1}})
    result = run_cli("--policies", str(missing_bucket.parent), "prune", "app")
    # the run stops at its first store call (taking the prune lease), before any decision
    assert result.code == 1 and "locks/prune.json" in result.stderr and "bucket does not exist (permanent" in result.stderr


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Any:
        yield self._body


def test_prune_needs_retention_rules(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "app", "dbname=app", f"file://{tmp_path}/store")
    result = run_cli("--policies", str(path), "prune", "app")
    assert result.code == 2 and "has no backup.retention rules" in result.stderr


def test_file_store_leftovers_go_only_after_the_grace_period(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    now = utcnow()
    (kept_id,) = daily_backups(store, 1, now)
    old_id, young_id = new_id(now - timedelta(days=3)), new_id(now - timedelta(hours=1))
    old_temp = store.root / "backups" / old_id / f"{TEMP_MARKER}dump.pgdump.zst.{'a' * 32}"
    young_temp = store.root / "backups" / young_id / f"{TEMP_MARKER}dump.pgdump.zst.{'b' * 32}"
    for path, age in ((old_temp, timedelta(days=3)), (young_temp, timedelta(hours=1))):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"partial dump")
        stamp = (now - age).timestamp()
        os.utime(path, (stamp, stamp))
    old_orphan = globals_key(old_id, ".zst")
    store.put_bytes(old_orphan, b"roles")
    stamp = (now - timedelta(days=3)).timestamp()
    os.utime(store.path_of(old_orphan), (stamp, stamp))

    policy = load_policy(write_policy(tmp_path / "p", "app", "dbname=app", store.url, backup={"retention": {"keep_last": 5}}))
    result = run_prune(policy, store=store, now=now)
    assert not old_temp.exists() and store.head(old_orphan) is None
    assert young_temp.exists()
    assert any(line.startswith(f"orphan  backups/{young_id}/dump.pgdump.zst  (temp file") and "keep: younger" in line
               for line in result.lines)
    assert result.metrics["leftovers_deleted"] == 2
    assert [entry.id for entry in list_backups(store)] == [kept_id]


def test_s3_incomplete_writes_are_listed_and_discarded(s3_store: S3Store) -> None:
    # What a SIGKILLed writer leaves: a multipart upload that was started and never finished.
    upload = s3_store.client.create_multipart_upload(Bucket=s3_store.bucket,
                                                     Key=s3_store.object_key("backups/20260101T000000Z-abcd/dump.pgdump"))
    s3_store.client.create_multipart_upload(Bucket=s3_store.bucket, Key=s3_store.object_key("archive/x.parquet"))
    (pending,) = s3_store.incomplete_writes("backups/")
    assert pending.key == "backups/20260101T000000Z-abcd/dump.pgdump"
    assert pending.description == f"multipart upload {upload['UploadId']}"
    s3_store.discard_incomplete(pending)
    s3_store.discard_incomplete(pending)  # already gone: not an error
    assert s3_store.incomplete_writes("backups/") == []
    assert [u["Key"] for u in s3_store.pending_uploads()] == [s3_store.object_key("archive/x.parquet")]
