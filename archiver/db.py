"""The only module that talks to database drivers (psycopg 3, ADBC).

Everything else asks this module for connections, catalog facts and locks, and never sees a
driver type. DSNs are parsed by libpq's own parser (``psycopg.conninfo``), so redaction is
exact: a password containing ``@`` or ``:`` is found as reliably as a plain one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import tenacity
from psycopg import conninfo as pg_conninfo

from .errors import DatabaseError, UsageError

_log = logging.getLogger("archiver.db")

REDACTED = "********"
_SECRET_KEYS = ("password", "sslpassword")


def parse_dsn(dsn: str) -> dict[str, str]:
    """Split a libpq DSN (URI or key=value) into its parameters."""
    try:
        return {k: str(v) for k, v in pg_conninfo.conninfo_to_dict(dsn).items() if v is not None}
    except psycopg.ProgrammingError as exc:
        raise UsageError(f"not a valid PostgreSQL connection string: {_scrub(str(exc), dsn)}") from None


def redact_dsn(dsn: str) -> str:
    """The DSN as key=value pairs with every secret replaced; safe for logs and manifests."""
    try:
        params = parse_dsn(dsn)
    except UsageError:
        return "<unparseable dsn>"
    for key in _SECRET_KEYS:
        if key in params:
            params[key] = REDACTED
    return pg_conninfo.make_conninfo("", **params)


def dsn_has_password(dsn: str) -> bool:
    return bool(parse_dsn(dsn).get("password"))


def dsn_with(dsn: str, **overrides: str) -> str:
    """The same connection with some parameters replaced (e.g. another dbname)."""
    return pg_conninfo.make_conninfo(dsn, **overrides)


def dsn_env(dsn: str) -> dict[str, str]:
    """libpq environment variables equivalent to ``dsn``.

    External programs (pg_dump, pg_restore, psql) get their connection through the
    environment, so no password ever appears in an argv that ``ps`` can show.
    """
    mapping = {
        "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE",
        "user": "PGUSER", "password": "PGPASSWORD", "passfile": "PGPASSFILE",
        "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT",
        "sslkey": "PGSSLKEY", "sslpassword": "PGSSLPASSWORD", "connect_timeout": "PGCONNECT_TIMEOUT",
        "application_name": "PGAPPNAME", "options": "PGOPTIONS", "service": "PGSERVICE",
        "target_session_attrs": "PGTARGETSESSIONATTRS", "gssencmode": "PGGSSENCMODE",
        "channel_binding": "PGCHANNELBINDING", "krbsrvname": "PGKRBSRVNAME",
    }
    env: dict[str, str] = {}
    for key, value in parse_dsn(dsn).items():
        if key in mapping:
            env[mapping[key]] = value
    return env


def _scrub(message: str, dsn: str) -> str:
    """Remove the DSN's secrets from a driver message (exact strings, not patterns)."""
    try:
        params = pg_conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return message.replace(dsn, "<dsn>") if dsn else message
    for key in _SECRET_KEYS:
        secret = params.get(key)
        if secret:
            message = message.replace(str(secret), REDACTED)
    return message


@dataclass
class ConnectRetry:
    """How hard to try a connection that fails for a reason that may pass (server restarting,
    network blip, too many connections). Authentication and missing databases are not retried."""

    attempts: int = 5
    max_seconds: float = 60.0
    max_wait: float = 10.0


CONNECT_RETRY = ConnectRetry()
_PERMANENT_SQLSTATES = {
    "28P01": "authentication failed",
    "28000": "not authorised",
    "3D000": "the database does not exist",
    "42501": "permission denied",
}


class _TransientConnectError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _open(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.Error as exc:
        detail = _scrub(str(exc), dsn).strip()
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate in _PERMANENT_SQLSTATES or "password authentication failed" in detail:
            reason = _PERMANENT_SQLSTATES.get(sqlstate or "", "authentication failed")
            raise DatabaseError(f"cannot connect to {redact_dsn(dsn)}: {detail} (permanent: {reason}; not retried)") from None
        raise _TransientConnectError(detail) from None


def open_connection(dsn: str, *, autocommit: bool = True, application_name: str = "archiver",
                    connect_timeout: int = 10) -> psycopg.Connection[Any]:
    """Connect, retrying transient failures with exponential backoff and jitter."""
    settings = CONNECT_RETRY
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_TransientConnectError),
        stop=tenacity.stop_after_attempt(settings.attempts) | tenacity.stop_after_delay(settings.max_seconds),
        wait=tenacity.wait_random_exponential(multiplier=0.5, max=settings.max_wait),
        before_sleep=lambda state: _log.warning("db.connect.retry", extra={"fields": {
            "target": redact_dsn(dsn), "attempt": state.attempt_number,
            "error": str(state.outcome.exception()) if state.outcome else ""}}),
        reraise=True,
    )
    keepalive = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
    try:
        return retrying(_open, dsn, autocommit=autocommit, application_name=application_name[:63],
                        connect_timeout=connect_timeout, **keepalive)
    except _TransientConnectError as exc:
        raise DatabaseError(f"cannot connect to {redact_dsn(dsn)} after {settings.attempts} attempts: {exc.message}") from None


