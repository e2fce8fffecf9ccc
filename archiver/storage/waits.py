"""Bounded, visible waits on object storage.

One budget (``storage.timeout``, 2 minutes by default) bounds the whole of one storage
operation: every attempt, every pause between attempts, and the resumed reads of a response
body. The per-attempt connect and read timeouts and the number of attempts are derived from it,
so a stalled endpoint (it accepts connections and never answers) ends in a clear error within
the budget, and each retry logs a warning that says what is retried, which attempt it is and how
much of the budget has gone.

botocore still decides *what* is retryable (its ``standard`` mode: throttling, 5xx, timeouts,
dropped connections); :func:`install` wraps that decision in the budget. Once a stop was
requested (SIGTERM/SIGINT), :class:`BoundedClients` hands out a client with a short clean-up
budget instead, so that aborting an upload cannot hang on a stalled endpoint.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import botocore.exceptions
from botocore.retries import standard

from ..common import log, signals
from ..errors import StoreError

MIN_ATTEMPT_SECONDS = 1.0  # an attempt shorter than this is no use: fewer attempts instead
BACKOFF_SHARE = 0.2  # of the budget, kept for the pauses between attempts
MAX_CONNECT_TIMEOUT = 10.0
_log = log.get_logger("storage")
T = TypeVar("T")
NO_ANSWER_ERRORS = (
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
)


@dataclass(frozen=True)
class WaitBudget:
    """How long one storage operation may wait in all, and over how many attempts at most."""

    total: float = 120.0
    max_attempts: int = 5
    name: str = "the storage.timeout"

    @property
    def attempts(self) -> int:
        usable = self.total * (1 - BACKOFF_SHARE)
        return max(1, min(self.max_attempts, int(usable // MIN_ATTEMPT_SECONDS)))

    @property
    def per_attempt(self) -> float:
        """The longest one attempt may stay silent: connect plus read timeout."""
        return self.total * (1 - BACKOFF_SHARE) / self.attempts

    @property
    def connect_timeout(self) -> float:
        return min(MAX_CONNECT_TIMEOUT, self.per_attempt / 4)

    @property
    def read_timeout(self) -> float:
        return self.per_attempt - self.connect_timeout

    def describe(self) -> str:
        return f"{self.name} of {_seconds(self.total)} ({self.attempts} attempt(s) at most)"


def _seconds(value: float) -> str:
    return f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"


class Wait:
    """The clock of one operation, shared by all its attempts (and by nested calls on its thread)."""

    def __init__(self, budget: WaitBudget, what: str) -> None:
        self.budget = budget
        self.what = what
        self.started = time.monotonic()
        self.retries = 0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def pause_before_retry(self, wanted: float) -> float | None:
        """The pause before one more attempt, shortened to fit the budget; None when no attempt fits."""
        room = self.budget.total - self.elapsed - self.budget.per_attempt
        if room < 0:
            return None
        return max(0.0, min(wanted, room))

    def log_retry(self, what: str, attempt: int, pause: float, error: str) -> None:
        self.retries += 1
        _log.warning("storage.retry", extra=log.fields(
            what=what, attempt=attempt, max_attempts=self.budget.attempts, waited_seconds=round(self.elapsed, 1),
            timeout_seconds=self.budget.total, retry_in_seconds=round(pause, 2), error=log.scrub(error)[:500]))

    def gave_up(self) -> str:
        return f"gave up after {_seconds(self.elapsed)}, {self.budget.describe()}"


_current = threading.local()


@contextlib.contextmanager
def operation(budget: WaitBudget, what: str) -> Iterator[Wait]:
    """One operation's clock; calls made inside it on this thread share it (nested retries too)."""
    outer: Wait | None = getattr(_current, "wait", None)
    if outer is not None:
        yield outer
        return
    wait = Wait(budget, what)
    _current.wait = wait
    try:
        yield wait
    finally:
        _current.wait = None


def retrying(budget: WaitBudget, what: str, attempt: Callable[[], T],
             retryable: tuple[type[BaseException], ...]) -> T:
    """``attempt()`` until it succeeds, again after each ``retryable`` error while the budget
    allows; then a StoreError saying what gave up and after how long. API calls made inside
    ``attempt`` (a resumed GET) share the budget with it."""
    with operation(budget, what) as wait:
        number = 1
        while True:
            try:
                return attempt()
            except retryable as exc:
                pause = wait.pause_before_retry(backoff(number)) if number < budget.attempts else None
                if pause is None:
                    raise StoreError(f"{what} failed: {type(exc).__name__}: {exc}; {wait.gave_up()}") from None
                number += 1
                wait.log_retry(what, number, pause, f"{type(exc).__name__}: {exc}")
                time.sleep(pause)


def backoff(attempt: int) -> float:
    """Full-jitter exponential backoff, as botocore's standard mode: up to 2^(attempt-1) s, 20 s at most."""
    return random.random() * min(20.0, 2.0 ** (attempt - 1))


