"""The task descriptors (archiver/tasks.py): the facts the runner, the worker and the CLI read."""

from __future__ import annotations

from archiver.ops.metrics import RESULT_METRICS
from archiver.policy.files import load
from archiver.tasks import TASK_NAMES, TASKS, named, task_schedules
from tests.helpers import PROJECT


def test_tasks_are_listed_once_in_schedule_order_and_found_by_name() -> None:
    assert TASK_NAMES == ("backup", "basebackup", "prune", "archive", "retention", "verify")
    assert [named(name).name for name in TASK_NAMES] == list(TASK_NAMES)


def test_store_only_tasks_never_lock_the_database_and_every_task_locks_something() -> None:
    for task in TASKS:
        assert (task.locks.database is None) == task.store_only, task.name
        assert task.locks.database is not None or task.locks.store, task.name
    assert {task.name for task in TASKS if task.locks.database and task.locks.database.name == "cold-tier"} == {
        "archive", "retention"}


def test_every_metric_a_task_reports_is_exported() -> None:
    for task in TASKS:
        assert set(task.metrics) <= set(RESULT_METRICS), task.name


def test_the_shipped_policies_schedule_what_their_sections_say() -> None:
    result = load([PROJECT / "policies"], strict_env=False)
    assert result.issues == []
    for policy in result.policies:
        schedules = task_schedules(policy)
        assert list(schedules) == [task.name for task in TASKS if getattr(policy, task.section) is not None
                                   and (task.name != "prune" or policy.backup and policy.backup.retention)]
        if policy.backup:
            assert schedules["backup"] == policy.backup.schedule
        if policy.archive:
            assert schedules["retention"] == (policy.archive.retention_schedule or policy.archive.schedule)
