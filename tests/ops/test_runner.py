"""Every entry point runs a task the same way: locks, run records, metrics, notifications."""

from __future__ import annotations

import pytest

from archiver.common.result import TaskResult
from archiver.errors import LockBusy, TaskFailed
from archiver.ops.metrics import Metrics
from archiver.ops.notify import send
from archiver.ops.runner import read_run_record, task_run
from archiver.storage.local import LocalStore
from tests.ops_helpers import policy_with_hook, sample
from tests.webhook import WebhookReceiver


def test_success_is_recorded_in_the_store_and_metrics(database: str, file_store: LocalStore) -> None:
    metrics = Metrics()
    policy = policy_with_hook(database, file_store, None)
    with task_run(policy, "backup", store=file_store, metrics=metrics) as run:
        run.result = TaskResult("app", "backup", summary="backup 1 done", metrics={"bytes": 1234, "rows": 10})
    record = read_run_record(file_store, "backup")
    assert record["last_success"]["summary"] == "backup 1 done"
    assert record["last_success"]["metrics"] == {"bytes": 1234, "rows": 10}
    assert "last_failure" not in record
    assert sample(metrics, "archiver_task_bytes", policy="app", task="backup") == 1234
    assert sample(metrics, "archiver_task_runs_total", policy="app", task="backup", result="ok") == 1
    assert sample(metrics, "archiver_task_last_success_timestamp_seconds", policy="app", task="backup") > 0


def test_failure_is_recorded_and_notified_without_secrets(database: str, file_store: LocalStore) -> None:
    metrics = Metrics()
    with WebhookReceiver() as hook:
        policy = policy_with_hook(database, file_store, hook.url)
        with pytest.raises(TaskFailed):
            with task_run(policy, "backup", store=file_store, metrics=metrics):
                raise TaskFailed(f"pg_dump exited 1: could not connect (webhook was {hook.url})")
        assert len(hook.posts) == 1
        body = hook.posts[0]["body"]
        assert body["archiver"] == {"policy": "app", "event": "failure", "task": "backup"}
        assert "backup failed: pg_dump exited 1" in body["text"]
        assert "secret-token" not in str(body)
    record = read_run_record(file_store, "backup")
    assert record["last_failure"]["exit_code"] == 1 and "pg_dump exited 1" in record["last_failure"]["error"]
    assert "secret-token" not in str(record)
    assert sample(metrics, "archiver_task_runs_total", policy="app", task="backup", result="failed") == 1


def test_held_back_and_failed_drill_notify_their_events(database: str, file_store: LocalStore) -> None:
    with WebhookReceiver() as hook:
        policy = policy_with_hook(database, file_store, hook.url)
        with task_run(policy, "retention", store=file_store) as run:
            run.result = TaskResult("app", "retention", status="held_back", summary="2 chunks held back")
        with task_run(policy, "verify", store=file_store) as run:
            run.result = TaskResult("app", "verify", status="verification_failed", summary="row count mismatch")
        assert [post["body"]["archiver"]["event"] for post in hook.posts] == ["held_back", "drill_failed"]
    assert read_run_record(file_store, "verify")["last_failure"]["summary"] == "row count mismatch"
    assert run.result.exit_code == 4


def test_lock_busy_is_not_a_failure(database: str, file_store: LocalStore) -> None:
    policy = policy_with_hook(database, file_store, None)
    metrics = Metrics()
    with task_run(policy, "backup", store=file_store) as outer:
        with pytest.raises(LockBusy):
            with task_run(policy, "backup", store=file_store, metrics=metrics):
                pass
        outer.result = TaskResult("app", "backup")
    assert "last_failure" not in read_run_record(file_store, "backup")
    assert sample(metrics, "archiver_task_runs_total", policy="app", task="backup", result="lock_busy") == 1


def test_undeliverable_webhook_is_retried_counted_and_does_not_raise(database: str, file_store: LocalStore) -> None:
    metrics = Metrics()
    with WebhookReceiver(status=500) as hook:
        policy = policy_with_hook(database, file_store, hook.url)
        assert send(policy, "failure", "boom", task="backup", metrics=metrics) is False
        assert len(hook.posts) == 3, "a 5xx answer is retried, three tries in all"
    assert sample(metrics, "archiver_notify_failures_total", policy="app", event="failure") == 1
    with WebhookReceiver(status=404) as hook:
        assert send(policy_with_hook(database, file_store, hook.url), "failure", "boom", metrics=metrics) is False
        assert len(hook.posts) == 1, "a 4xx answer is final: retrying cannot help"
    assert sample(metrics, "archiver_notify_failures_total", policy="app", event="failure") == 2
    assert send(policy_with_hook(database, file_store, None), "failure", "boom") is False


def test_a_webhook_that_fails_once_gets_the_notification_on_the_retry(database: str, file_store: LocalStore) -> None:
    metrics = Metrics()
    with WebhookReceiver(fail_first=1) as hook:
        assert send(policy_with_hook(database, file_store, hook.url), "failure", "boom", metrics=metrics) is True
        assert [post["body"]["text"] for post in hook.posts] == [":red_circle: archiver task failed: app: boom"] * 2
    assert sample(metrics, "archiver_notify_failures_total", policy="app", event="failure") is None
