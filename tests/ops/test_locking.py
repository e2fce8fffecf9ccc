"""Locks: a worker, a CronJob and a human never run the same task on the same database at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta

import pytest

from archiver.common.owner import ProcessIdentity, process_start
from archiver.common.timeutil import isoformat, parse_timestamp, utcnow
from archiver.errors import LockBusy
from archiver.ops.locking import database_lock, task_lock
from archiver.pg.connect import query
from archiver.policy.fields import Secret
from archiver.policy.schema import DatabaseConfig, Policy, StorageConfig
from archiver.storage.base import Store
from archiver.storage.documents import read_json, write_json
from archiver.storage.leases import StoreLease
from tests.helpers import PROJECT


def make_policy(dsn: str, url: str = "file:///srv/none", name: str = "app") -> Policy:
    return Policy(database=DatabaseConfig(dsn=Secret(dsn)), storage=StorageConfig(url=url), name=name, source=f"{name}.yaml")


def test_second_database_lock_is_refused_naming_the_holder(database: str) -> None:
    policy = make_policy(database)
    with database_lock(policy, "backup"):
        with pytest.raises(LockBusy) as caught:
            with database_lock(policy, "backup"):
                pass
        message = str(caught.value)
        assert caught.value.exit_code == 3
        assert "backup of policy 'app' is already running" in message
        assert "archiver backup app" in message and f"pid {os.getpid()}" in message
        assert "since 20" in message and "s ago" in message
        with database_lock(policy, "archive"):  # another task on the same database is not blocked
            pass
    with database_lock(policy, "backup"):  # released
        pass


def test_a_killed_holder_frees_the_database_lock(database: str) -> None:
    script = textwrap.dedent(f"""
        import sys, time
        from archiver.ops.locking import database_lock
        from archiver.policy.fields import Secret
        from archiver.policy.schema import DatabaseConfig, Policy, StorageConfig
        policy = Policy(database=DatabaseConfig(dsn=Secret({database!r})), storage=StorageConfig(url="file:///srv/x"),
                        name="app", source="app.yaml")
        with database_lock(policy, "backup"):
            print("locked", flush=True)
            time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=PROJECT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockBusy, match=f"pid {holder.pid}"):
            with database_lock(make_policy(database), "backup"):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        deadline = time.monotonic() + 30
        while True:  # the server notices the closed connection almost at once on loopback
            try:
                with database_lock(make_policy(database), "backup"):
                    break
            except LockBusy:
                assert time.monotonic() < deadline, "lock not freed after the holder was killed"
                time.sleep(0.2)
    finally:
        holder.kill()
        holder.wait()


def test_store_lease_is_exclusive_and_released(store: Store) -> None:
    first = StoreLease(store, "prune", "archiver prune app host-a pid 1")
    with first.held():
        with pytest.raises(LockBusy) as caught:
            StoreLease(store, "prune", "archiver prune app host-b pid 2").acquire()
        assert "host-a pid 1" in str(caught.value) and "since 20" in str(caught.value)
        assert caught.value.exit_code == 3
    assert store.head("locks/prune.json") is None
    with StoreLease(store, "prune", "host-b").held():
        assert store.head("locks/prune.json") is not None


def test_an_expired_lease_of_a_dead_holder_is_taken_over(store: Store) -> None:
    past = utcnow() - timedelta(hours=1)
    write_json(store, "locks/prune.json", {"holder": "dead host", "token": "x", "acquired_at": isoformat(past),
                                           "renewed_at": isoformat(past), "expires_at": isoformat(past)})
    lease = StoreLease(store, "prune", "new holder")
    with lease.held():
        assert b"new holder" in store.get_bytes("locks/prune.json")


def test_lease_is_renewed_while_held(file_store: Store) -> None:
    lease = StoreLease(file_store, "verify", "me", ttl=timedelta(seconds=30), renew_every=timedelta(seconds=0.2))
    with lease.held():
        first = file_store.get_bytes("locks/verify.json")
        time.sleep(1.2)
        assert file_store.get_bytes("locks/verify.json") != first
        assert not lease.lost


def test_task_lock_takes_both_kinds_for_retention(database: str, file_store: Store) -> None:
    policy = make_policy(database)
    with task_lock(policy, "retention", file_store):
        assert file_store.head("locks/retention.json") is not None
        with pytest.raises(LockBusy, match="database lock"):
            with task_lock(policy, "retention", file_store):
                pass
    assert file_store.head("locks/retention.json") is None
    held = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
    assert query(database, held) == [(0,)]  # pg_locks is cluster-wide: count this database's only


def test_an_unexpired_lease_is_taken_over_at_once_when_its_holder_process_is_gone(file_store: Store) -> None:
    """A SIGKILLed drill must not block the next one for the lease's ten minutes; a live holder still does."""
    script = textwrap.dedent(f"""
        import os, signal
        from archiver.storage.leases import StoreLease
        from archiver.storage.local import LocalStore
        StoreLease(LocalStore({str(file_store.root)!r}), "verify", "archiver verify app (killed)").acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = read_json(file_store, "locks/verify.json")
    assert left["holder"] == "archiver verify app (killed)" and left["owner"]["pid"] != os.getpid()
    assert parse_timestamp(left["expires_at"]) > utcnow()  # not expired: only the owner's death frees it
    with StoreLease(file_store, "verify", "the next drill").held():
        assert read_json(file_store, "locks/verify.json")["holder"] == "the next drill"
        with pytest.raises(LockBusy, match="held by the next drill"):
            StoreLease(file_store, "verify", "a third").acquire()  # its holder (this process) is alive


def test_a_process_identity_is_judged_dead_only_when_certain() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    alive = ProcessIdentity(ProcessIdentity.current().host, ProcessIdentity.current().pid_namespace, child.pid,
                            process_start(child.pid) or "")
    assert alive.start and not alive.known_dead()
    child.kill()
    child.wait()
    assert alive.known_dead()
    assert not ProcessIdentity.current().known_dead()
    assert not ProcessIdentity("another-host", alive.pid_namespace, child.pid, alive.start).known_dead()
    assert not ProcessIdentity(alive.host, "pid:[1]", child.pid, alive.start).known_dead()  # another container
    assert ProcessIdentity.from_label(alive.label()) == alive
