"""Prometheus metrics per policy and task (prometheus_client), for /metrics and the Pushgateway.

Ages are exported twice: as timestamps (right for a Pushgateway, where a pushed age would freeze)
and as ages computed at scrape time (convenient for alerts on the worker).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, push_to_gateway
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..common.result import TaskResult
from .pitr_metrics import PitrGauges

RESULT_METRICS = {
    "bytes": "archiver_task_bytes",
    "rows": "archiver_task_rows",
    "chunks_archived": "archiver_task_chunks_archived",
    "chunks_dropped": "archiver_task_chunks_dropped",
    "chunks_held_back": "archiver_task_chunks_held_back",
    "cold_files_expired": "archiver_task_cold_files_expired",
    "backups_deleted": "archiver_task_backups_deleted",
    "peak_rss_bytes": "archiver_task_peak_rss_bytes",
}


class _AgeCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        for name, help_text, source in (
            ("archiver_newest_backup_age_seconds", "Age of the newest backup", self.metrics.newest_backup_times),
            ("archiver_newest_verified_backup_age_seconds", "Age of the newest backup that passed a restore drill",
             self.metrics.newest_verified_times),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["policy"])
            for policy, stamp in sorted(source.items()):
                family.add_metric([policy], max(0.0, now - stamp))
            yield family


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ["policy", "task"]
        self.last_success = Gauge("archiver_task_last_success_timestamp_seconds", "When the task last succeeded",
                                  labels, registry=self.registry)
        self.last_failure = Gauge("archiver_task_last_failure_timestamp_seconds", "When the task last failed",
                                  labels, registry=self.registry)
        self.last_interrupted = Gauge("archiver_task_last_interrupted_timestamp_seconds",
                                      "When a run of the task was last stopped by SIGINT/SIGTERM (not a failure)",
                                      labels, registry=self.registry)
        self.duration = Gauge("archiver_task_duration_seconds", "Duration of the task's last run", labels,
                              registry=self.registry)
        self.runs = Counter("archiver_task_runs", "Runs of the task by result", labels + ["result"],
                            registry=self.registry)
        self.values = {key: Gauge(name, f"Last run's {key.replace('_', ' ')}", labels, registry=self.registry)
                       for key, name in RESULT_METRICS.items()}
        self.newest_backup = Gauge("archiver_newest_backup_timestamp_seconds", "End time of the newest backup",
                                   ["policy"], registry=self.registry)
        self.newest_verified = Gauge("archiver_newest_verified_backup_timestamp_seconds",
                                     "End time of the newest backup that passed a restore drill", ["policy"],
                                     registry=self.registry)
        self.pitr = PitrGauges(self.registry)  # WAL archive and recoverable window (ops/pitr_metrics.py)
        self.newest_backup_times: dict[str, float] = {}
        self.newest_verified_times: dict[str, float] = {}
        self.registry.register(_AgeCollector(self))

    def record_success(self, policy: str, task: str, result: TaskResult, duration: float,
                       finished: float | None = None) -> None:
        self.duration.labels(policy, task).set(duration)
        self.runs.labels(policy, task, result.status).inc()
        if result.status == "verification_failed":
            self.last_failure.labels(policy, task).set(finished or time.time())
        else:
            self.last_success.labels(policy, task).set(finished or time.time())
        for key, gauge in self.values.items():
            if key in result.metrics:
                gauge.labels(policy, task).set(float(result.metrics[key]))

    def record_failure(self, policy: str, task: str, duration: float, result: str = "failed") -> None:
        self.duration.labels(policy, task).set(duration)
        self.runs.labels(policy, task, result).inc()
        if result != "lock_busy":
            self.last_failure.labels(policy, task).set(time.time())

    def record_interrupted(self, policy: str, task: str, duration: float) -> None:
        """A run stopped on request: counted as ``result="interrupted"``, never as a failure."""
        self.duration.labels(policy, task).set(duration)
        self.runs.labels(policy, task, "interrupted").inc()
        self.last_interrupted.labels(policy, task).set(time.time())

    def set_newest_backup(self, policy: str, moment: datetime | None, *, verified: bool = False) -> None:
        target, gauge = ((self.newest_verified_times, self.newest_verified) if verified
                         else (self.newest_backup_times, self.newest_backup))
        if moment is None:
            target.pop(policy, None)
            return
        target[policy] = moment.timestamp()
        gauge.labels(policy).set(moment.timestamp())

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def push(self, gateway: str, policy: str, task: str) -> None:
        """Push this run's metrics, grouped by policy and task so runs do not overwrite each other."""
        push_to_gateway(gateway, job="archiver", grouping_key={"policy": policy, "task": task},
                        registry=self.registry, timeout=10)
