"""A backup that fails leaves nothing behind: no manifest, no pending upload, earlier backups intact.

Every fault is real: pg_dump blocked by a lock, pg_dump SIGKILLed mid-stream, its server
connection terminated, S3 failing (botocore ``before-send`` hook, as moto has no fault
injection), and the archiver process itself SIGKILLed while an upload hangs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from archiver.backup.manifest import BACKUPS_PREFIX, backup_prefix, list_backups
from archiver.backup.prune import run_prune
from archiver.backup.task import run_backup
from archiver.common.timeutil import utcnow
from archiver.errors import ExitCode, ExternalCommandFailed, StoreError
from archiver.pg.connect import query
from archiver.pg.scratch import LocalPostgres
from archiver.storage.s3 import S3Store
from tests.backup_helpers import live_stats, load_policy, manifest_stats, policy_path, read_manifest, restore_backup
from tests.helpers import PROJECT, run_cli
from tests.netfault import StallingProxy, inject_s3_errors
from tests.storage_helpers import MiB


def assert_only(store: S3Store, previous_id: str, instance: LocalPostgres) -> None:
    """Nothing of the failed run remains; the earlier backup is listed and restores."""
    keys = [info.key for info in store.list(BACKUPS_PREFIX)]
    assert keys and all(key.startswith(backup_prefix(previous_id)) for key in keys), keys
    assert store.pending_uploads() == []
    assert [entry.id for entry in list_backups(store)] == [previous_id]
    restored = restore_backup(instance, store, previous_id)
    assert live_stats(restored) == manifest_stats(read_manifest(store, previous_id))


class AfterBytes:
    """A Progress that runs ``action`` once, when ``threshold`` bytes of the dump have streamed."""

    def __init__(self, threshold: int, action: Callable[[], None]) -> None:
        self.threshold = threshold
        self.action = action
        self.seen = 0
        self.fired = False

    def phase(self, name: str, total: int | None = None, unit: str = "B") -> None:
        return None

    def advance(self, amount: int) -> None:
        self.seen += amount
        if not self.fired and self.seen >= self.threshold:
            self.fired = True
            self.action()

    def done(self) -> None:
        return None


def child_pids(name: str) -> list[int]:
    """Our child processes called ``name`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if comm == name and ppid == os.getpid():
            found.append(int(entry.name))
    return found


def test_pg_dump_exiting_non_zero_fails_the_backup(tmp_path: Path, source: str, s3_store: S3Store, s3_endpoint: str,
                                                   previous: str, pg: LocalPostgres) -> None:
    policy = load_policy(policy_path(tmp_path, source, s3_store, s3_endpoint, pg_dump={"lock_wait_timeout": "1s"}))
    with psycopg.connect(source) as blocker:
        blocker.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")  # pg_dump cannot get its lock
        with pytest.raises(ExternalCommandFailed) as failure:
            run_backup(policy, store=s3_store)
    assert failure.value.exit_code == ExitCode.TASK_FAILED and failure.value.returncode == 1
    message = str(failure.value)
    assert message.startswith("pg_dump exited 1: backup ") and "of database" in message
    # pg_dump's own stderr tail (its --lock-wait-timeout is a statement timeout on LOCK TABLE)
    assert "canceling statement due to statement timeout" in message
    assert "LOCK TABLE public.readings IN ACCESS SHARE MODE" in message
    assert "nothing of this backup was kept" in message
    assert_only(s3_store, previous, pg)


def test_pg_dump_killed_mid_stream_aborts_the_upload(tmp_path: Path, source: str, s3_store: S3Store,
                                                     s3_endpoint: str, previous: str, pg: LocalPostgres) -> None:
    policy = load_policy(policy_path(tmp_path, source, s3_store, s3_endpoint))
    uploads_when_killed: list[int] = []

    def kill_pg_dump() -> None:
        (pid,) = child_pids("pg_dump")
        uploads_when_killed.append(len(s3_store.pending_uploads()))
        os.kill(pid, signal.SIGKILL)

    progress = AfterBytes(12 * MiB, kill_pg_dump)
    with pytest.raises(ExternalCommandFailed) as failure:
        run_backup(policy, store=s3_store, progress=progress)
    assert progress.fired and uploads_when_killed == [1]  # a multipart upload was under way
    assert failure.value.returncode == -signal.SIGKILL and "pg_dump was killed" in str(failure.value)
    assert failure.value.exit_code == ExitCode.TASK_FAILED
    assert_only(s3_store, previous, pg)


def test_losing_the_connection_fails_the_backup_with_the_server_message(
        tmp_path: Path, source: str, s3_store: S3Store, s3_endpoint: str, previous: str, pg: LocalPostgres) -> None:
    policy = load_policy(policy_path(tmp_path, source, s3_store, s3_endpoint))

    def terminate_dump_backend() -> None:
        terminated = query(source, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                      "WHERE application_name LIKE 'archiver pg_dump %'")
        assert terminated == [(True,)]

    progress = AfterBytes(12 * MiB, terminate_dump_backend)
    with pytest.raises(ExternalCommandFailed) as failure:
        run_backup(policy, store=s3_store, progress=progress)
    assert progress.fired and failure.value.returncode == 1
    message = str(failure.value)
    assert 'Dumping the contents of table "readings" failed' in message
    # libpq reports the server's FATAL message, or only the closed socket when it lost the race
    assert ("terminating connection due to administrator command" in message
            or "server closed the connection unexpectedly" in message)
    assert child_pids("pg_dump") == []
    assert_only(s3_store, previous, pg)


def test_store_failing_midway_aborts_everything(tmp_path: Path, source: str, s3_store: S3Store, s3_endpoint: str,
                                                previous: str, pg: LocalPostgres) -> None:
    policy = load_policy(policy_path(tmp_path, source, s3_store, s3_endpoint))
    failing = S3Store(s3_store.bucket, s3_store.prefix, endpoint_url=s3_endpoint, region="us-east-1", max_attempts=2)
    calls = inject_s3_errors(failing, "UploadPart", lambda n: n > 1)  # part 1 goes through
    with pytest.raises(StoreError) as failure:
        run_backup(policy, store=failing)
    assert len(calls) >= 3  # part 1 went through; later parts failed after retries
    assert failure.value.exit_code == ExitCode.TASK_FAILED
    assert "upload of part" in str(failure.value) and "InternalError" in str(failure.value)
    assert child_pids("pg_dump") == []
    assert_only(s3_store, previous, pg)


def test_a_sigkilled_archiver_leaves_no_backup_and_prune_cleans_up_after_the_grace_period(
        tmp_path: Path, source: str, s3_store: S3Store, s3_endpoint: str, previous: str, pg: LocalPostgres) -> None:
    upstream = urlsplit(s3_endpoint)
    with StallingProxy(upstream.hostname or "127.0.0.1", upstream.port or 80,
                       stall_after_request_bytes=10 * MiB) as proxy:
        stalled_policy = policy_path(tmp_path / "via-proxy", source, s3_store, proxy.url)
        process = subprocess.Popen([sys.executable, "-m", "archiver", "--policies", str(stalled_policy), "backup", "app"],
                                   cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            # Bounded wait for the fault, not a timing assertion: the upload then hangs for good.
            assert proxy.stalled.wait(timeout=300), "the backup never reached the stall point"
            assert process.poll() is None
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL

    # No manifest: the killed run is not a backup; what it left is visible only to prune.
    listed = run_cli("--policies", str(tmp_path / "policies"), "backups", "list", "app", "--json")
    assert listed.code == 0 and [b["id"] for b in json.loads(listed.stdout)["backups"]] == [previous]
    leftovers = [info.key for info in s3_store.list(BACKUPS_PREFIX)
                 if not info.key.startswith(backup_prefix(previous))]
    assert leftovers and all(key.endswith("globals.sql") for key in leftovers)
    assert len(s3_store.pending_uploads()) == 1  # SIGKILL: nobody aborted the multipart upload

    policy = load_policy(tmp_path / "policies" / "app.yaml")
    now = run_prune(policy, store=s3_store)
    assert any("younger than orphan_grace 1d" in line for line in now.lines)
    assert len(s3_store.pending_uploads()) == 1 and s3_store.head(leftovers[0]) is not None

    later = run_prune(policy, store=s3_store, now=utcnow() + timedelta(days=1, minutes=5))
    assert sum("delete: older than orphan_grace 1d" in line for line in later.lines) == 2
    assert any("multipart upload" in line for line in later.lines)
    assert later.metrics["leftovers_deleted"] == 2
    assert_only(s3_store, previous, pg)
