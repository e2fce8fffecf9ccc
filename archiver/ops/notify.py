"""Webhook notifications (Slack-compatible JSON) on failure, stale backups and failed drills.

A delivery is retried (tenacity: up to ``ATTEMPTS`` tries, backing off, all within about three times
the policy's ``notify.timeout``) on network errors, 5xx and 429 answers; any other 4xx is final. A
notification that still cannot be delivered is logged and counted
(``archiver_notify_failures_total``), never raised: it must not turn a finished task into a failed one.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from ..common import log
from ..policy.schema import Policy

if TYPE_CHECKING:
    from .metrics import Metrics

ATTEMPTS = 3

EVENT_TITLES = {
    "failure": ":red_circle: archiver task failed",
    "stale": ":warning: backup is stale",
    "drill_failed": ":red_circle: restore drill failed",
    "held_back": ":large_yellow_circle: archiver held something back",
}
_log = log.get_logger("notify")


def payload(policy: str, event: str, text: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Slack-compatible: ``text`` for any webhook, ``blocks`` for a readable Slack message."""
    title = EVENT_TITLES.get(event, event)
    lines = "\n".join(f"*{key}*: {value}" for key, value in fields.items() if value is not None)
    return {
        "text": f"{title}: {policy}: {text}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}* ({policy})\n{text}"}},
            *([{"type": "section", "text": {"type": "mrkdwn", "text": lines}}] if lines else []),
        ],
        "archiver": {"policy": policy, "event": event, **fields},
    }


class _Retryable(Exception):
    """A delivery that may succeed when tried again (network error, 5xx, 429)."""


def _post(request: urllib.request.Request, timeout: float) -> None:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
        raise
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        raise _Retryable(str(exc)) from None


def send(policy: Policy, event: str, text: str, *, metrics: Metrics | None = None, **fields: Any) -> bool:
    """Post to the policy's webhook when it subscribes to ``event``; True when delivered."""
    from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

    config = policy.notify
    if config is None or config.webhook_url is None or not config.webhook_url.reveal() or event not in config.on:
        return False
    url = config.webhook_url.reveal()
    log.register_secret(url)  # webhook URLs carry tokens
    body = json.dumps(payload(policy.name or "", event, log.scrub(text), fields), default=str).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    timeout = config.timeout.total_seconds()
    deliver = retry(stop=stop_after_attempt(ATTEMPTS), wait=wait_exponential(multiplier=0.5, max=min(10.0, timeout)),
                    retry=retry_if_exception_type(_Retryable), reraise=True)(_post)
    try:
        deliver(request, timeout)
        _log.info("notify.sent", extra=log.fields(policy=policy.name, notify_event=event))
        return True
    except (_Retryable, urllib.error.HTTPError, OSError) as exc:
        _log.warning("notify.failed", extra=log.fields(policy=policy.name, notify_event=event, attempts=ATTEMPTS,
                                                       error=log.scrub(str(exc))))
        if metrics is not None:
            metrics.notify_failures.labels(policy.name or "", event).inc()
        return False
