"""SIGTERM and SIGINT: honoured within the grace period whatever is in flight, and recorded as
interrupted (exit 130), not as failed.

Real runs in subprocesses: pg_dump held on a table lock, or an upload stalled by a proxy that
stops forwarding. Waits in the tests are bounded generously (a hang fails them); no duration is
asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from archiver.backup.manifest import BACKUPS_PREFIX, list_backups
from archiver.common.timeutil import isoformat, utcnow
from archiver.errors import ExitCode, Interrupted
from archiver.ops.metrics import Metrics
from archiver.ops.runner import read_run_record, run_record_key, task_run
from archiver.pg.connect import execute, query
from archiver.pg.scratch import LocalPostgres
from archiver.storage.documents import write_json
from archiver.storage.local import LocalStore
from archiver.storage.s3 import S3Store
from tests.backup_helpers import fake_backup, new_database, write_policy
from tests.helpers import PROJECT, run_cli
from tests.netfault import StallingProxy
from tests.ops_helpers import TableLock, pg_dump_waiting, policy_with_hook, sample, seeded, wait_for
from tests.storage_helpers import MiB


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "archiver", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=PROJECT, env={**os.environ, **(env or {})}, start_new_session=True)


def finish(process: subprocess.Popen[str], bound: float) -> tuple[str, str]:
    """The process's output once it has exited; a process still running after ``bound`` s fails the test."""
    try:
        stdout, stderr = process.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError(f"still running {bound}s after the signal: the stop was not honoured") from None
    return stdout, stderr


def test_sigterm_during_an_upload_to_a_stalled_store_exits_130_within_the_grace_period(
        tmp_path: Path, source: str, s3_store: S3Store, s3_endpoint: str) -> None:
    """The endpoint stops answering mid-upload: part uploads hang in worker threads and the abort
    cannot reach S3. SIGTERM still ends the run, interrupted, with nothing half-visible."""
    upstream = urlsplit(s3_endpoint)
    with StallingProxy(upstream.hostname or "127.0.0.1", upstream.port or 80,
                       stall_after_request_bytes=10 * MiB) as proxy:
        policy = write_policy(tmp_path / "policies", "app", source, s3_store.url, endpoint_url=proxy.url,
                              backup={"compression": {"codec": "none"}})
        process = spawn("--policies", str(policy.parent), "--stop-grace", "20", "backup", "app")
        try:
            assert proxy.stalled.wait(timeout=300), "the backup never reached the stall point"
            assert process.poll() is None
            process.send_signal(signal.SIGTERM)
            stdout, stderr = finish(process, bound=120)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    assert "interrupted: nothing was changed (no manifest was written" in stderr, stderr
    assert "stop.forced" not in stderr  # the clean-up ended by itself, within the grace period
    assert stdout == ""  # no backup id: there is no backup
    assert list_backups(s3_store) == []
    assert not [info.key for info in s3_store.list(BACKUPS_PREFIX) if info.key.endswith("manifest.json")]


@pytest.mark.parametrize("sig, command", [(signal.SIGINT, ("backup", "app")), (signal.SIGTERM, ("run", "app", "backup"))])
def test_an_interrupted_run_is_recorded_as_interrupted_and_status_stays_healthy(
        database: str, tmp_path: Path, sig: signal.Signals, command: tuple[str, ...]) -> None:
    store = LocalStore(tmp_path / "store")
    policies = write_policy(tmp_path / "policies", "app", "${APP_DSN}", store.url).parent
    env = {"APP_DSN": seeded(database)}
    first = run_cli("--policies", str(policies), "backup", "app", env=env)
    assert first.code == 0, first.stderr
    blocker = TableLock(database, "devices")
    process = spawn("--policies", str(policies), *command, env=env)
    try:
        wait_for(lambda: pg_dump_waiting(database), what="pg_dump to wait on the table lock")
        process.send_signal(sig)
        _, stderr = finish(process, bound=120)
    finally:
        blocker.release()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    assert "interrupted: nothing was changed (no manifest was written" in stderr
    assert not pg_dump_waiting(database)
    assert [entry.id for entry in list_backups(store)] == [first.stdout.strip()]

    record = read_run_record(store, "backup")
    assert "last_failure" not in record
    interrupted = record["last_interrupted"]
    assert interrupted["signal"] == sig.name and interrupted["exit_code"] == 130
    assert interrupted["outcome"].startswith("nothing was changed") and record["last_run"]["status"] == "interrupted"

    status = run_cli("--policies", str(policies), "status", "--json")
    assert status.code == 0, status.output
    (entry,) = json.loads(status.stdout)["policies"]
    assert entry["healthy"] is True and entry["problems"] == []
    assert entry["tasks"]["backup"]["interrupted"] is True and entry["tasks"]["backup"]["failing"] is False
    assert entry["notes"] == [f"backup was interrupted at {interrupted['finished_at']} ({sig.name}): "
                              f"{interrupted['outcome']}"]
    text = run_cli("--policies", str(policies), "status")
    assert text.code == 0 and f"app: backup was interrupted at {interrupted['finished_at']}" in text.stdout


