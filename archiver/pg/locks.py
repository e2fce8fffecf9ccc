"""Session advisory locks: held on a connection of their own, freed by the server when we die."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from ..common.owner import holder_description
from ..common.timeutil import isoformat, utcnow
from ..errors import DatabaseError, LockBusy
from .connect import first_connection, maintenance_dsns, open_connection
from .dsn import parse_dsn, redact_dsn, scrub
from .lockspec import DatabaseLock

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
def advisory_lock(dsn: str, name: str, *, holder: str, shared: bool = False, also: str | None = None) -> Iterator[None]:
    """Hold a session advisory lock on its own connection for the duration of the block.

    The server frees it if this process dies (the connection closes; TCP keepalives catch a
    vanished host). ``holder`` is shown to whoever finds the lock busy, as application_name.
    Raises AdvisoryLockBusy at once when another session holds it (no waiting).
    """
    conn = open_connection(dsn, application_name=holder)
    with _holding_advisory_lock(conn, dsn, name, shared=shared, also=also):
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
def _holding_advisory_lock(conn: psycopg.Connection[Any], dsn: str, name: str, *, shared: bool = False,
                           also: str | None = None) -> Iterator[None]:
    """``name`` (in shared mode when ``shared``), then ``also`` exclusively, on ``conn``; both freed
    when the connection closes."""
    try:
        for lock, mode in ((name, "shared" if shared else "exclusive"), (also, "exclusive")):
            if lock is None:
                continue
            key = advisory_key(lock)
            function = "pg_try_advisory_lock_shared" if mode == "shared" else "pg_try_advisory_lock"
            got = conn.execute(f"SELECT pg_catalog.{function}(%s, %s)", (ADVISORY_NAMESPACE, key)).fetchone()
            if not got or not got[0]:
                raise AdvisoryLockBusy(_advisory_holder(conn, key))
        yield
    except psycopg.Error as exc:
        raise DatabaseError(f"advisory lock {name!r} on {redact_dsn(dsn)}: {scrub(str(exc), dsn).strip()}") from None
    finally:
        conn.close()  # ends the session, which releases the lock


@contextlib.contextmanager
def database_lock(dsn: str, lock: DatabaseLock, *, policy: str | None, task: str,
                  target: str | None = None) -> Iterator[None]:
    """Hold ``lock`` of ``policy`` for ``task`` on ``dsn`` (its database, or ``target``); LockBusy at once if taken."""
    where = "the database lock" if target is None else f"the lock on {redact_dsn(target)}"
    try:
        with advisory_lock(dsn, f"{policy}:{lock.name}", holder=holder_description(task, policy or ""),
                           shared=lock.share_mode, also=f"{policy}:{lock.name}:{lock.part}" if lock.part else None):
            yield
    except AdvisoryLockBusy as busy:
        what = f"{task} of policy {policy!r}" + (
            f" cannot start: {lock.shared} is busy" if lock.shared else " is already running")
        raise lock_busy(what, where, busy.holder) from None


@contextlib.contextmanager
def restore_target_lock(dsn: str, *, policy: str) -> Iterator[None]:
    """The lock of a restore target database, which may not exist yet.

    Held in the server's maintenance database and keyed by the target's name, whatever the
    policy: two restores into the same database exclude each other from before the database
    is created until their result is checked.
    """
    target = parse_dsn(dsn).get("dbname", "")
    holder = holder_description("restore", policy)
    try:
        with server_advisory_lock(dsn, f"restore-target:{target}", holder=holder):
            yield
    except AdvisoryLockBusy as busy:
        raise lock_busy(f"restore into database {target!r} cannot start", f"the restore lock of {redact_dsn(dsn)}",
                        busy.holder) from None


def lock_busy(what: str, where: str, holder: LockHolder | None) -> LockBusy:
    """The error for a lock another session holds, naming that session and since when."""
    who = (f"{holder.application_name or 'an unnamed session'} (server pid {holder.pid}, from {holder.client}) "
           f"{_describe_since(holder.since)}") if holder else "another session (it ended while we looked)"
    return LockBusy(f"{what}: {where} is held by {who}",
                    hint="wait for it to finish; the lock is freed when that process ends")


def _describe_since(moment: Any) -> str:
    if isinstance(moment, datetime):
        age = utcnow() - moment
        return f"since {isoformat(moment)} ({int(age.total_seconds())}s ago)"
    return "since an unknown time"
