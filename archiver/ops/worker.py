"""``archiver worker``: every policy's tasks on their cron schedules (APScheduler 3).

One job per (policy, task). Each run is a child process ``archiver run NAME TASK``, the same
code path as cron and Kubernetes CronJobs, so locks, run records and clean aborts behave the
same everywhere, and a task that leaks memory or crashes cannot take the worker down.

- a job never overlaps itself (``max_instances=1``), late runs are coalesced and skipped after
  ``misfire_grace``;
- tasks of one policy (one database) run one after another; tasks of different policies run
  in parallel up to ``max_parallel``;
- SIGHUP reloads the policy files: a file that is now invalid keeps its previous policy, and the
  errors are logged;
- SIGTERM stops scheduling, lets running tasks finish for ``grace_period``, then asks them to
  abort (SIGTERM: they abort uploads, write no manifest and exit 130, recorded as interrupted),
  and kills what is left after ``abort_period``. Each child's own stop grace (``--stop-grace``,
  after which it exits regardless) is kept below ``abort_period``, so children end on their own.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from ..common import log, signals
from ..common.cron import cron_trigger
from ..common.result import TaskResult
from ..errors import ExitCode, UsageError
from ..policy.files import load
from ..policy.schema import Policy
from ..tasks import TASKS, task_schedules
from . import gauges, notify
from .defaults import METRICS_PORT
from .metrics import Metrics
from .receivers import ReceiverSupervisor
from .status import policy_status

_log = log.get_logger("worker")

TriggerFactory = Callable[[str], BaseTrigger]
# Tasks after which backup ages (in /metrics) and staleness are read again.
REFRESHING_TASKS = frozenset(task.name for task in TASKS if task.refreshes_status)


@dataclass
class WorkerConfig:
    policies_path: str
    max_parallel: int = 2
    misfire_grace: int = 3600
    grace_period: float = 300.0
    abort_period: float = 60.0
    listen: str = "0.0.0.0"
    port: int | None = METRICS_PORT
    log_format: str = "json"
    run_at_start: tuple[str, ...] = ()
    status_interval: float = 300.0  # seconds between status checks (ages in /metrics, stale notifications)
    archiver_argv: list[str] = field(default_factory=lambda: [sys.executable, "-m", "archiver"])
    trigger_factory: TriggerFactory = cron_trigger


@dataclass
class RunOutcome:
    policy: str
    task: str
    exit_code: int
    started: float
    finished: float
    result: dict[str, Any] | None
    stderr_tail: str


_STDERR_LOCK = threading.Lock()


def _relay_lines(stream: IO[str] | None, tail: deque[str]) -> None:
    """Pass a child's log lines on to the worker's stderr as they come (a backup's progress must
    not wait for its end), keeping the last ones for the failure notification."""
    if stream is None:
        return
    for line in stream:
        with _STDERR_LOCK:  # whole lines, whichever child's relay writes
            sys.stderr.write(line if line.endswith("\n") else line + "\n")
            sys.stderr.flush()
        if line.strip():
            tail.append(line.rstrip("\n"))


class Worker:
    def __init__(self, config: WorkerConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics(process=True)
        self.policies: dict[str, Policy] = {}
        self._sources: dict[str, str] = {}  # policy file -> policy name
        self._policy_locks: dict[str, threading.Lock] = {}
        self._slots = threading.BoundedSemaphore(config.max_parallel)
        self._children: dict[int, subprocess.Popen[str]] = {}
        self._children_lock = threading.Lock()
        self._stopping = threading.Event()
        self._reload_requested = threading.Event()
        self.history: list[RunOutcome] = []
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=max(4, config.max_parallel * 4))},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": config.misfire_grace},
            timezone="UTC")
        self._http: http.server.ThreadingHTTPServer | None = None
        self._job_schedules: dict[str, str] = {}
        self._stale_notified: set[str] = set()
        self.receivers = ReceiverSupervisor(self._archiver_base_argv(), self.metrics, config.abort_period)

    # -- policies and jobs ------------------------------------------------------------------
    def load_policies(self, *, initial: bool = False) -> None:
        result = load([self.config.policies_path], strict_env=True)
        for issue in result.issues:
            _log.error("policy.invalid", extra=log.fields(issue=str(issue)))
        valid = {policy.name: policy for policy in result.policies if policy.name}
        bad_files = {issue.file for issue in result.issues}
        kept = {name: policy for name, policy in self.policies.items()
                if policy.source in bad_files and name not in valid and Path(policy.source).exists()}
        for name in kept:
            _log.warning("policy.kept_previous", extra=log.fields(policy=name, source=self.policies[name].source))
        if initial and not valid:
            raise UsageError(f"no valid policy in {self.config.policies_path}; the worker has nothing to do")
        self.policies = {**valid, **kept}
        self._sources = {policy.source: name for name, policy in self.policies.items()}
        self._sync_jobs()
        if self.scheduler.running or initial:
            self.receivers.sync(self.policies)

    def _sync_jobs(self) -> None:
        wanted: dict[str, tuple[str, str, str]] = {}
        for name, policy in self.policies.items():
            for task, expression in task_schedules(policy).items():
                wanted[f"{name}:{task}"] = (name, task, expression)
        for job in self.scheduler.get_jobs():
            if job.id not in wanted and job.id != "status":
                job.remove()
                _log.info("job.removed", extra=log.fields(job=job.id))
        for job_id, (name, task, expression) in wanted.items():
            trigger = self.config.trigger_factory(expression)
            existing = self.scheduler.get_job(job_id)
            if existing is None:
                self.scheduler.add_job(self.run_job, trigger=trigger, args=(name, task), id=job_id, name=job_id)
                _log.info("job.scheduled", extra=log.fields(job=job_id, schedule=expression))
            elif self._job_schedules.get(job_id) != expression:
                existing.reschedule(trigger=trigger)
                _log.info("job.rescheduled", extra=log.fields(job=job_id, schedule=expression))
            self._job_schedules[job_id] = expression

    # -- running one task -------------------------------------------------------------------
    def _policy_lock(self, name: str) -> threading.Lock:
        return self._policy_locks.setdefault(name, threading.Lock())

    def run_job(self, name: str, task: str) -> RunOutcome | None:
        """One scheduled run: wait for the policy's other task, then for a free slot."""
        if self._stopping.is_set():
            return None
        with self._policy_lock(name):
            with self._slots:
                if self._stopping.is_set():
                    return None
                return self._run_child(name, task)

    def _archiver_base_argv(self) -> list[str]:
        return [*self.config.archiver_argv, "--policies", self.config.policies_path, "--log-format",
                self.config.log_format, "--stop-grace", f"{self.child_stop_grace():g}"]

    def _run_child(self, name: str, task: str) -> RunOutcome:
        argv = [*self._archiver_base_argv(), "run", name, task, "--json"]
        started = time.time()
        _log.info("job.start", extra=log.fields(policy=name, task=task))
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)
        with self._children_lock:
            self._children[child.pid] = child
        tail: deque[str] = deque(maxlen=20)
        relay = threading.Thread(target=_relay_lines, args=(child.stderr, tail), name=f"relay-{name}-{task}",
                                 daemon=True)
        relay.start()
        try:
            assert child.stdout is not None
            stdout = child.stdout.read()
            child.wait()
            relay.join()
        finally:
            with self._children_lock:
                self._children.pop(child.pid, None)
        outcome = RunOutcome(name, task, child.returncode, started, time.time(), _parse_result(stdout),
                             "\n".join(tail))
        self._record(outcome)
        return outcome

    def child_stop_grace(self) -> float:
        """A child's grace after SIGTERM: this process's own, but ending before the worker's SIGKILL."""
        return max(1.0, min(signals.grace_seconds(), self.config.abort_period - 5))

    def refresh_status(self, names: list[str] | None = None) -> None:
        """Backup ages, schedules, archive lag and the cold tier for /metrics, and one `stale` notification per
        policy when it goes stale."""
        for name in names or sorted(self.policies):
            policy = self.policies.get(name)
            if policy is None:
                continue
            status = policy_status(policy)
            gauges.set_all(self.metrics, policy, status)
            newest = status.newest_backup
            stale = bool(newest and newest["stale"])
            if stale and name not in self._stale_notified:
                notify.send(policy, "stale", status.problems[0] if status.problems else "backup is stale",
                            metrics=self.metrics)
                self._stale_notified.add(name)
            elif not stale:
                self._stale_notified.discard(name)

    def _record(self, outcome: RunOutcome) -> None:
        self.history.append(outcome)
        duration = outcome.finished - outcome.started
        if outcome.result and outcome.exit_code in (ExitCode.OK, ExitCode.HELD_BACK, ExitCode.VERIFICATION_FAILED):
            result = TaskResult(policy=outcome.policy, task=outcome.task, status=outcome.result.get("status", "ok"),
                                summary=outcome.result.get("summary", ""), metrics=outcome.result.get("metrics", {}))
            self.metrics.record_success(outcome.policy, outcome.task, result, duration, outcome.finished)
        elif outcome.exit_code == ExitCode.INTERRUPTED:
            self.metrics.record_interrupted(outcome.policy, outcome.task, duration)
        else:
            kind = "lock_busy" if outcome.exit_code == ExitCode.LOCK_BUSY else "failed"
            self.metrics.record_failure(outcome.policy, outcome.task, duration, result=kind)
        _log.info("job.done", extra=log.fields(policy=outcome.policy, task=outcome.task, exit_code=outcome.exit_code,
                                               duration_seconds=round(duration, 3),
                                               summary=(outcome.result or {}).get("summary"),
                                               lines=(outcome.result or {}).get("lines") or None))
        if outcome.task in REFRESHING_TASKS:
            self._safe_refresh([outcome.policy])

    def _safe_refresh(self, names: list[str] | None = None) -> None:
        try:
            self.refresh_status(names)
        except Exception as exc:  # status is advisory: never let it stop the worker
            _log.warning("status.failed", extra=log.fields(error=log.scrub(str(exc))))

    # -- HTTP: /metrics and /healthz --------------------------------------------------------
    def serve_http(self) -> None:
        if self.config.port is None:
            return
        worker = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/metrics":
                    body, kind = worker.metrics.exposition(self.headers.get("Accept", ""))
                    status = 200
                elif self.path.split("?")[0] == "/healthz":
                    healthy = worker.scheduler.running and not worker._stopping.is_set()
                    body = json.dumps({"status": "ok" if healthy else "stopping", "policies": sorted(worker.policies),
                                       "running": worker.running_jobs()}).encode()
                    status, kind = (200 if healthy else 503), "application/json"
                else:
                    body, status, kind = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        try:
            self._http = http.server.ThreadingHTTPServer((self.config.listen, self.config.port), Handler)
        except OSError as exc:  # an address that does not resolve or is not ours, a port in use
            reason = exc.strerror or str(exc)
            raise UsageError(f"--listen {self.config.listen} --port {self.config.port}: cannot serve /metrics and "
                             f"/healthz there ({reason})") from None
        self.config.port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, name="http", daemon=True).start()
        _log.info("worker.http", extra=log.fields(listen=self.config.listen, port=self.config.port))

    def running_jobs(self) -> list[int]:
        with self._children_lock:
            return sorted(self._children)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self.load_policies(initial=True)
        self.serve_http()
        self.scheduler.add_job(self._safe_refresh, "interval", seconds=self.config.status_interval, id="status",
                               next_run_time=datetime.now(UTC))
        self.scheduler.start()
        for job in self.scheduler.get_jobs():
            if job.args and job.args[1] in self.config.run_at_start:
                job.modify(next_run_time=datetime.now(UTC))
        _log.info("worker.started", extra=log.fields(policies=sorted(self.policies),
                                                     jobs=[job.id for job in self.scheduler.get_jobs()]))

    def request_reload(self) -> None:
        self._reload_requested.set()

    def request_stop(self) -> None:
        self._stopping.set()

    def wait(self) -> None:
        """Serve until stopped; reload on request."""
        while not self._stopping.wait(0.5):
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                _log.info("worker.reload")
                self.load_policies()
        self.shutdown()

    def shutdown(self) -> None:
        self._stopping.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.receivers.stop_all()
        deadline = time.monotonic() + self.config.grace_period
        while self.running_jobs() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.running_jobs():
            _log.warning("worker.aborting", extra=log.fields(running=self.running_jobs()))
            self._signal_children(signal.SIGTERM)
            deadline = time.monotonic() + self.config.abort_period
            while self.running_jobs() and time.monotonic() < deadline:
                time.sleep(0.2)
            self._signal_children(signal.SIGKILL)
        if self._http is not None:
            self._http.shutdown()
        _log.info("worker.stopped")

    def _signal_children(self, sig: signal.Signals) -> None:
        with self._children_lock:
            children = list(self._children.values())
        for child in children:
            try:
                os.kill(child.pid, sig)
            except ProcessLookupError:
                pass


def _parse_result(stdout: str) -> dict[str, Any] | None:
    """The JSON document ``archiver run --json`` printed (its last line), if any."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:
            continue
        return parsed if isinstance(parsed, dict) else None
    return None


def run_worker(config: WorkerConfig) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads policies."""
    worker = Worker(config)
    signal.signal(signal.SIGHUP, lambda *_: worker.request_reload())
    signal.signal(signal.SIGTERM, lambda *_: worker.request_stop())
    signal.signal(signal.SIGINT, lambda *_: worker.request_stop())
    worker.start()
    worker.wait()
    return ExitCode.OK
