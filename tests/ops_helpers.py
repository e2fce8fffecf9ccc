"""Helpers for the tests of running tasks: the runner, the worker, interrupts."""

from __future__ import annotations

import time

import psycopg

from archiver.ops.metrics import Metrics
from archiver.policy.fields import Secret
from archiver.policy.schema import DatabaseConfig, NotifyConfig, Policy, StorageConfig
from archiver.storage.local import LocalStore


def seeded(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE devices (id serial PRIMARY KEY, name text)")
        conn.execute("INSERT INTO devices (name) SELECT 'device-' || g FROM generate_series(1, 200) g")
    return dsn


def wait_for(condition, timeout: float = 60, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def pg_dump_waiting(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'archiver pg_dump%%' "
                           "AND wait_event_type = 'Lock'").fetchone()
    return bool(row and row[0])


class TableLock:
    """Holds ACCESS EXCLUSIVE on a table so pg_dump stalls (deterministically) inside a backup."""

    def __init__(self, dsn: str, table: str) -> None:
        self.conn = psycopg.connect(dsn)
        self.conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def policy_with_hook(dsn: str, store: LocalStore, hook: str | None) -> Policy:
    notify = NotifyConfig(webhook_url=Secret(hook)) if hook else None
    return Policy(database=DatabaseConfig(dsn=Secret(dsn)), storage=StorageConfig(url=f"file://{store.root}"),
                  name="app", notify=notify, source="app.yaml")


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)
