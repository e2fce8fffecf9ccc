"""Storage waits are bounded as a whole and visible: a stalled endpoint (it accepts and never
answers) ends in a clear error within ``storage.timeout``, with a log line per retry.

Real sockets on 127.0.0.1: a server that never answers, and a proxy in front of moto that stops
forwarding mid-response. The tests bound their own waits generously (a hang fails them) but do
not assert durations.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from archiver.errors import StoreError
from archiver.policy.files import load, to_display
from archiver.storage.backends import open_store
from archiver.storage.s3 import S3Store
from archiver.storage.s3_transfer import MiB
from archiver.storage.waits import WaitBudget
from tests.netfault import SilentServer, StallingProxy
from tests.storage_helpers import pattern


def outcome_within(action: Callable[[], Any], bound: float = 120) -> BaseException | None:
    """Run ``action`` on a thread; fail the test if it has not ended after ``bound`` seconds (a hang)."""
    caught: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # handed to the test
            caught.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(bound)
    assert not thread.is_alive(), f"the storage call still waits after {bound}s: the wait is not bounded"
    return caught[0] if caught else None


def retry_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [record.fields for record in caplog.records if record.getMessage() == "storage.retry"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("total, attempts", [(120.0, 5), (3.0, 5), (10.0, 5), (30.0, 1), (3600.0, 20)])
def test_the_attempts_of_one_operation_fit_in_its_total(total: float, attempts: int) -> None:
    budget = WaitBudget(total=total, max_attempts=attempts)
    assert 1 <= budget.attempts <= attempts
    assert budget.connect_timeout + budget.read_timeout == pytest.approx(budget.per_attempt)
    assert budget.connect_timeout <= 10
    assert budget.attempts * budget.per_attempt <= total * 0.8 + 1e-9  # the rest is for the pauses


def test_the_default_budget_is_two_minutes_over_five_attempts() -> None:
    budget = WaitBudget()
    assert (budget.total, budget.attempts) == (120.0, 5)
    assert (budget.connect_timeout, budget.read_timeout) == pytest.approx((4.8, 14.4))


def test_a_stalled_endpoint_fails_within_the_budget_naming_it(caplog: pytest.LogCaptureFixture,
                                                             s3_endpoint: str) -> None:
    """(``s3_endpoint`` only for its test credentials: the server here is a silent one.)"""
    caplog.set_level(logging.WARNING, logger="archiver")
    with SilentServer() as server:
        store = S3Store("bucket", "team/db", endpoint_url=server.url, region="us-east-1", timeout=3)
        listing = outcome_within(lambda: list(store.list("backups/")))
        stat = outcome_within(lambda: store.head("backups/x/manifest.json"))
        assert server.connections >= 4  # both operations were attempted again on new connections
    for error, operation in ((listing, "ListObjectsV2"), (stat, "HeadObject")):
        assert isinstance(error, StoreError)
        message = str(error)
        assert f"no answer from the S3 endpoint (Read timeout on endpoint URL: \"{server.url}/bucket" in message
        assert "the storage.timeout of 3.0s (2 attempt(s) at most)" in message
        retries = [fields for fields in retry_records(caplog) if fields["what"].startswith(operation)]
        assert len(retries) == 1, retry_records(caplog)
        (retry,) = retries
        assert retry["what"].startswith(f"{operation} {server.url}/bucket")
        assert (retry["attempt"], retry["max_attempts"], retry["timeout_seconds"]) == (2, 2, 3.0)
        assert 0 < retry["waited_seconds"] < 3 and retry["error"].startswith("ReadTimeoutError")


def test_a_body_read_that_stalls_resumes_within_one_budget(bucket: str, s3_endpoint: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A response that stops mid-body is resumed with ranged GETs, and those resumes (each with
    botocore's own retries) share one budget: the read ends with an error naming it."""
    caplog.set_level(logging.WARNING, logger="archiver")
    data = pattern(6 * MiB, seed=3)
    S3Store(bucket, "stall", endpoint_url=s3_endpoint, region="us-east-1").put("object.bin", iter([data]))
    upstream = urlsplit(s3_endpoint)
    with StallingProxy(upstream.hostname or "127.0.0.1", upstream.port or 80,
                       stall_after_response_bytes=2 * MiB) as proxy:
        store = S3Store(bucket, "stall", endpoint_url=proxy.url, region="us-east-1", timeout=5)
        received = bytearray()

        def read_all() -> None:
            with store.open("object.bin") as stream:
                while chunk := stream.read(256 * 1024):
                    received.extend(chunk)

        error = outcome_within(read_all)
        assert proxy.stalled.is_set()
    assert isinstance(error, StoreError), error
    assert 0 < len(received) < len(data) and bytes(received) == data[:len(received)]
    # the resumed GET (or the resumed body read) gave up, where the bytes stopped
    assert (f"cannot read {store.url}/object.bin from byte {len(received)}" in str(error)
            or f"reading {store.url}/object.bin at byte {len(received)}" in str(error)), str(error)
    assert "the storage.timeout of 5.0s (4 attempt(s) at most)" in str(error)
    whats = [fields["what"] for fields in retry_records(caplog)]
    assert whats and all(f"{store.url}/object.bin" in what or f"{proxy.url}/{bucket}/stall/object.bin" in what
                         for what in whats), whats


def write_storage_policy(tmp_path: Path, storage: dict[str, Any]) -> Path:
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump({"database": {"dsn": "dbname=app"}, "storage": storage,
                                    "backup": {"schedule": "0 2 * * *"}}, sort_keys=False))
    return path


def test_storage_timeout_is_a_policy_duration_with_a_range(tmp_path: Path) -> None:
    path = write_storage_policy(tmp_path, {"url": "s3://bucket/app", "timeout": "45s"})
    (policy,) = load([path]).policies
    assert policy.storage.timeout.total_seconds() == 45
    assert to_display(policy)["storage"]["timeout"] == "45s"
    store = open_store(policy.storage)
    assert isinstance(store, S3Store) and store.budget.total == 45
    assert store.client.meta.config.read_timeout == pytest.approx(store.budget.read_timeout)
    default = write_storage_policy(tmp_path, {"url": "s3://bucket/app"})
    (policy,) = load([default]).policies
    assert policy.storage.timeout.total_seconds() == 120
    for bad, problem in (("0s", "a duration must be greater than zero"), ("2h", "out of range (got 2h; allowed 1s..1h)"),
                         (30, "expected a duration as a string")):
        broken = write_storage_policy(tmp_path, {"url": "s3://bucket/app", "timeout": bad})
        result = load([broken])
        assert result.policies == []
        (issue,) = result.issues
        assert (issue.key, issue.line) == ("storage.timeout", 5), str(issue)
        assert problem in issue.message
