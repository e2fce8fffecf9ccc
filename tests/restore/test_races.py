"""Two restores into one new target, and a restore whose rows the manifest does not vouch for.

Real runs: the CLI in subprocesses (one paused with SIGSTOP while it holds the target's lock),
the real pg_restore, a second real PostgreSQL as the target.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from archiver.backup.task import run_backup
from archiver.errors import ExitCode
from archiver.pg.connect import query
from archiver.pg.scratch import LocalPostgres
from archiver.restore.planned import RestorePlan
from archiver.restore.props import TargetUnsuitable
from archiver.restore.task import RestoreRequest, run_restore
from archiver.storage.base import Store
from tests.backup_helpers import backup_policy, live_stats, load_policy, new_database, read_manifest
from tests.helpers import PROJECT, run_cli
from tests.restore_helpers import database_exists, rewrite_manifest, role_exists, user_tables


@pytest.fixture(scope="module")
def target_server() -> Iterator[LocalPostgres]:
    """Another PostgreSQL, without the source's roles: where the restores land."""
    with LocalPostgres() as instance:
        yield instance


def backed_up(tmp_path: Path, source: str, store: Store) -> tuple[Path, str]:
    path = backup_policy(tmp_path, source, store, None)
    return path, str(run_backup(load_policy(path), store=store).data["id"])


def restore_argv(policy_path: Path, target: str) -> list[str]:
    return [sys.executable, "-m", "archiver", "--policies", str(policy_path.parent), "restore", "app",
            "--target", target, "--yes"]


def restore_lock_holders(server: LocalPostgres) -> list[int]:
    """Client pids of the archiver restores that hold an advisory lock on the server right now."""
    rows = query(server.dsn(), "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                                  "WHERE l.locktype = 'advisory' AND l.granted "
                                  "AND a.application_name LIKE 'archiver restore app %'")
    return [int(name.rsplit(" pid ", 1)[1]) for (name,) in rows]


def wait_for(condition: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def manifest_rows(store: Store, backup_id: str) -> dict[str, int]:
    return {f"{t['schema']}.{t['name']}": int(t["rows"]) for t in read_manifest(store, backup_id)["content"]["tables"]}


def restored_rows(dsn: str) -> dict[str, int]:
    return {name: rows for name, (rows, _) in live_stats(dsn).items()}


def test_a_second_restore_into_the_same_new_target_waits_for_nobody_and_harms_nothing(
        tmp_path: Path, rich_database: tuple[str, str], file_store: Store,
        target_server: LocalPostgres) -> None:
    """Restore A holds the target's lock (paused there with SIGSTOP); B exits 3 naming A and writes
    nothing; A then finishes, and its database holds exactly the manifest's rows."""
    source, _ = rich_database
    path, backup_id = backed_up(tmp_path, source, file_store)
    name = f"restored_{uuid.uuid4().hex[:10]}"
    target = target_server.dsn(name)
    first = subprocess.Popen(restore_argv(path, target), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=PROJECT)
    try:
        wait_for(lambda: first.pid in restore_lock_holders(target_server) or first.poll() is not None,
                 "restore A to take the target's lock")
        os.kill(first.pid, signal.SIGSTOP)
        assert first.poll() is None, first.communicate()
        second = run_cli("--policies", str(path.parent), "restore", "app", "--target", target, "--yes")
        assert second.code == ExitCode.LOCK_BUSY, second.output
        assert f"restore into database '{name}' cannot start" in second.stderr
        assert "is held by archiver restore app" in second.stderr and f"pid {first.pid}" in second.stderr
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, out + err
    assert restored_rows(target) == manifest_rows(file_store, backup_id)
    assert live_stats(target) == live_stats(source)


def test_a_target_created_and_filled_after_the_plan_is_refused_and_left_alone(
        tmp_path: Path, rich_database: tuple[str, str], file_store: Store,
        target_server: LocalPostgres) -> None:
    """The original failure: B planned "does not exist", A then created and restored the database.
    B re-inspects the target under the lock, refuses (exit 2), and drops nothing of A's."""
    source, _ = rich_database
    path, backup_id = backed_up(tmp_path, source, file_store)
    name = f"restored_{uuid.uuid4().hex[:10]}"
    target = target_server.dsn(name)
    planned: list[RestorePlan] = []

    def confirm_after_another_restore(plan: RestorePlan) -> bool:
        planned.append(plan)
        other = run_cli("--policies", str(path.parent), "restore", "app", "--target", target, "--yes")
        assert other.code == 0, other.output
        return True

    with pytest.raises(TargetUnsuitable) as refused:
        run_restore(load_policy(path), RestoreRequest(target=target, target_in_argv=False),
                    confirm=confirm_after_another_restore, store=file_store)
    assert planned and planned[0].create_database  # B's plan was made while the database did not exist
    assert refused.value.exit_code == ExitCode.USAGE
    assert f"the target database {name} is not empty" in refused.value.message
    assert "the target changed after the plan was made" in str(refused.value.hint)
    assert database_exists(target_server, name)
    assert restored_rows(target) == manifest_rows(file_store, backup_id)
    assert live_stats(target) == live_stats(source)


def lie_about_devices(document: dict[str, Any]) -> None:
    for table in document["content"]["tables"]:
        if (table["schema"], table["name"]) == ("app", "devices"):
            table["rows"] += 1


def test_rows_that_differ_from_the_manifest_drop_the_database_the_restore_created(
        tmp_path: Path, rich_database: tuple[str, str], file_store: Store,
        target_server: LocalPostgres) -> None:
    source, role = rich_database
    path, backup_id = backed_up(tmp_path, source, file_store)
    rewrite_manifest(file_store, backup_id, lie_about_devices)
    name = f"restored_{uuid.uuid4().hex[:10]}"
    result = run_cli("--policies", str(path.parent), "restore", "app", "--target", target_server.dsn(name), "--yes")
    assert result.code == ExitCode.VERIFICATION_FAILED, result.output
    assert "MISMATCH 1 of 7 tables differ" in result.stdout
    assert "app.devices: 300 rows (manifest 301)" in result.stdout
    assert f"dropped database {name}, which this restore had created" in result.output
    assert not database_exists(target_server, name)
    assert not role_exists(target_server, role)  # created by this restore, dropped with its database


def test_rows_that_differ_in_an_existing_database_leave_it_and_say_what_stays(
        tmp_path: Path, rich_database: tuple[str, str], file_store: Store,
        target_server: LocalPostgres) -> None:
    source, _ = rich_database
    path, backup_id = backed_up(tmp_path, source, file_store)
    rewrite_manifest(file_store, backup_id, lie_about_devices)
    name, target = new_database(target_server)
    result = run_cli("--policies", str(path.parent), "restore", "app", "--target", target, "--yes")
    assert result.code == ExitCode.VERIFICATION_FAILED, result.output
    assert f"the restored objects stay in database {name}, which existed before this restore" in result.output
    assert database_exists(target_server, name)
    assert "app.devices" in user_tables(target)
    assert restored_rows(target)["app.devices"] == 300
