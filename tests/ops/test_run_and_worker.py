"""``archiver run`` (cron / CronJob mode) and ``archiver worker`` (the scheduler), for real:
real PostgreSQL, real pg_dump, moto over HTTP, a real Pushgateway when it is installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from pathlib import Path

import pytest
from apscheduler.triggers.interval import IntervalTrigger

from archiver.backup.manifest import list_backups
from archiver.ops.worker import Worker, WorkerConfig, _relay_lines
from archiver.storage.local import LocalStore
from archiver.storage.s3 import S3Store
from tests.backup_helpers import write_policy
from tests.helpers import PROJECT, run_cli
from tests.ops_helpers import TableLock, pg_dump_waiting, seeded, wait_for


def spawn_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "archiver", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=PROJECT, env={**os.environ, **(env or {})})








def test_run_prints_a_json_result_and_records_the_run(database: str, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    policy = write_policy(tmp_path / "policies", "app", "${APP_DSN}", store.url)
    result = run_cli("--policies", str(policy.parent), "run", "app", "backup", "--json", env={"APP_DSN": seeded(database)})
    assert result.code == 0, result.stderr
    document = json.loads(result.stdout.strip().splitlines()[-1])
    assert document["status"] == "ok" and document["exit_code"] == 0 and document["metrics"]["rows"] == 200
    manifest_lines = [line for line in document["lines"] if line.startswith("manifest ")]
    assert len(manifest_lines) == 1 and document["data"]["id"] in manifest_lines[0]
    assert manifest_lines[0] not in result.stderr, "with --json the decision lines travel inside the JSON only"
    assert [entry.id for entry in list_backups(store)] == [document["data"]["id"]]
    record = json.loads(store.get_bytes("runs/backup.json"))
    assert record["last_success"]["metrics"]["rows"] == 200


def test_two_concurrent_runs_one_exits_3_and_a_killed_holder_frees_the_lock(database: str, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    policy = write_policy(tmp_path / "policies", "app", "${APP_DSN}", store.url)
    env = {"APP_DSN": seeded(database)}
    blocker = TableLock(database, "devices")
    first = spawn_cli("--policies", str(policy.parent), "run", "app", "backup", env=env)
    try:
        wait_for(lambda: pg_dump_waiting(database), what="the first backup's pg_dump to wait on the table lock")
        second = run_cli("--policies", str(policy.parent), "run", "app", "backup", env=env)
        assert second.code == 3, second.output
        assert "backup of policy 'app' is already running" in second.stderr
        assert f"pid {first.pid}" in second.stderr and "since " in second.stderr
        first.send_signal(signal.SIGKILL)  # a holder that dies...
        first.wait(timeout=60)
    finally:
        first.kill()
        blocker.release()
    third = run_cli("--policies", str(policy.parent), "run", "app", "backup", env=env)  # ...frees the lock
    assert third.code == 0, third.output
    assert len(list_backups(store)) == 1


def test_run_of_a_task_the_policy_lacks_is_a_usage_error(tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "policies", "app", "dbname=app", f"file://{tmp_path}/store")
    result = run_cli("--policies", str(policy.parent), "run", "app", "archive")
    assert result.code == 2 and "has no archive section" in result.stderr


def test_run_pushes_its_metrics_to_a_pushgateway(database: str, tmp_path: Path, pushgateway: str) -> None:
    store = LocalStore(tmp_path / "store")
    policy = write_policy(tmp_path / "policies", "app", "${APP_DSN}", store.url)
    result = run_cli("--policies", str(policy.parent), "run", "app", "backup",
                     env={"APP_DSN": seeded(database), "ARCHIVER_PUSHGATEWAY": pushgateway})
    assert result.code == 0, result.stderr
    with urllib.request.urlopen(f"{pushgateway}/metrics", timeout=10) as response:
        exposition = response.read().decode()
    lines = [line for line in exposition.splitlines() if line.startswith("archiver_task_rows{")]
    assert lines and 'policy="app"' in lines[0] and 'task="backup"' in lines[0] and lines[0].endswith(" 200")
    assert any(line.startswith("archiver_task_last_success_timestamp_seconds{") for line in exposition.splitlines())
    again = run_cli("--policies", str(policy.parent), "run", "app", "backup",
                    env={"APP_DSN": database, "ARCHIVER_PUSHGATEWAY": pushgateway})
    assert again.code == 0, again.stderr
    with urllib.request.urlopen(f"{pushgateway}/metrics", timeout=10) as response:
        exposition = response.read().decode()
    assert 'archiver_task_runs_total{instance="",job="archiver",policy="app",result="ok",task="backup"} 2' in exposition, \
        "the second run's push adds to the first run's count"
    assert 'archiver_task_schedule_interval_seconds{instance="",job="archiver",policy="app",task="backup"} 86400' \
        in exposition


def interval_trigger(seconds: float):  # type: ignore[no-untyped-def]
    """Cron schedules run at most once a minute; the cadence test injects a faster trigger."""
    return lambda expression: IntervalTrigger(seconds=seconds)


def test_worker_runs_each_task_on_its_cadence_without_overlap_and_serves_metrics(database: str, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    policies = tmp_path / "policies"
    write_policy(policies, "app", seeded(database), store.url, backup={"retention": {"keep_last": 50}})
    worker = Worker(WorkerConfig(policies_path=str(policies), port=0, listen="127.0.0.1", grace_period=30,
                                 trigger_factory=interval_trigger(1.0)))
    worker.start()
    try:
        assert sorted(job.id for job in worker.scheduler.get_jobs()) == ["app:backup", "app:prune", "status"]
        wait_for(lambda: sum(o.task == "backup" for o in worker.history) >= 3, timeout=120, what="three backups")
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.config.port}/healthz", timeout=5) as response:
            health = json.loads(response.read())
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.config.port}/metrics", timeout=5) as response:
            exposition = response.read().decode()
    finally:
        worker.request_stop()
        worker.shutdown()
    assert health["status"] == "ok" and health["policies"] == ["app"]
    runs = sorted(worker.history, key=lambda o: o.started)
    assert all(o.exit_code == 0 for o in runs), [(o.task, o.exit_code, o.stderr_tail) for o in runs]
    for earlier, later in zip(runs, runs[1:]):  # one policy's tasks never run at the same time
        assert later.started >= earlier.finished
    assert 'archiver_task_runs_total{policy="app",result="ok",task="backup"}' in exposition
    assert "_created" not in exposition and "archiver_build_info{" in exposition
    assert "process_resident_memory_bytes" in exposition and \
        'archiver_task_schedule_interval_seconds{policy="app",task="backup"}' in exposition
    assert len(list_backups(store)) >= 3
    prune_lines = [line for o in runs if o.task == "prune" for line in (o.result or {}).get("lines", [])]
    assert any("keep: last #1" in line for line in prune_lines), prune_lines  # prune's reasons reach the worker


def test_worker_reload_keeps_the_old_policy_when_the_file_turns_invalid(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    path = write_policy(policies, "app", "dbname=app", f"file://{tmp_path}/store")
    worker = Worker(WorkerConfig(policies_path=str(policies), port=None))
    worker.load_policies(initial=True)
    assert [job.id for job in worker.scheduler.get_jobs()] == ["app:backup"]
    path.write_text(path.read_text().replace('schedule: 0 2 * * *', 'schedule: "0 25 * * *"'))
    worker.load_policies()
    assert [job.id for job in worker.scheduler.get_jobs()] == ["app:backup"]
    assert worker.policies["app"].backup.schedule == "0 2 * * *"  # type: ignore[union-attr]
    path.write_text(path.read_text().replace('"0 25 * * *"', '"15 3 * * *"'))
    worker.load_policies()
    assert worker.policies["app"].backup.schedule == "15 3 * * *"  # type: ignore[union-attr]
    assert "hour='3'" in str(worker.scheduler.get_job("app:backup").trigger)


def test_sigterm_during_a_backup_leaves_no_manifest_and_no_pending_upload(database: str, tmp_path: Path,
                                                                          s3_store: S3Store, s3_endpoint: str) -> None:
    policies = tmp_path / "policies"
    write_policy(policies, "app", "${APP_DSN}", f"s3://{s3_store.bucket}/{s3_store.prefix}", endpoint_url=s3_endpoint)
    blocker = TableLock(seeded(database), "devices")
    worker = spawn_cli("--policies", str(policies), "--log-format", "json", "worker", "--port", "0",
                       "--run-at-start", "backup", "--grace-period", "1", env={"APP_DSN": database})
    try:
        wait_for(lambda: pg_dump_waiting(database), what="the worker's backup to start")
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=120)
    finally:
        worker.kill()
        blocker.release()
    _, stderr = worker.communicate()
    assert worker.returncode == 0, stderr
    assert "worker.aborting" in stderr
    interrupted = [json.loads(line) for line in stderr.splitlines() if '"task.interrupted"' in line]
    assert [(event["task"], event["signal"], event["exit_code"]) for event in interrupted] == [("backup", "SIGTERM", 130)]
    done = [json.loads(line) for line in stderr.splitlines() if '"job.done"' in line]
    assert [event["exit_code"] for event in done] == [130]  # the child stopped on its own, before any SIGKILL
    assert list(s3_store.list("backups/")) == []
    assert s3_store.pending_uploads() == []
    assert not pg_dump_waiting(database)


def test_worker_relays_a_childs_log_lines_while_the_child_still_runs(capfd: pytest.CaptureFixture[str]) -> None:
    """A long backup's log lines must reach the worker's log as they happen, not when it ends."""
    script = "import sys, time; print('{\"event\": \"backup.step\"}', file=sys.stderr, flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    tail: deque[str] = deque(maxlen=20)
    relay = threading.Thread(target=_relay_lines, args=(child.stderr, tail), daemon=True)
    relay.start()
    try:
        deadline = time.monotonic() + 20
        while not tail and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.poll() is None, "the child should still be running"
        assert list(tail) == ['{"event": "backup.step"}']
        assert '{"event": "backup.step"}\n' in capfd.readouterr().err
    finally:
        child.kill()
        child.wait()
        relay.join(timeout=10)
    assert not relay.is_alive()
