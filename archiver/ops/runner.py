"""Running one task the way every entry point runs it (CLI, ``archiver run``, the worker).

``task_run`` takes the task's locks, times it, keeps the run record in the store
(``runs/<task>.json``: last success, last failure and last interruption, read by ``archiver
status``), updates metrics and sends notifications. The task itself is the caller's block.

A run stopped by SIGINT or SIGTERM is *interrupted*, not failed: it is recorded as such, counted
apart in the metrics, not notified as a failure, and ends with exit code 130.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..common import log
from ..common.progress import NULL_PROGRESS, Progress
from ..common.result import TaskResult
from ..common.timeutil import isoformat, parse_timestamp, utcnow
from ..errors import ArchiverError, ExitCode, LockBusy, ObjectNotFound, UsageError, outcome_of, set_outcome, signal_of
from ..policy.schema import Policy
from ..storage.backends import open_store
from ..storage.base import Store
from ..storage.documents import ManifestError, read_json, write_json
from ..tasks import Locks, OptionsT, Task, named
from . import notify
from .locking import task_lock
from .metrics import Metrics

RUNS_PREFIX = "runs/"
_log = log.get_logger("run")


@dataclass
class Run:
    policy: Policy
    task: str
    store: Store
    started_at: datetime = field(default_factory=utcnow)
    result: TaskResult | None = None


def run_record_key(task: str) -> str:
    return f"{RUNS_PREFIX}{task}.json"


def read_run_record(store: Store, task: str) -> dict[str, Any]:
    try:
        return read_json(store, run_record_key(task))
    except (ObjectNotFound, ManifestError):
        return {}


def _write_run_record(store: Store, task: str, policy: str, outcome: str, entry: dict[str, Any]) -> None:
    record = read_run_record(store, task)
    record.update({"task": task, "policy": policy, "last_run": entry})
    record[f"last_{outcome}"] = entry
    write_json(store, run_record_key(task), record)


def _descriptor(task: str) -> Task[Any] | None:
    try:
        return named(task)
    except UsageError:
        return None


def interrupted_outcome(task: str, exc: BaseException) -> str:
    """What the interrupted run left behind: the task's own account if it gave one, else the task's rule."""
    descriptor = _descriptor(task)
    return outcome_of(exc, descriptor.interrupted if descriptor else "work in flight was aborted")


def _safely(what: str, action: Any, *args: Any, **kwargs: Any) -> None:
    """Book-keeping after the fact must not change how the task ended."""
    try:
        action(*args, **kwargs)
    except Exception as exc:
        _log.warning(f"{what}.failed", extra=log.fields(error=log.scrub(str(exc))))


@contextlib.contextmanager
def task_run(policy: Policy, task: str, *, store: Store | None = None, metrics: Metrics | None = None,
             lock: bool = True, record: bool = True, locks: Locks | None = None) -> Iterator[Run]:
    """Run ``task`` for ``policy`` inside the block; set ``run.result`` before leaving it."""
    for secret in policy.secret_values():
        log.register_secret(secret)
    store = store or open_store(policy.storage)
    metrics = metrics or Metrics()
    name = policy.name or ""
    run = Run(policy, task, store)
    started = time.monotonic()
    fields = {"policy": name, "task": task}
    _log.info("task.start", extra=log.fields(**fields))
    try:
        with task_lock(policy, task, store, locks) if lock else contextlib.nullcontext():
            yield run
    except LockBusy:
        metrics.record_failure(name, task, time.monotonic() - started, result="lock_busy")
        _log.warning("task.lock_busy", extra=log.fields(**fields))
        raise
    except KeyboardInterrupt as exc:  # SIGINT, and SIGTERM (errors.Interrupted)
        duration = time.monotonic() - started
        outcome = interrupted_outcome(task, exc)
        set_outcome(exc, outcome)
        _log.warning("task.interrupted", extra=log.fields(**fields, signal=signal_of(exc), outcome=outcome,
                                                          duration_seconds=round(duration, 3),
                                                          exit_code=int(ExitCode.INTERRUPTED)))
        metrics.record_interrupted(name, task, duration)
        if record:
            entry = {"finished_at": isoformat(utcnow()), "started_at": isoformat(run.started_at),
                     "duration_seconds": round(duration, 3), "status": "interrupted", "signal": signal_of(exc),
                     "outcome": outcome, "exit_code": int(ExitCode.INTERRUPTED)}
            _safely("run_record", _write_run_record, store, task, name, "interrupted", entry)
        raise
    except BaseException as exc:
        duration = time.monotonic() - started
        message = log.scrub(str(exc)) or type(exc).__name__
        exit_code = exc.exit_code if isinstance(exc, ArchiverError) else ExitCode.TASK_FAILED
        _log.error("task.failed", extra=log.fields(**fields, duration_seconds=round(duration, 3), error=message,
                                                   exit_code=int(exit_code)))
        metrics.record_failure(name, task, duration)
        if record:
            entry = {"finished_at": isoformat(utcnow()), "started_at": isoformat(run.started_at),
                     "duration_seconds": round(duration, 3), "error": message[-4000:], "exit_code": int(exit_code)}
            _safely("run_record", _write_run_record, store, task, name, "failure", entry)
            _safely("notify", notify.send, policy, "failure", f"{task} failed: {message[-1500:]}", task=task,
                    metrics=metrics)
        raise
    result = run.result
    if result is None:
        raise ArchiverError(f"internal error: task {task} finished without a result")
    duration = time.monotonic() - started
    _log.info("task.done", extra=log.fields(**fields, status=result.status, duration_seconds=round(duration, 3),
                                            summary=result.summary, metrics=result.metrics))
    metrics.record_success(name, task, result, duration)
    freshness = (descriptor := _descriptor(task)) and descriptor.newest_backup
    if result.status == "ok" and freshness == "taken":
        metrics.set_newest_backup(name, utcnow())
    if result.status == "ok" and freshness == "verified" and result.data.get("backup_time"):
        metrics.set_newest_backup(name, parse_timestamp(str(result.data["backup_time"])), verified=True)
    if record:
        entry = {"finished_at": isoformat(utcnow()), "started_at": isoformat(run.started_at),
                 "duration_seconds": round(duration, 3), "status": result.status, "summary": result.summary,
                 "metrics": result.metrics, "held_back": result.data.get("held_back", [])}
        outcome = "failure" if result.status == "verification_failed" else "success"
        _safely("run_record", _write_run_record, store, task, name, outcome, entry)
        if result.status == "held_back":
            _safely("notify", notify.send, policy, "held_back", result.summary, task=task, metrics=metrics)
        elif result.status == "verification_failed":
            _safely("notify", notify.send, policy, "drill_failed", result.summary, task=task, metrics=metrics)


def run_task(task: Task[OptionsT], policy: Policy, options: OptionsT, *, progress: Progress = NULL_PROGRESS,
             metrics: Metrics | None = None) -> TaskResult:
    """Run ``task`` through :func:`task_run`: the one way every entry point (the CLI commands, ``archiver
    run``, the worker's children) runs a task. A dry run changes nothing, so it takes no lock and leaves no
    run record."""
    task.configured(policy)
    with task_run(policy, task.name, metrics=metrics, lock=not options.dry_run, record=not options.dry_run,
                  locks=task.locks_of(options)) as run:
        run.result = task.run(policy, options, run.store, progress)
    return run.result
