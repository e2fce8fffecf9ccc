"""Connections: retries, a safe search_path, scrubbed errors, and :class:`Session`.

Everything else asks the modules of :mod:`archiver.pg` for connections, catalog facts and locks,
and never sees a driver type.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import tenacity

from ..errors import DatabaseError
from .dsn import dsn_with, parse_dsn, redact_dsn, scrub

_log = logging.getLogger("archiver.db")


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
# libpq reports a refused login as a plain connection failure (no SQLSTATE): recognise the
# server's FATAL messages, which say what no retry can change.
_PERMANENT_MESSAGES = (
    (re.compile(r"password authentication failed|authentication failed for user"), "authentication failed"),
    (re.compile(r'FATAL:\s+database ".*" does not exist'), "the database does not exist"),
    (re.compile(r'FATAL:\s+role ".*" does not exist'), "the role does not exist"),
    (re.compile(r"no pg_hba\.conf entry"), "pg_hba.conf rejects this connection"),
    (re.compile(r"permission denied for database"), "permission denied"),
    (re.compile(r"certificate verify failed|SSL error: certificate"), "the server's certificate is not trusted"),
)


def _permanent_reason(sqlstate: str | None, detail: str) -> str | None:
    if sqlstate in _PERMANENT_SQLSTATES:
        return _PERMANENT_SQLSTATES[sqlstate]
    return next((reason for pattern, reason in _PERMANENT_MESSAGES if pattern.search(detail)), None)


class DatabaseMissing(DatabaseError):
    """The server answered, but the database named in the DSN does not exist."""


class _TransientConnectError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- a safe search_path in every session -------------------------------------------------------
#
# Objects in a user's database may be hostile: a role that can CREATE in any schema on the
# search_path can plant a function or operator (hash_record_extended(its_table, integer),
# octet_length(varchar), count(), ...) that an unqualified call would run with archiver's
# privileges, or that ALTER ROLE/DATABASE ... SET search_path puts ahead of pg_catalog. So every
# session archiver opens resolves names in pg_catalog only: pg_temp is never searched for
# functions or operators, and only this session can create objects in it. As pg_dump does, the
# setting is made with set_config() right after connecting, before anything else runs; it
# overrides role and database settings, and survives poolers that drop startup options. Only a
# policy's own SQL checks run with the role's search_path, in a session of their own
# (first_value(..., safe_search_path=False)).
SAFE_SEARCH_PATH = "pg_catalog, pg_temp"
PIN_SEARCH_PATH = "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false)"


def safe_options(dsn: str) -> str:
    """The DSN's ``options`` (or ``$PGOPTIONS``) with the safe search_path appended (later ``-c`` wins).

    For drivers that run queries of their own while connecting (ADBC reads pg_type), where
    only a startup option comes early enough.
    """
    existing = parse_dsn(dsn).get("options") or os.environ.get("PGOPTIONS", "")
    return f"{existing} -c search_path={SAFE_SEARCH_PATH.replace(' ', '')}".strip()


def pin_search_path(conn: psycopg.Connection[Any]) -> None:
    conn.execute(PIN_SEARCH_PATH)
    if not conn.autocommit:
        conn.commit()  # a rolled-back set_config() would be undone


def _open(dsn: str, *, safe_search_path: bool = True, **kwargs: Any) -> psycopg.Connection[Any]:
    try:
        conn = psycopg.connect(dsn, **kwargs)
    except psycopg.Error as exc:
        detail = scrub(str(exc), dsn).strip()
        reason = _permanent_reason(getattr(exc, "sqlstate", None), detail)
        if reason is not None:
            error = DatabaseMissing if reason == "the database does not exist" else DatabaseError
            raise error(f"cannot connect to {redact_dsn(dsn)}: {detail} (permanent: {reason}; not retried)") from None
        raise _TransientConnectError(detail) from None
    if safe_search_path:
        try:
            pin_search_path(conn)
        except psycopg.Error as exc:
            conn.close()
            raise DatabaseError(f"cannot set a safe search_path on {redact_dsn(dsn)}: "
                                f"{scrub(str(exc), dsn).strip()}") from None
    return conn


def open_connection(dsn: str, *, autocommit: bool = True, application_name: str = "archiver",
                    connect_timeout: int = 10, safe_search_path: bool = True) -> psycopg.Connection[Any]:
    """Connect, retrying transient failures with exponential backoff and jitter.

    The session's search_path is ``pg_catalog, pg_temp`` unless ``safe_search_path`` is False
    (only for SQL the operator wrote, which expects the role's own search_path).
    """
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
        return retrying(_open, dsn, safe_search_path=safe_search_path, autocommit=autocommit,
                        application_name=application_name[:63], connect_timeout=connect_timeout, **keepalive)
    except _TransientConnectError as exc:
        raise DatabaseError(f"cannot connect to {redact_dsn(dsn)} after {settings.attempts} attempts: {exc.message}") from None


@contextlib.contextmanager
def connect(dsn: str, *, autocommit: bool = True, application_name: str = "archiver",
            connect_timeout: int = 10, safe_search_path: bool = True) -> Iterator[psycopg.Connection[Any]]:
    """A psycopg connection whose errors never carry the password (search_path: see open_connection)."""
    conn = open_connection(dsn, autocommit=autocommit, application_name=application_name,
                           connect_timeout=connect_timeout, safe_search_path=safe_search_path)
    try:
        with conn:
            yield conn
    except psycopg.Error as exc:
        raise DatabaseError(f"database error on {redact_dsn(dsn)}: {scrub(str(exc), dsn).strip()}") from None


def server_version_num(dsn: str) -> int:
    """``server_version_num`` (e.g. 150018)."""
    with connect(dsn) as conn:
        return int(conn.info.server_version)


def execute(dsn: str, sql: str, params: tuple[Any, ...] | None = None) -> None:
    """Run the operator's own SQL as psql would: with the role's search_path (no task calls this)."""
    with connect(dsn, safe_search_path=False) as conn:
        conn.execute(sql, params)


def query(dsn: str, sql: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    """The rows of the operator's own SQL, run as psql would: with the role's search_path (no task calls this)."""
    with connect(dsn, safe_search_path=False) as conn:
        return list(conn.execute(sql, params).fetchall())


def probe_server(dsn: str, *, timeout: int = 2) -> int:
    """``server_version_num`` with one quick attempt (no retries): for readiness polling."""
    try:
        with psycopg.connect(dsn, connect_timeout=timeout, autocommit=True) as conn:
            pin_search_path(conn)
            return int(conn.info.server_version)
    except psycopg.Error as exc:
        raise DatabaseError(scrub(str(exc), dsn).strip()) from None


def extension_available(dsn: str, name: str) -> bool:
    """Whether the server can CREATE EXTENSION ``name`` (installed files, any version)."""
    with connect(dsn) as conn:
        return conn.execute("SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = %s",
                            (name,)).fetchone() is not None


def execute_script(dsn: str, script: str) -> None:
    """Run the operator's own multi-statement SQL script (no parameters) in one transaction, with the
    role's search_path, as psql would (the demo's data; no task calls this)."""
    with connect(dsn, autocommit=False, safe_search_path=False) as conn:
        conn.execute(script.encode())


# --------------------------------------------------------------------------------------------
# Sessions: one connection for a task, in UTC, with driver errors scrubbed and no driver types
# leaking to callers.

LOCK_NOT_AVAILABLE = "55P03"


class LockTimeout(DatabaseError):
    """A lock could not be taken within the lock timeout (someone else is using the relation)."""


class Session:
    """A psycopg connection behind a small, driver-free interface."""

    def __init__(self, conn: psycopg.Connection[Any], dsn: str) -> None:
        self._conn = conn
        self._dsn = dsn

    def _error(self, exc: psycopg.Error) -> DatabaseError:
        message = f"database error on {redact_dsn(self._dsn)}: {scrub(str(exc), self._dsn).strip()}"
        if getattr(exc, "sqlstate", None) == LOCK_NOT_AVAILABLE:
            return LockTimeout(message)
        return DatabaseError(message)

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        try:
            cursor = self._conn.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description is not None else []
        except psycopg.Error as exc:
            raise self._error(exc) from None

    def query_dicts(self, sql: str, params: tuple[Any, ...] | dict[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            cursor = self._conn.execute(sql, params)
            if cursor.description is None:
                return []
            names = [column.name for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        except psycopg.Error as exc:
            raise self._error(exc) from None

    def scalar(self, sql: str, params: tuple[Any, ...] | dict[str, Any] | None = None) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] | None = None) -> None:
        try:
            self._conn.execute(sql, params)
        except psycopg.Error as exc:
            raise self._error(exc) from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """BEGIN ... COMMIT, or ROLLBACK when the block raises."""
        self.execute("BEGIN")
        try:
            yield self
        except BaseException:
            try:
                self._conn.execute("ROLLBACK")
            except psycopg.Error:
                pass
            raise
        self.execute("COMMIT")


@contextlib.contextmanager
def session(dsn: str, *, application_name: str = "archiver", connect_timeout: int = 10,
            safe_search_path: bool = True) -> Iterator[Session]:
    """An autocommit session in UTC with ISO dates (catalog text such as partition bounds depends on it).

    Its search_path is ``pg_catalog, pg_temp`` (see open_connection); ``safe_search_path=False``
    only for the operator's own SQL (test fixtures), never in a task.
    """
    with connect(dsn, autocommit=True, application_name=application_name, connect_timeout=connect_timeout,
                 safe_search_path=safe_search_path) as conn:
        current = Session(conn, dsn)
        current.execute("SET TIME ZONE 'UTC'")
        current.execute("SET DateStyle = 'ISO, YMD'")
        current.execute("SET IntervalStyle = 'postgres'")
        yield current


def maintenance_dsns(dsn: str) -> list[str]:
    return [dsn_with(dsn, dbname=name) for name in ("postgres", "template1")]


def first_connection(candidates: Sequence[str], *, application_name: str) -> tuple[psycopg.Connection[Any], str]:
    """A connection to the first of ``candidates`` that accepts one, and that candidate."""
    last: DatabaseError | None = None
    for candidate in candidates:
        try:
            return open_connection(candidate, application_name=application_name), candidate
        except DatabaseError as exc:
            last = exc
    assert last is not None
    raise last
