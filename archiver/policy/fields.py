"""Field types of the policy schema: :class:`Secret`, and ``Annotated`` metadata that parses and checks.

The parsers that need a driver or a scheduler (DSN syntax, cron) import them when a policy is
built, not when this module is imported: the schema stays light for the pure modules that use it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

from ..common.log import REDACTED
from ..common.timeutil import DURATION_MAX, DurationError, format_duration_limit, parse_duration
from ..errors import UsageError
from .expect import ExpectationError, parse_expectation
from .issues import show

MAX_COUNT = 1_000_000  # keep_* and min_keep: far beyond any real retention, far below anything that overflows


# --------------------------------------------------------------------------------------------
# Secrets


class Secret:
    """A value that must never be printed: ``str()``/``repr()`` show it redacted."""

    __slots__ = ("_value", "_redacted")

    def __init__(self, value: str, redacted: str = REDACTED) -> None:
        self._value = value
        self._redacted = redacted

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self._redacted!r})"

    def __str__(self) -> str:
        return self._redacted

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# --------------------------------------------------------------------------------------------
# Field metadata used in Annotated[...] hints


@dataclass(frozen=True)
class Parse:
    """Turn the raw value into the field's value; raise ValueError with the reason."""

    function: Callable[[Any], Any]
    allowed: str


@dataclass(frozen=True)
class Check:
    """Return an error message, or None when the (converted) value is fine."""

    function: Callable[[Any], str | None]


@dataclass(frozen=True)
class RawCheck:
    """Like Check, but sees the text as written, before ``${VAR}`` interpolation."""

    function: Callable[[str], str | None]


def int_range(low: int | None = None, high: int | None = None) -> Check:
    def check(value: Any) -> str | None:
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"{low}..{high}" if high is not None else f">= {low}"
            return f"out of range (got {value}; allowed {bounds})"
        return None
    return Check(check)


def text_pattern(regex: str, allowed: str) -> Check:
    compiled = re.compile(regex)

    def check(value: Any) -> str | None:
        return None if compiled.fullmatch(value) else f"invalid value (got {show(value)}; allowed {allowed})"
    return Check(check)


def _parse_cron(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a cron expression as a string")
    from ..common.cron import CronError, cron_trigger  # APScheduler: loaded when a policy is built

    try:
        cron_trigger(value)
    except CronError as exc:
        raise ValueError(f"bad cron expression: {exc}") from None
    return " ".join(value.split())


def duration_field(maximum: timedelta = DURATION_MAX) -> Parse:
    """A duration key: ``90d``, ``12h``, ``2y``, from 1s up to ``maximum``."""

    def parse(value: Any) -> timedelta:
        if not isinstance(value, str):
            raise ValueError("expected a duration as a string")
        try:
            return parse_duration(value, maximum=maximum)
        except DurationError as exc:
            raise ValueError(str(exc)) from None
    return Parse(parse, f"a number and a unit: s, min, h, d, w, mo (30 days), y (365 days) (e.g. 90d, 12h, 2y), from 1s up to "
                        f"{format_duration_limit(maximum)}")


def parse_expect(value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError("expected an expectation as a string")
    try:
        parse_expectation(str(value))
    except ExpectationError as exc:
        raise ValueError(str(exc)) from None
    return str(value)


def _as_secret(value: Any) -> Secret:
    return Secret(str(value))


Cron = Annotated[str, Parse(_parse_cron, "5-field cron, e.g. '0 2 * * *' (02:00 daily) or '0 3 * * 0' (Sundays 03:00)")]
Duration = Annotated[timedelta, duration_field()]
Count = Annotated[int, int_range(0, MAX_COUNT)]
Identifier = Annotated[str, text_pattern(r"[a-z0-9][a-z0-9_.-]{0,62}",
                                         "lowercase letters, digits, '_', '.', '-'; starting with a letter or digit")]


def _no_literal_password(raw: str) -> str | None:
    """A DSN written in the file may reference ``${VARS}`` but may not spell out a password."""
    placeholder = "ARCHIVERENVPLACEHOLDER"
    text = ENV_REF.sub(placeholder, raw)
    if placeholder in text and not text.replace(placeholder, "").strip():
        return None
    from ..pg.dsn import parse_dsn  # psycopg: loaded when a policy is built

    try:
        params = parse_dsn(text)
    except UsageError:
        return None  # reported by the DSN syntax check after interpolation
    password = params.get("password", "")
    if password and password.replace(placeholder, "") != "":
        return ("contains a literal password (got password=********; allowed: no password in the file - "
                "use ${ENV_VAR} for the whole DSN, PGPASSWORD, a ~/.pgpass / PGPASSFILE, or dsn_file)")
    return None


def _dsn_syntax(value: Secret) -> str | None:
    from ..pg.dsn import parse_dsn  # psycopg: loaded when a policy is built

    try:
        parse_dsn(value.reveal())
    except UsageError as exc:
        return str(exc)
    return None


Dsn = Annotated[Secret, RawCheck(_no_literal_password), Parse(_as_secret, "a libpq DSN"), Check(_dsn_syntax)]


def _env_only(raw: str) -> str | None:
    if not ENV_REF.fullmatch(raw.strip()):
        return "must come from the environment (got a literal URL; allowed: ${ENV_VAR}) - webhook URLs carry tokens"
    return None


def _webhook_url(value: Secret) -> str | None:
    parts = urlsplit(value.reveal())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an http(s) URL once read from the environment (the value is not shown: webhook URLs carry tokens)"
    return None


SecretFromEnv = Annotated[Secret, RawCheck(_env_only), Parse(_as_secret, "${ENV_VAR}"), Check(_webhook_url)]


# --------------------------------------------------------------------------------------------
# Environment interpolation

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