def test_interrupted_runs_are_counted_apart_from_failures(database: str, file_store: LocalStore) -> None:
    metrics = Metrics()
    policy = policy_with_hook(database, file_store, None)
    with pytest.raises(Interrupted):
        with task_run(policy, "archive", store=file_store, metrics=metrics):
            raise Interrupted("SIGTERM")
    assert sample(metrics, "archiver_task_runs_total", policy="app", task="archive", result="interrupted") == 1
    assert sample(metrics, "archiver_task_runs_total", policy="app", task="archive", result="failed") == 0, "every result is present from the first run on"
    assert sample(metrics, "archiver_task_last_failure_timestamp_seconds", policy="app", task="archive") is None
    assert sample(metrics, "archiver_task_last_interrupted_timestamp_seconds", policy="app", task="archive") > 0
    record = read_run_record(file_store, "archive")
    assert record["last_interrupted"]["signal"] == "SIGTERM" and "last_failure" not in record
    assert record["last_interrupted"]["outcome"].startswith("archives finished before the interruption are kept")


def test_an_interrupted_task_that_then_misses_its_schedule_is_a_problem(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    policies = tmp_path / "policies"
    write_policy(policies, "app", "${APP_DSN}", store.url)
    path = policies / "app.yaml"
    path.write_text(path.read_text() + "verify:\n  schedule: '0 5 * * *'\n")
    fake_backup(store, utcnow() - timedelta(hours=3))
    now = utcnow()
    entry = {"signal": "SIGTERM", "outcome": "nothing was changed (no verdict was written)", "status": "interrupted"}
    write_json(store, run_record_key("verify"), {
        "task": "verify", "policy": "app", "last_success": {"finished_at": isoformat(now - timedelta(days=3))},
        "last_interrupted": {**entry, "finished_at": isoformat(now - timedelta(hours=1))}})
    missed = run_cli("--policies", str(policies), "status", "--json")
    assert missed.code == 1
    (status,) = json.loads(missed.stdout)["policies"]
    assert status["tasks"]["verify"]["interrupted"] is True and status["tasks"]["verify"]["failing"] is False
    (problem,) = status["problems"]
    assert problem.startswith("verify was interrupted at") and "(SIGTERM): nothing was changed" in problem
    assert "last success" in problem and "runs every 1d: missed" in problem

    write_json(store, run_record_key("verify"), {
        "task": "verify", "policy": "app", "last_success": {"finished_at": isoformat(now - timedelta(hours=20))},
        "last_interrupted": {**entry, "finished_at": isoformat(now - timedelta(hours=1))}})
    recent = run_cli("--policies", str(policies), "status", "--json")
    assert recent.code == 0, recent.output
    (status,) = json.loads(recent.stdout)["policies"]
    assert status["problems"] == [] and status["notes"][0].startswith("verify was interrupted at")


ENDLESS_CLEANUP = """
import sys, time
from archiver.common import log, signals
log.setup("json", 0)
signals.configure(float(sys.argv[1]))
with signals.stop_on_signals():
    print("ready", flush=True)
    try:
        time.sleep(600)
    except KeyboardInterrupt:
        print("cleaning up", flush=True)
        while True:  # a clean-up that never ends: a call that hangs on a dead endpoint
            time.sleep(0.05)
"""


@pytest.mark.parametrize("second_signal", [False, True])
def test_a_clean_up_that_hangs_is_ended_by_the_watchdog(second_signal: bool) -> None:
    grace = "300" if second_signal else "2"
    process = subprocess.Popen([sys.executable, "-c", ENDLESS_CLEANUP, grace], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=PROJECT, start_new_session=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        process.send_signal(signal.SIGTERM)
        assert process.stdout.readline() == "cleaning up\n"
        if second_signal:  # the operator insists: no waiting for the grace period
            process.send_signal(signal.SIGINT)
        _, stderr = finish(process, bound=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == ExitCode.INTERRUPTED
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert [event["event"] for event in events] == ["stop.requested", "stop.forced"], stderr
    assert events[0]["signal"] == "SIGTERM"
    reason = events[1]["reason"]
    if second_signal:
        assert reason == "a second signal (SIGINT) during the clean-up"
    else:
        assert reason.startswith("the clean-up after SIGTERM did not finish within the grace period (2s)")


def restore_waiting(dsn: str) -> bool:
    rows = query(dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'archiver restore %%' "
                         "AND wait_event_type = 'Lock'")
    return bool(rows and rows[0][0])


def test_an_interrupted_restore_says_what_state_the_target_is_in(database: str, tmp_path: Path,
                                                                  pg: LocalPostgres) -> None:
    """--clean into a database whose table is locked: pg_restore waits in its one transaction; Ctrl-C
    rolls it back and the message says the target holds what it held."""
    store = LocalStore(tmp_path / "store")
    policies = write_policy(tmp_path / "policies", "app", "${APP_DSN}", store.url).parent
    env = {"APP_DSN": seeded(database)}
    assert run_cli("--policies", str(policies), "backup", "app", env=env).code == 0
    _, target = new_database(pg)
    execute(target, "CREATE TABLE devices (id int PRIMARY KEY, name text); INSERT INTO devices VALUES (1, 'kept')")
    blocker = TableLock(target, "devices")
    process = spawn("--policies", str(policies), "restore", "app", "--target", target, "--clean", "--yes", env=env)
    try:
        wait_for(lambda: restore_waiting(target), what="pg_restore --clean to wait on the table lock")
        process.send_signal(signal.SIGINT)
        _, stderr = finish(process, bound=120)
    finally:
        blocker.release()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    assert "interrupted: nothing was written to the target" in stderr
    assert query(target, "SELECT id, name FROM public.devices") == [(1, "kept")]
    assert not restore_waiting(target)
