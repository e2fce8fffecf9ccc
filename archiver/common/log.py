"""Logging: readable lines on a terminal, JSON lines otherwise; one event per step.

Call sites log events with structured fields: ``log.info("backup.done", extra=fields(...))``.
Secrets never reach a log call: DSNs are logged only through :func:`archiver.pg.dsn.redact_dsn`.
As a second line of defence, a filter replaces the exact text of every secret registered with
:func:`register_secret` (a DSN's password, say) wherever it would appear in a record.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any

REDACTED = "********"  # what a secret is replaced with, wherever it would appear

LOGGER_NAME = "archiver"
_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def get_logger(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def fields(**values: Any) -> dict[str, Any]:
    """Structured fields for ``extra=``; None values are left out."""
    return {"fields": {k: v for k, v in values.items() if v is not None}}


def register_secret(value: str | None) -> None:
    """Never print this exact text in a log record (only values of 4+ characters are tracked)."""
    if value and len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)


def scrub(text: str) -> str:
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    values = dict(getattr(record, "fields", {}) or {})
    for key, value in vars(record).items():
        if key not in _STANDARD_ATTRS and key != "fields":
            values[key] = value
    return values


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            **_record_fields(record),
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return scrub(json.dumps(event, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%SZ")  # UTC, like everything else
        extras = " ".join(f"{k}={_short(v)}" for k, v in _record_fields(record).items())
        line = f"{moment} {record.levelname.lower():7s} {record.getMessage()}" + (f"  {extras}" if extras else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return scrub(line)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if " " not in text else json.dumps(text)


def level_for(verbosity: int, terminal: bool) -> int:
    """On a terminal, warnings and errors (the progress line and the results stay readable), -v info,
    -vv debug, -q errors only; elsewhere (logs collected by cron, Kubernetes, the worker) info, -v debug,
    -q warnings."""
    if terminal:
        return {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(max(-1, min(verbosity, 2)), logging.DEBUG)
    return logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO


def setup(log_format: str = "auto", verbosity: int = 0, stream: Any = None) -> None:
    """Configure the ``archiver`` logger (levels: :func:`level_for`)."""
    stream = stream or sys.stderr
    terminal = bool(getattr(stream, "isatty", lambda: False)())
    if log_format == "auto":
        log_format = "text" if terminal else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(level_for(verbosity, terminal))
