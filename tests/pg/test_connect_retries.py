"""Transient failures are retried with backoff and jitter; permanent ones fail fast and say so.

(Store-side retries against moto with botocore event hooks: tests/storage/test_s3.py.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from archiver.errors import DatabaseError
from archiver.pg import connect
from archiver.pg.connect import CONNECT_RETRY, ConnectRetry, query
from archiver.pg.scratch import LocalPostgres, free_port
from tests.netfault import CuttingProxy


@pytest.fixture
def quick_retries() -> Iterator[ConnectRetry]:
    saved = (CONNECT_RETRY.attempts, CONNECT_RETRY.max_seconds, CONNECT_RETRY.max_wait)
    CONNECT_RETRY.attempts, CONNECT_RETRY.max_seconds, CONNECT_RETRY.max_wait = 8, 60.0, 1.0
    yield CONNECT_RETRY
    CONNECT_RETRY.attempts, CONNECT_RETRY.max_seconds, CONNECT_RETRY.max_wait = saved


def test_a_server_that_comes_up_late_is_reached_by_retrying(pg: LocalPostgres, quick_retries: ConnectRetry) -> None:
    """Nothing listens on the port at first (connection refused); a forwarder to the real server
    appears 1.5 s later, as a restarting server or a network blip would."""
    port = free_port()
    proxies: list[CuttingProxy] = []
    timer = threading.Timer(1.5, lambda: proxies.append(CuttingProxy("127.0.0.1", pg.port or 0, port=port)))
    timer.start()
    started = time.monotonic()
    try:
        dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2"
        assert query(dsn, "SELECT 42") == [(42,)]
        assert time.monotonic() - started >= 1.5  # it had to wait for the forwarder: retries happened
    finally:
        timer.cancel()
        for proxy in proxies:
            proxy.close()


def test_refused_connections_give_up_after_the_bounded_attempts(quick_retries: ConnectRetry) -> None:
    quick_retries.attempts = 3
    dsn = f"host=127.0.0.1 port={free_port()} user=app password=hunter2-secret dbname=app connect_timeout=1"
    with pytest.raises(DatabaseError, match="after 3 attempts") as caught:
        query(dsn, "SELECT 1")
    assert "hunter2-secret" not in str(caught.value)


def test_a_missing_database_is_permanent_and_not_retried(pg: LocalPostgres, quick_retries: ConnectRetry) -> None:
    attempts: list[int] = []
    original = connect._open

    def counting(dsn: str, **kwargs: object) -> object:
        attempts.append(1)
        return original(dsn, **kwargs)

    connect._open = counting  # type: ignore[assignment]
    try:
        with pytest.raises(DatabaseError, match=r"does not exist \(permanent: the database does not exist; not retried\)"):
            query(pg.dsn("no_such_database"), "SELECT 1")
    finally:
        connect._open = original  # type: ignore[assignment]
    assert len(attempts) == 1