def describe_request(kwargs: dict[str, Any]) -> str:
    operation_model = kwargs.get("operation")
    url = str((kwargs.get("request_dict") or {}).get("url", "")).split("?")[0]
    return f"{getattr(operation_model, 'name', 'request')} {url}".strip()


def describe_outcome(kwargs: dict[str, Any]) -> str:
    error = kwargs.get("caught_exception")
    if error is not None:
        return f"{type(error).__name__}: {error}"
    response = kwargs.get("response")
    if response is not None:
        http, parsed = response
        code = (parsed or {}).get("Error", {}).get("Code", "")
        return f"HTTP {getattr(http, 'status_code', '?')} {code}".strip()
    return "no answer"


class _BudgetedRetries:
    """botocore's standard retry decision, kept inside one budget per operation."""

    def __init__(self, decide: Callable[..., Any], budget: WaitBudget,
                 on_give_up: Callable[[BaseException], None] | None) -> None:
        self._decide = decide
        self._budget = budget
        self._on_give_up = on_give_up

    def start(self, context: dict[str, Any], **_: Any) -> None:
        """``before-call``: the operation's clock starts before its first attempt."""
        context["archiver_wait"] = getattr(_current, "wait", None) or Wait(self._budget, "")

    def needs_retry(self, **kwargs: Any) -> Any:
        delay = self._decide(**kwargs)
        context = (kwargs.get("request_dict") or {}).get("context") or {}
        wait: Wait = context.get("archiver_wait") or Wait(self._budget, "")
        error = kwargs.get("caught_exception")
        if error is not None:
            error.archiver_wait = wait  # read by the error message: how long, which budget
        if delay is None or delay is False:
            if error is not None and self._on_give_up is not None:
                self._on_give_up(error)
            return delay
        pause = wait.pause_before_retry(float(delay))
        if pause is None:
            if error is not None and self._on_give_up is not None:
                self._on_give_up(error)
            return None
        wait.log_retry(describe_request(kwargs), int(kwargs.get("attempts", 1)) + 1, pause, describe_outcome(kwargs))
        return pause


def install(client: Any, budget: WaitBudget, *, on_give_up: Callable[[BaseException], None] | None = None) -> None:
    """Put botocore's standard retry handler of ``client`` inside ``budget``.

    The client must have been made with ``retries={"mode": "standard", "total_max_attempts":
    budget.attempts}``: its handler is replaced by the same standard handler wrapped in the budget.
    """
    events = client.meta.events
    service = client.meta.service_model.service_id.hyphenize()
    unique_id = f"retry-config-{service}"
    events.unregister(f"needs-retry.{service}", unique_id=unique_id)
    handler = standard.register_retry_handler(client, max_attempts=budget.attempts)
    events.unregister(f"needs-retry.{service}", unique_id=unique_id)
    budgeted = _BudgetedRetries(handler.needs_retry, budget, on_give_up)
    events.register(f"before-call.{service}", budgeted.start)
    events.register(f"needs-retry.{service}", budgeted.needs_retry, unique_id=unique_id)


# Once a stop was requested, clean-up calls (abort an upload, delete what a run stored, write the
# run record) get one short attempt each: the grace period is for all of them together.
CLEANUP_BUDGET = WaitBudget(total=6.0, max_attempts=1, name="the clean-up time after a stop request")


class BoundedClients:
    """The client for the next call: one whose every operation waits at most ``budget``, or, once a
    stop was requested (SIGTERM/SIGINT), one with the short clean-up budget; none at all once the
    endpoint has left a clean-up call unanswered, so that the remaining clean-up fails at once."""

    def __init__(self, new_client: Callable[[WaitBudget], Any], budget: WaitBudget, where: str, *,
                 client: Any = None) -> None:
        self._new_client = new_client
        self._where = where
        self._injected = client is not None  # a test's own client: used as it is
        self.client = client if client is not None else self._bounded(budget)
        self._cleanup: Any = None
        self._unanswered: str | None = None

    def _bounded(self, budget: WaitBudget, on_give_up: Callable[[BaseException], None] | None = None) -> Any:
        client = self._new_client(budget)
        install(client, budget, on_give_up=on_give_up)
        return client

    def current(self) -> Any:
        if not signals.stop_requested() or self._injected:
            return self.client
        if self._unanswered is not None:
            raise StoreError(f"{self._where}: skipped during shutdown: the endpoint did not answer a clean-up call "
                             f"({self._unanswered})")
        if self._cleanup is None:
            self._cleanup = self._bounded(CLEANUP_BUDGET, on_give_up=self._note_unanswered)
        return self._cleanup

    def _note_unanswered(self, error: BaseException) -> None:
        if isinstance(error, NO_ANSWER_ERRORS):
            self._unanswered = f"{type(error).__name__}: {error}"
