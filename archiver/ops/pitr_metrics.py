"""Prometheus gauges of point-in-time recovery, per policy (the worker exports them on /metrics).

- ``archiver_wal_last_archived_timestamp_seconds``: when the newest archived WAL file was completed
  (alert when ``time() -`` it exceeds the policy's rpo);
- ``archiver_pitr_window_start_timestamp_seconds``: the start of the recoverable window (the oldest
  restorable base backup's end);
- ``archiver_wal_receiver_up`` (1/0) and ``archiver_wal_receiver_restarts_total``: the worker's
  receivers of ``stream`` policies.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge


class PitrGauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.last_archived = Gauge("archiver_wal_last_archived_timestamp_seconds",
                                   "When the newest archived WAL file was completed", ["policy"], registry=registry)
        self.window_start = Gauge("archiver_pitr_window_start_timestamp_seconds",
                                  "Start of the recoverable window (the oldest restorable base backup's end)",
                                  ["policy"], registry=registry)
        self.receiver_up = Gauge("archiver_wal_receiver_up", "1 while the worker's WAL receiver of the policy runs",
                                 ["policy"], registry=registry)
        self.receiver_restarts = Counter("archiver_wal_receiver_restarts", "Restarts of the worker's WAL receiver",
                                         ["policy"], registry=registry)

    def archived(self, policy: str, completed: datetime | None) -> None:
        """A newer archived WAL file (never moves the gauge back)."""
        if completed is None:
            return
        gauge = self.last_archived.labels(policy)
        gauge.set(max(gauge._value.get(), completed.timestamp()))

    def window(self, policy: str, start: datetime | None) -> None:
        if start is not None:
            self.window_start.labels(policy).set(start.timestamp())
