"""The worker's WAL receivers: one ``archiver wal-receive NAME`` child per policy whose WAL method is stream.

CronJobs cannot run a receiver (it never ends); the worker keeps one alive per ``stream`` policy:
started with the worker and on reload, restarted with a growing delay (1 s doubling up to 60 s,
back to 1 s after a run of a minute) when it exits, stopped with SIGTERM (it then stores its
partial segment) when the worker stops or the policy goes. Its log lines are passed on; each
``wal.pushed`` line moves ``archiver_wal_last_archived_timestamp_seconds`` at once, and
``archiver_wal_receiver_up`` / ``archiver_wal_receiver_restarts_total`` say whether it runs.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from typing import IO

from ..common import log
from ..common.timeutil import parse_timestamp
from ..policy.schema import Policy
from .metrics import Metrics

_log = log.get_logger("worker")
MAX_BACKOFF = 60.0
STEADY_SECONDS = 60.0
_STDERR_LOCK = threading.Lock()


def streams(policies: dict[str, Policy]) -> list[str]:
    return sorted(name for name, policy in policies.items() if policy.pitr is not None
                  and policy.pitr.wal.method == "stream")


class Supervised(threading.Thread):
    def __init__(self, name: str, argv: list[str], metrics: Metrics) -> None:
        super().__init__(name=f"receiver-{name}", daemon=True)
        self.policy = name
        self.argv = argv
        self.metrics = metrics
        self.child: subprocess.Popen[str] | None = None
        self.restarts = 0
        self._halt = threading.Event()

    def run(self) -> None:
        backoff = 1.0
        while not self._halt.is_set():
            started = time.monotonic()
            code = self._run_child()
            if self._halt.is_set():
                break
            if time.monotonic() - started > STEADY_SECONDS:
                backoff = 1.0
            self.restarts += 1
            self.metrics.pitr.receiver_restarts.labels(self.policy).inc()
            _log.warning("receiver.restart", extra=log.fields(policy=self.policy, exit_code=code, in_seconds=backoff))
            self._halt.wait(backoff)
            backoff = min(MAX_BACKOFF, backoff * 2)

    def _run_child(self) -> int:
        _log.info("receiver.start", extra=log.fields(policy=self.policy))
        self.child = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.metrics.pitr.receiver_up.labels(self.policy).set(1)
        try:
            self._relay(self.child.stderr)
            return self.child.wait()
        finally:
            self.metrics.pitr.receiver_up.labels(self.policy).set(0)

    def _relay(self, stream: IO[str] | None) -> None:
        if stream is None:
            return
        for line in stream:
            with _STDERR_LOCK:
                sys.stderr.write(line if line.endswith("\n") else line + "\n")
                sys.stderr.flush()
            with contextlib.suppress(ValueError, TypeError, KeyError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == "wal.pushed" and record.get("completed_at"):
                    self.metrics.pitr.archived(self.policy, parse_timestamp(str(record["completed_at"])))

    def request_stop(self) -> None:
        self._halt.set()

    def stop(self, timeout: float) -> None:
        """SIGTERM (the receiver stores its partial segment and exits), SIGKILL after ``timeout``."""
        self._halt.set()
        child = self.child
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.join(timeout=5)


class ReceiverSupervisor:
    def __init__(self, base_argv: list[str], metrics: Metrics, stop_timeout: float) -> None:
        self.base_argv = base_argv  # archiver --policies P --log-format json --stop-grace S
        self.metrics = metrics
        self.stop_timeout = stop_timeout
        self.running: dict[str, Supervised] = {}

    def sync(self, policies: dict[str, Policy]) -> None:
        wanted = streams(policies)
        for name in sorted(set(self.running) - set(wanted)):
            _log.info("receiver.removed", extra=log.fields(policy=name))
            self.running.pop(name).stop(self.stop_timeout)
        for name in wanted:
            if name not in self.running:
                supervised = Supervised(name, [*self.base_argv, "wal-receive", name], self.metrics)
                self.running[name] = supervised
                supervised.start()

    def stop_all(self) -> None:
        threads = list(self.running.values())
        for supervised in threads:
            supervised.request_stop()
        for supervised in threads:
            supervised.stop(self.stop_timeout)
        self.running.clear()
