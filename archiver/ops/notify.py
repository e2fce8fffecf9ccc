"""Webhook notifications (Slack-compatible JSON) on failure, stale backups and failed drills.

A notification that cannot be delivered is logged, never raised: it must not turn a finished
task into a failed one.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from ..common import log
from ..policy.schema import Policy

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


def send(policy: Policy, event: str, text: str, **fields: Any) -> bool:
    """Post to the policy's webhook when it subscribes to ``event``; True when delivered."""
    config = policy.notify
    if config is None or config.webhook_url is None or not config.webhook_url.reveal() or event not in config.on:
        return False
    url = config.webhook_url.reveal()
    log.register_secret(url)  # webhook URLs carry tokens
    body = json.dumps(payload(policy.name or "", event, log.scrub(text), fields), default=str).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=config.timeout.total_seconds()) as response:
            response.read()
        _log.info("notify.sent", extra=log.fields(policy=policy.name, notify_event=event))
        return True
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        _log.warning("notify.failed", extra=log.fields(policy=policy.name, notify_event=event, error=log.scrub(str(exc))))
        return False