@contextlib.contextmanager
def connect(dsn: str, *, autocommit: bool = True, application_name: str = "archiver",
            connect_timeout: int = 10) -> Iterator[psycopg.Connection[Any]]:
    """A psycopg connection whose errors never carry the password."""
    conn = open_connection(dsn, autocommit=autocommit, application_name=application_name,
                           connect_timeout=connect_timeout)
    try:
        with conn:
            yield conn
    except psycopg.Error as exc:
        raise DatabaseError(f"database error on {redact_dsn(dsn)}: {_scrub(str(exc), dsn).strip()}") from None


def server_version_num(dsn: str) -> int:
    """``server_version_num`` (e.g. 150018)."""
    with connect(dsn) as conn:
        return int(conn.info.server_version)


def execute(dsn: str, sql: str, params: tuple[Any, ...] | None = None) -> None:
    with connect(dsn) as conn:
        conn.execute(sql, params)  # type: ignore[arg-type]


def query(dsn: str, sql: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    with connect(dsn) as conn:
        return list(conn.execute(sql, params).fetchall())  # type: ignore[arg-type]


# -- advisory locks ----------------------------------------------------------------------------

ADVISORY_NAMESPACE = 0x41524348  # 'ARCH': the first key of every archiver advisory lock


def advisory_key(name: str) -> int:
    """A stable positive int4 for a lock name (e.g. ``telemetry:backup``)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class LockHolder:
    pid: int
    application_name: str
    client: str
    since: Any  # datetime of the holder's connection start


def _advisory_holder(conn: psycopg.Connection[Any], key: int) -> LockHolder | None:
    row = conn.execute(
        """SELECT a.pid, a.application_name, coalesce(host(a.client_addr), 'local socket'), a.backend_start
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::oid AND l.objid = %s::oid
              AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
        (ADVISORY_NAMESPACE, key)).fetchone()
    return LockHolder(*row) if row else None


class AdvisoryLockBusy(Exception):
    def __init__(self, holder: LockHolder | None) -> None:
        super().__init__("advisory lock busy")
        self.holder = holder


@contextlib.contextmanager
def advisory_lock(dsn: str, name: str, *, holder: str) -> Iterator[None]:
    """Hold a session advisory lock on its own connection for the duration of the block.

    The server frees it if this process dies (the connection closes; TCP keepalives catch a
    vanished host). ``holder`` is shown to whoever finds the lock busy, as application_name.
    Raises AdvisoryLockBusy at once when another session holds it (no waiting).
    """
    key = advisory_key(name)
    conn = open_connection(dsn, application_name=holder)
    try:
        got = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (ADVISORY_NAMESPACE, key)).fetchone()
        if not got or not got[0]:
            raise AdvisoryLockBusy(_advisory_holder(conn, key))
        yield
    except psycopg.Error as exc:
        raise DatabaseError(f"advisory lock {name!r} on {redact_dsn(dsn)}: {_scrub(str(exc), dsn).strip()}") from None
    finally:
        conn.close()  # ends the session, which releases the lock


def probe_server(dsn: str, *, timeout: int = 2) -> int:
    """``server_version_num`` with one quick attempt (no retries): for readiness polling."""
    try:
        with psycopg.connect(dsn, connect_timeout=timeout, autocommit=True) as conn:
            return int(conn.info.server_version)
    except psycopg.Error as exc:
        raise DatabaseError(_scrub(str(exc), dsn).strip()) from None


def extension_available(dsn: str, name: str) -> bool:
    """Whether the server can CREATE EXTENSION ``name`` (installed files, any version)."""
    return bool(query(dsn, "SELECT 1 FROM pg_available_extensions WHERE name = %s", (name,)))
