"""Session advisory locks: held on a connection of their own, freed by the server when we die."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from ..errors import DatabaseError
from .connect import first_connection, maintenance_dsns, open_connection
from .dsn import redact_dsn, scrub

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
    conn = open_connection(dsn, application_name=holder)
    with _holding_advisory_lock(conn, dsn, name):
        yield


@contextlib.contextmanager
def server_advisory_lock(dsn: str, name: str, *, holder: str) -> Iterator[None]:
    """``advisory_lock`` taken in the server's maintenance database (``postgres``, else ``template1``).

    For a lock about a database that may not exist yet (a restore target): every archiver
    process picks the same maintenance database, so they exclude each other whether or not
    the target exists.
    """
    conn, _ = first_connection(maintenance_dsns(dsn), application_name=holder)
    with _holding_advisory_lock(conn, dsn, name):
        yield


@contextlib.contextmanager
def _holding_advisory_lock(conn: psycopg.Connection[Any], dsn: str, name: str) -> Iterator[None]:
    key = advisory_key(name)
    try:
        got = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (ADVISORY_NAMESPACE, key)).fetchone()
        if not got or not got[0]:
            raise AdvisoryLockBusy(_advisory_holder(conn, key))
        yield
    except psycopg.Error as exc:
        raise DatabaseError(f"advisory lock {name!r} on {redact_dsn(dsn)}: {scrub(str(exc), dsn).strip()}") from None
    finally:
        conn.close()  # ends the session, which releases the lock
