"""Prune while a backup is being written, and pending uploads of dead runs.

Real runs: the backup CLI in a subprocess, kept mid-upload by a pausing TCP proxy in front of
moto's S3 server (or SIGKILLed there), prune in-process against moto directly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from archiver.backup import manifest as backup_manifest
from archiver.backup.manifest import backup_manifest_key, backup_prefix, dump_key, list_backups, new_id
from archiver.backup.prune import run_prune
from archiver.common.timeutil import isoformat, utcnow
from archiver.errors import ExitCode, StoreError
from archiver.pg.scratch import LocalPostgres
from archiver.storage.base import IncompleteWrite
from archiver.storage.documents import read_json, write_json
from archiver.storage.leases import BACKUP_LEASE_PREFIX, LOCKS_PREFIX, StoreLease
from archiver.storage.local import LocalStore
from archiver.storage.s3 import S3Store
from archiver.storage.uploads import abort_dead_uploads
from tests.backup_helpers import fake_backup, live_stats, load_policy, manifest_stats, policy_path, write_policy
from tests.helpers import PROJECT, run_cli
from tests.netfault import PausingProxy, StallingProxy, inject_s3_errors
from tests.storage_helpers import MiB

PAUSE_AFTER = 10 * MiB  # the globals object and the dump's first 8 MiB part go through, then the upload waits


@contextmanager
def backup_held_mid_upload(tmp_path: Path, source: str, s3_store: S3Store,
                           s3_endpoint: str) -> Iterator[tuple[subprocess.Popen[str], PausingProxy, str]]:
    """``archiver backup app`` through a proxy that holds it mid-upload; (process, proxy, its backup id)."""
    upstream = urlsplit(s3_endpoint)
    with PausingProxy(upstream.hostname or "127.0.0.1", upstream.port or 80, PAUSE_AFTER) as proxy:
        policies = policy_path(tmp_path / "via-proxy", source, s3_store, proxy.url).parent
        process = subprocess.Popen([sys.executable, "-m", "archiver", "--policies", str(policies), "backup", "app"],
                                   cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # a bounded wait for the fault, not a timing assertion: the upload then waits for resume()
            assert proxy.paused.wait(timeout=300), "the backup never reached the pause point"
            assert process.poll() is None
            leases = [info.key for info in s3_store.list(f"{LOCKS_PREFIX}{BACKUP_LEASE_PREFIX}")]
            assert len(leases) == 1, leases
            yield process, proxy, leases[0][len(LOCKS_PREFIX) + len(BACKUP_LEASE_PREFIX):-len(".json")]
        finally:
            proxy.resume()
            if process.poll() is None:
                process.wait(timeout=600)


def test_prune_leaves_a_running_backup_alone_however_old_and_its_manifest_then_holds(
        tmp_path: Path, source: str, s3_store: S3Store, s3_endpoint: str, previous: str,
        pg: LocalPostgres) -> None:
    policy = load_policy(policy_path(tmp_path, source, s3_store, s3_endpoint))
    with backup_held_mid_upload(tmp_path, source, s3_store, s3_endpoint) as (process, proxy, running):
        written = [info.key for info in s3_store.list(backup_prefix(running))]
        assert written and all(key.endswith("globals.sql") for key in written)
        assert [upload["Key"].endswith("dump.pgdump") for upload in s3_store.pending_uploads()] == [True]

        # three days later by the retention clock, far past orphan_grace (1d): only the lease says "running"
        result = run_prune(policy, store=s3_store, now=utcnow() + timedelta(days=3))
        assert [info.key for info in s3_store.list(backup_prefix(running))] == written
        assert len(s3_store.pending_uploads()) == 1
        kept = [line for line in result.lines if f"backups/{running}/" in line]
        assert len(kept) == 2, result.lines  # the globals object and the pending dump upload
        assert all(f"keep: backup {running} is running (lease locks/backup-{running}.json held by archiver backup app"
                   in line for line in kept), kept
        assert result.metrics["leftovers_deleted"] == 0
        proxy.resume()
        out, err = process.communicate(timeout=600)
    assert process.returncode == 0, out + err

    document = read_json(s3_store, backup_manifest_key(running))
    for entry in document["objects"].values():
        info = s3_store.head(entry["key"])
        assert info is not None and info.size == entry["size"], entry["key"]
    assert s3_store.head(f"{LOCKS_PREFIX}{BACKUP_LEASE_PREFIX}{running}.json") is None  # released
    name = f"restored_{uuid.uuid4().hex[:10]}"
    restored = run_cli("--policies", str(tmp_path / "policies"), "restore", "app", "--backup", running,
                       "--target", pg.dsn(name), "--yes")
    assert restored.code == 0, restored.output
    assert live_stats(pg.dsn(name)) == manifest_stats(document)


def test_a_backup_whose_object_vanished_before_its_manifest_writes_none(
        tmp_path: Path, source: str, s3_store: S3Store, s3_endpoint: str, previous: str) -> None:
    with backup_held_mid_upload(tmp_path, source, s3_store, s3_endpoint) as (process, proxy, running):
        (globals_key,) = [info.key for info in s3_store.list(backup_prefix(running))]
        s3_store.delete(globals_key)  # what an older archiver's prune (or an operator) did to a running backup
        proxy.resume()
        out, err = process.communicate(timeout=600)
    assert process.returncode == ExitCode.TASK_FAILED, out + err
    assert f"{globals_key} is missing before its manifest was written" in err and "no manifest written" in err
    assert s3_store.head(backup_manifest_key(running)) is None
    assert [entry.id for entry in list_backups(s3_store)] == [previous]
    assert list(s3_store.list(backup_prefix(running))) == [] and s3_store.pending_uploads() == []


def sigkilled_backup_upload(tmp_path: Path, source: str, s3_store: S3Store, s3_endpoint: str) -> str:
    """A backup SIGKILLed mid-upload, as a vanished pod leaves it; the key of its pending upload."""
    upstream = urlsplit(s3_endpoint)
    with StallingProxy(upstream.hostname or "127.0.0.1", upstream.port or 80,
                       stall_after_request_bytes=PAUSE_AFTER) as proxy:
        policies = policy_path(tmp_path / "killed", source, s3_store, proxy.url).parent
        process = subprocess.Popen([sys.executable, "-m", "archiver", "--policies", str(policies), "backup", "app"],
                                   cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            assert proxy.stalled.wait(timeout=300), "the backup never reached the stall point"
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    (upload,) = s3_store.pending_uploads()
    return str(upload["Key"])[len(s3_store.prefix) + 1:]


def test_abort_dead_uploads_aborts_what_a_killed_run_left_and_keeps_what_is_protected(
        tmp_path: Path, source: str, s3_store: S3Store, s3_endpoint: str) -> None:
    dead_key = sigkilled_backup_upload(tmp_path, source, s3_store, s3_endpoint)
    live = s3_store.writer("backups/live/dump.pgdump", size_hint=100 * MiB)
    live.write(os.urandom(9 * MiB))  # a multipart upload in progress in this process
    try:
        assert sorted(u["Key"].rsplit("/", 2)[-2] for u in s3_store.pending_uploads()) == \
            sorted([dead_key.split("/")[1], "live"])

        def protect(write: object) -> str | None:
            return "this test's own writer" if write.key == "backups/live/dump.pgdump" else None

        failing = S3Store(s3_store.bucket, s3_store.prefix, endpoint_url=s3_endpoint, region="us-east-1",
                          max_attempts=1)
        inject_s3_errors(failing, "ListMultipartUploads", lambda n: True)
        with pytest.raises(StoreError, match="cannot list pending uploads"):
            abort_dead_uploads(failing, "backups/", older_than=utcnow(), protect=protect)
        assert len(s3_store.pending_uploads()) == 2  # a failed listing aborts nothing

        dry = abort_dead_uploads(s3_store, "backups/", older_than=utcnow(), protect=protect, dry_run=True)
        assert {(v.key, v.abort) for v in dry} == {(dead_key, True), ("backups/live/dump.pgdump", False)}
        assert len(s3_store.pending_uploads()) == 2

        done = abort_dead_uploads(s3_store, "backups/", older_than=utcnow(), protect=protect)
        assert [v.reason for v in done if not v.abort] == ["this test's own writer"]
        assert [u["Key"] for u in s3_store.pending_uploads()] == [f"{s3_store.prefix}/backups/live/dump.pgdump"]
    finally:
        live.abort()
    assert s3_store.pending_uploads() == []


def test_abort_dead_uploads_keeps_writes_started_after_the_cutoff_and_works_on_the_file_store(
        tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    dead = store.writer("archive/db/public.t/year=2026/part.parquet")
    dead.write(b"x" * 1000)  # left as a SIGKILLed writer leaves it: a temp file, never renamed
    cutoff = utcnow() + timedelta(seconds=1)
    assert [(v.key, v.abort) for v in abort_dead_uploads(store, "archive/", older_than=cutoff - timedelta(hours=1))] \
        == [("archive/db/public.t/year=2026/part.parquet", False)]
    assert len(store.incomplete_writes("archive/")) == 1
    verdicts = abort_dead_uploads(store, "archive/", older_than=cutoff)
    assert [(v.key, v.abort) for v in verdicts] == [("archive/db/public.t/year=2026/part.parquet", True)]
    assert store.incomplete_writes("archive/") == [] and list(store.list("archive/")) == []


class FinishingDuringPrune(LocalStore):
    """A file store on which a backup finishes at the worst moment for prune: right after prune
    listed its objects as orphans (the next call prune makes is the pending-uploads listing).

    This hook is the only way to put the finishing backup's two steps (manifest written, lease
    released) at exactly that point of a real prune run."""

    def __init__(self, root: Path, finish: Callable[[], None]) -> None:
        super().__init__(root)
        self._finish: Callable[[], None] | None = finish

    def incomplete_writes(self, prefix: str = "") -> list[IncompleteWrite]:
        if self._finish is not None:
            finish, self._finish = self._finish, None
            finish()
        return super().incomplete_writes(prefix)


@pytest.mark.parametrize("with_lease", [True, False], ids=["leased backup", "backup of an older archiver"])
def test_a_backup_that_finishes_while_prune_runs_keeps_every_object(tmp_path: Path, with_lease: bool) -> None:
    now = utcnow()
    plain = LocalStore(tmp_path / "store")
    previous = fake_backup(plain, now - timedelta(days=1))
    started = now - timedelta(hours=30)  # a long backup: older than orphan_grace 1d by its id
    running = new_id(started)
    objects = {role: plain.put_bytes(key, f"{role} of {running}".encode() * 50)
               for role, key in (("dump", dump_key(running, ".zst")),
                                 ("globals", backup_manifest.globals_key(running, ".zst")))}
    for r in objects.values():  # written when the backup wrote them, 30 hours ago
        os.utime(plain.path_of(r.key), (started.timestamp(), started.timestamp()))
    lease = StoreLease(plain, f"{BACKUP_LEASE_PREFIX}{running}", "archiver backup app (this test)")
    if with_lease:
        lease.acquire()

    def finish() -> None:
        write_json(plain, backup_manifest_key(running), {
            "format_version": 1, "kind": "backup", "id": running, "policy": "app", "database": {"name": "app"},
            "snapshot_time": isoformat(started), "started_at": isoformat(started), "finished_at": isoformat(now),
            "objects": {role: {"key": r.key, "size": r.size, "sha256": r.sha256, "codec": "zstd"}
                        for role, r in objects.items()}})
        if with_lease:
            lease.release()

    store = FinishingDuringPrune(tmp_path / "store", finish)
    path = write_policy(tmp_path / "policies", "app", "host=127.0.0.1 dbname=app", store.url,
                        backup={"retention": {"keep_last": 5}})
    result = run_prune(load_policy(path), store=store, now=now)
    assert result.metrics["leftovers_deleted"] == 0, result.lines
    for r in objects.values():
        assert plain.head(r.key) is not None and plain.head(r.key).size == r.size  # type: ignore[union-attr]
    assert [entry.id for entry in list_backups(plain)] == [previous, running]
    verdicts = [line for line in result.lines if f"backups/{running}/" in line]
    assert len(verdicts) == 2
    if with_lease:  # decided from the lease read before the listing
        assert all(f"keep: backup {running} is running" in line for line in verdicts), verdicts
    else:  # decided "delete" from the listing; the manifest found right before deleting saved it
        assert all("delete: older than orphan_grace 1d" in line for line in verdicts), verdicts
