"""Prometheus metrics per policy and task (prometheus_client), for /metrics and the Pushgateway.

Ages are exported twice: as timestamps (right for a Pushgateway, where a pushed age would freeze)
and as ages computed at scrape time (convenient for alerts on the worker). Counters end in
``_total`` and carry no ``_created`` series. A run of ``archiver run`` is a new process every time:
before it pushes, it reads its group's counters back from the Pushgateway and adds its own counts to
them (``push``), so counters keep counting across CronJob runs instead of restarting at 1.
README "Metrics" lists every metric; deploy/monitoring/ holds the alerts and the dashboard on them.
"""

from __future__ import annotations

import json
import platform
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from datetime import datetime

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, pushadd_to_gateway
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import __version__
from ..common.result import TaskResult
from .pitr_metrics import PitrGauges

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` series say nothing an alert or dashboard uses

# Every result a run can end with: the label values of archiver_task_runs_total.
RESULTS = ("ok", "held_back", "failed", "verification_failed", "lock_busy", "interrupted")
# The results archiver_task_last_result tracks: how the last run that did its work ended (a run
# that found the lock taken, or was interrupted, did no work and leaves it as it was).
LAST_RESULTS = ("ok", "held_back", "failed", "verification_failed")

# A task result's metric keys (TaskResult.metrics) and the metric each is exported as: gauges hold
# the last run's value, counters (``_total``) add every run's value up.
RESULT_METRICS = {
    "bytes": "archiver_task_bytes",
    "rows": "archiver_task_rows",
    "peak_rss_bytes": "archiver_task_peak_rss_bytes",
    "chunks_held_back": "archiver_task_chunks_held_back",
    "chunks_archived": "archiver_task_chunks_archived_total",
    "chunks_dropped": "archiver_task_chunks_dropped_total",
    "cold_files_expired": "archiver_task_cold_files_expired_total",
    "backups_deleted": "archiver_task_backups_deleted_total",
}
_LABELS = ["policy", "task"]
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"  # what every Prometheus 2.x reads
# Computed at scrape time: right on the worker's /metrics, frozen (so wrong) in a Pushgateway.
AGE_METRICS = ("archiver_newest_backup_age_seconds", "archiver_newest_verified_backup_age_seconds")


class _AgeCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        for name, help_text, source in (
            (AGE_METRICS[0], "Age of the newest backup", self.metrics.newest_backup_times),
            (AGE_METRICS[1], "Age of the newest backup that passed a restore drill", self.metrics.newest_verified_times),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["policy"])
            for policy, stamp in sorted(source.items()):
                family.add_metric([policy], max(0.0, now - stamp))
            yield family


class Metrics:
    """One registry of archiver's metrics. ``process``: also the process, platform and GC collectors
    (the worker, a long-running process; a pushed run's process metrics would describe a process that
    has exited)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = False) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = Gauge("archiver_build_info", "archiver's version and Python's (always 1)",
                                ["version", "python_version"], registry=r)
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.last_success = Gauge("archiver_task_last_success_timestamp_seconds",
                                  "When a run of the task last ended ok (exit 0)", _LABELS, registry=r)
        self.last_failure = Gauge("archiver_task_last_failure_timestamp_seconds",
                                  "When a run of the task last failed (exit 1) or its verification failed (exit 4)",
                                  _LABELS, registry=r)
        self.last_held_back = Gauge("archiver_task_last_held_back_timestamp_seconds",
                                    "When a run of the task last held something back for safety (exit 5)", _LABELS,
                                    registry=r)
        self.last_interrupted = Gauge("archiver_task_last_interrupted_timestamp_seconds",
                                      "When a run of the task was last stopped by SIGINT/SIGTERM (not a failure)",
                                      _LABELS, registry=r)
        self.last_result = Gauge("archiver_task_last_result",
                                 "1 for the result the task's last run that did its work ended with, 0 for the others",
                                 [*_LABELS, "result"], registry=r)
        self.duration = Gauge("archiver_task_duration_seconds", "Duration of the task's last run", _LABELS, registry=r)
        self.runs = Counter("archiver_task_runs", "Runs of the task by result", [*_LABELS, "result"], registry=r)
        self.values: dict[str, Gauge | Counter] = {}
        for key, name in RESULT_METRICS.items():
            if name.endswith("_total"):
                self.values[key] = Counter(name.removesuffix("_total"), f"{key.replace('_', ' ')}, all runs together",
                                           _LABELS, registry=r)
            else:
                self.values[key] = Gauge(name, f"Last run's {key.replace('_', ' ')}", _LABELS, registry=r)
        self.schedule_interval = Gauge("archiver_task_schedule_interval_seconds",
                                       "The longest gap between two runs the task's schedule allows", _LABELS,
                                       registry=r)
        self.newest_backup = Gauge("archiver_newest_backup_timestamp_seconds", "End time of the newest backup",
                                   ["policy"], registry=r)
        self.newest_backup_size = Gauge("archiver_newest_backup_size_bytes", "Stored size of the newest backup",
                                        ["policy"], registry=r)
        self.newest_verified = Gauge("archiver_newest_verified_backup_timestamp_seconds",
                                     "End time of the newest backup that passed a restore drill", ["policy"], registry=r)
        self.archive_lag = Gauge("archiver_archive_lag_seconds",
                                 "How long the oldest range past archive_after has waited to be archived (0: none waits)",
                                 ["policy", "table"], registry=r)
        self.cold_bytes = Gauge("archiver_cold_tier_bytes", "Bytes of the table's current archive objects",
                                ["policy", "table"], registry=r)
        self.cold_objects = Gauge("archiver_cold_tier_objects", "Number of the table's current archive objects",
                                  ["policy", "table"], registry=r)
        self.protected = Gauge("archiver_policy_protected", "1 where the policy protects its objects: protection is "
                               "backup_encryption, archive_encryption or object_lock", ["policy", "protection"],
                               registry=r)
        self.notify_failures = Counter("archiver_notify_failures", "Webhook notifications not delivered after every retry",
                                       ["policy", "event"], registry=r)
        self.push_failures = Counter("archiver_push_failures",
                                     "Pushgateway push attempts that failed (visible once a later attempt gets through)",
                                     registry=r)
        self.pitr = PitrGauges(r)  # WAL archive, recoverable window, receivers (ops/pitr_metrics.py)
        self.newest_backup_times: dict[str, float] = {}
        self.newest_verified_times: dict[str, float] = {}
        r.register(_AgeCollector(self))
        if process:
            prometheus_client.ProcessCollector(registry=r)
            prometheus_client.PlatformCollector(registry=r)
            prometheus_client.GCCollector(registry=r)

    # -- runs ---------------------------------------------------------------------------------
    def _count(self, policy: str, task: str, result: str, duration: float) -> None:
        self.duration.labels(policy, task).set(duration)
        for each in RESULTS:  # every result present from the first run on: increase() sees the first one
            self.runs.labels(policy, task, each)
        self.runs.labels(policy, task, result).inc()
        if result in LAST_RESULTS:
            for each in LAST_RESULTS:
                self.last_result.labels(policy, task, each).set(1 if each == result else 0)

    def record_success(self, policy: str, task: str, result: TaskResult, duration: float,
                       finished: float | None = None) -> None:
        """A run that finished: ok, held back (exit 5) or verification failed (exit 4)."""
        self._count(policy, task, result.status, duration)
        stamp = {"ok": self.last_success, "held_back": self.last_held_back,
                 "verification_failed": self.last_failure}[result.status]
        stamp.labels(policy, task).set(finished or time.time())
        for key, metric in self.values.items():
            if key in result.metrics:
                value = float(result.metrics[key])
                if isinstance(metric, Counter):
                    metric.labels(policy, task).inc(max(0.0, value))
                else:
                    metric.labels(policy, task).set(value)

    def record_failure(self, policy: str, task: str, duration: float, result: str = "failed") -> None:
        self._count(policy, task, result, duration)
        if result != "lock_busy":
            self.last_failure.labels(policy, task).set(time.time())

    def record_interrupted(self, policy: str, task: str, duration: float) -> None:
        """A run stopped on request: counted as ``result="interrupted"``, never as a failure."""
        self._count(policy, task, "interrupted", duration)
        self.last_interrupted.labels(policy, task).set(time.time())

    # -- state read from the store (status) ---------------------------------------------------
    def set_schedules(self, policy: str, intervals: dict[str, float]) -> None:
        for task, seconds in intervals.items():
            self.schedule_interval.labels(policy, task).set(seconds)

    def set_newest_backup(self, policy: str, moment: datetime | None, *, verified: bool = False,
                          size: int | None = None) -> None:
        target, gauge = ((self.newest_verified_times, self.newest_verified) if verified
                         else (self.newest_backup_times, self.newest_backup))
        if moment is None:
            target.pop(policy, None)
            return
        target[policy] = moment.timestamp()
        gauge.labels(policy).set(moment.timestamp())
        if size is not None and not verified:
            self.newest_backup_size.labels(policy).set(size)

    def set_archive_table(self, policy: str, table: str, *, lag_seconds: float | None, cold_bytes: int,
                          cold_objects: int) -> None:
        if lag_seconds is not None:  # None: the database was not reachable, the lag is unknown
            self.archive_lag.labels(policy, table).set(lag_seconds)
        self.cold_bytes.labels(policy, table).set(cold_bytes)
        self.cold_objects.labels(policy, table).set(cold_objects)

    def set_protection(self, policy: str, protections: dict[str, bool]) -> None:
        for name, on in protections.items():
            self.protected.labels(policy, name).set(1 if on else 0)

    # -- exposition ---------------------------------------------------------------------------
    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The body and its content type: OpenMetrics when the scraper asks for it (``Accept``)."""
        if "application/openmetrics-text" in accept:
            from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST
            from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

            return openmetrics(self.registry), CONTENT_TYPE_LATEST  # type: ignore[no-untyped-call]
        return generate_latest(self.registry), TEXT_FORMAT

    def exported_names(self) -> set[str]:
        """Every sample name this registry can export (the dashboard test checks its queries against them)."""
        return {sample.name for family in self.registry.collect() for sample in family.samples} | {
            family.name + ("_total" if family.type == "counter" else "") for family in self.registry.collect()}

    def push(self, gateway: str, policy: str, task: str, *, shard: str | None = None, timeout: float = 10,
             attempts: int = 3, max_wait: float = 5.0) -> None:
        """Push this run's metrics into the group (job, policy, task), retried (tenacity, bounded).

        Counters are added to what the group already holds (read back first), and only metrics with
        samples are sent (POST, ``push_add``): a failed run does not wipe the group's last success.
        """
        from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

        grouping = {"policy": policy, "task": task} | ({"shard": shard} if shard else {})

        @retry(stop=stop_after_attempt(attempts), wait=wait_exponential(multiplier=0.5, max=max_wait), reraise=True,
               retry=retry_if_exception_type(OSError))
        def attempt() -> None:
            try:
                previous = gateway_counters(gateway, grouping, timeout=timeout)
                registry = CollectorRegistry(auto_describe=False)
                registry.register(_PushView(self.registry, previous))
                pushadd_to_gateway(gateway, job="archiver", grouping_key=grouping, registry=registry, timeout=timeout)
            except OSError:
                self.push_failures.inc()
                raise

        attempt()


SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def gateway_counters(gateway: str, grouping: dict[str, str], *, timeout: float) -> dict[SampleKey, float]:
    """The counters the Pushgateway holds for the group (job="archiver" plus ``grouping``), by sample."""
    base = gateway if "://" in gateway else f"http://{gateway}"
    with urllib.request.urlopen(urllib.parse.urljoin(base.rstrip("/") + "/", "api/v1/metrics"),
                                timeout=timeout) as response:
        document = json.loads(response.read())
    wanted = {"job": "archiver", **grouping}
    found: dict[SampleKey, float] = {}
    for group in document.get("data") or []:
        if group.get("labels") != wanted:
            continue
        for name, family in group.items():
            if not isinstance(family, dict) or family.get("type") != "COUNTER":
                continue
            for metric in family.get("metrics") or []:
                labels = {k: v for k, v in (metric.get("labels") or {}).items() if k not in ("job", "instance")}
                found[(name, tuple(sorted(labels.items())))] = float(metric.get("value", 0))
    return found


class _PushView(Collector):
    """The registry as pushed: families without samples and ages left out, counters on top of ``previous``."""

    def __init__(self, registry: CollectorRegistry, previous: dict[SampleKey, float]) -> None:
        self.registry = registry
        self.previous = previous

    def collect(self) -> Iterable[Metric]:
        for family in self.registry.collect():
            if not family.samples or family.name in AGE_METRICS:
                continue
            if family.type == "counter":
                family.samples = [sample._replace(value=sample.value + self.previous.get(
                    (sample.name, tuple(sorted(sample.labels.items()))), 0.0)) for sample in family.samples]
            yield family

