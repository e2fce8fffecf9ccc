"""The only module that talks to database drivers (psycopg 3, ADBC).

Everything else asks this module for connections, catalog facts and locks, and never sees a
driver type. DSNs are parsed by libpq's own parser (``psycopg.conninfo``), so redaction is
exact: a password containing ``@`` or ``:`` is found as reliably as a plain one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import conninfo as pg_conninfo

from .errors import DatabaseError, UsageError

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


@contextlib.contextmanager
def connect(dsn: str, *, autocommit: bool = True, application_name: str = "archiver",
            connect_timeout: int = 10) -> Iterator[psycopg.Connection[Any]]:
    """A psycopg connection whose errors never carry the password."""
    try:
        conn = psycopg.connect(dsn, autocommit=autocommit, application_name=application_name,
                               connect_timeout=connect_timeout)
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot connect to {redact_dsn(dsn)}: {_scrub(str(exc), dsn).strip()}") from None
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
