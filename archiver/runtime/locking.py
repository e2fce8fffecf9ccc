"""Never run the same task on the same database twice at once (worker, CronJob and human alike).

Two kinds of lock, both reported at once when busy (exit code 3, naming the holder and since when):

- a PostgreSQL advisory lock on the source database, held on its own connection for the task's
  duration; the server frees it when the process dies;
- a lease object in the store for store-only work (prune, cold expiry, drills), created with a
  create-only write and renewed while the task runs; a holder that died stops renewing, and its
  lease is taken over once it has expired, or at once when the holder was a process on this
  host that is gone (the lease records its owner: :mod:`archiver.owner`).

A running backup also holds a lease on its backup id, which prune respects (``backup_lease``).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from ..common import log
from ..common.owner import ProcessIdentity
from ..common.timeutil import isoformat, parse_timestamp, utcnow
from ..errors import LockBusy, ObjectExists, ObjectNotFound
from ..pg.dsn import parse_dsn, redact_dsn
from ..pg.locks import AdvisoryLockBusy, LockHolder, advisory_lock, server_advisory_lock
from ..policy.schema import Policy
from ..storage.base import Store
from ..storage.documents import read_json, write_json

LOCKS_PREFIX = "locks/"

# Which locks each task takes. Store-only work must not depend on the database being up.
TASK_LOCKS: dict[str, tuple[str, ...]] = {
    "backup": ("database",),
    "archive": ("database",),
    "retention": ("database", "store"),
    "prune": ("store",),
    "verify": ("store",),
    "restore-archive": ("database",),
}

# Tasks that must not overlap each other share a database lock: archive and retention both
# decide about the same chunks (a chunk being re-exported must not be dropped meanwhile), and
# restore-archive writes rows into the ranges they look at.
DATABASE_LOCK_NAMES = {"archive": "cold-tier", "retention": "cold-tier", "restore-archive": "cold-tier"}
LOCK_DESCRIPTIONS = {"cold-tier": "the cold tier (archive, retention, restore-archive)"}

_log = log.get_logger("lock")


def holder_description(task: str, policy: str) -> str:
    """Who we are, as shown to a run that finds the lock busy (fits application_name)."""
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    return f"archiver {task} {policy} {user}@{socket.gethostname()} pid {os.getpid()}"[:63]


def _describe_since(moment: Any) -> str:
    if isinstance(moment, datetime):
        age = utcnow() - moment
        return f"since {isoformat(moment)} ({int(age.total_seconds())}s ago)"
    return "since an unknown time"


@contextlib.contextmanager
def database_lock(policy: Policy, task: str, *, dsn: str | None = None) -> Iterator[None]:
    """The advisory lock of ``task`` on the policy's database, or on ``dsn`` (a restore target)."""
    lock = DATABASE_LOCK_NAMES.get(task, task)
    name = f"{policy.name}:{lock}"
    where = "the database lock" if dsn is None else f"the lock on {redact_dsn(dsn)}"
    try:
        with advisory_lock(dsn or policy.database.resolved_dsn(), name,
                              holder=holder_description(task, policy.name or "")):
            yield
    except AdvisoryLockBusy as busy:
        what = f"{task} of policy {policy.name!r}" + (
            f" cannot start: {LOCK_DESCRIPTIONS[lock]} is busy" if lock in LOCK_DESCRIPTIONS else " is already running")
        raise _busy(what, where, busy.holder) from None


@contextlib.contextmanager
def restore_target_lock(policy: Policy, dsn: str) -> Iterator[None]:
    """The lock of a restore target database, which may not exist yet.

    Held in the server's maintenance database and keyed by the target's name, whatever the
    policy: two restores into the same database exclude each other from before the database
    is created until their result is checked.
    """
    target = parse_dsn(dsn).get("dbname", "")
    holder = holder_description("restore", policy.name or "")
    try:
        with server_advisory_lock(dsn, f"restore-target:{target}", holder=holder):
            yield
    except AdvisoryLockBusy as busy:
        raise _busy(f"restore into database {target!r} cannot start", f"the restore lock of {redact_dsn(dsn)}",
                    busy.holder) from None


def _busy(what: str, where: str, holder: LockHolder | None) -> LockBusy:
    who = (f"{holder.application_name or 'an unnamed session'} (server pid {holder.pid}, from {holder.client}) "
           f"{_describe_since(holder.since)}") if holder else "another session (it ended while we looked)"
    return LockBusy(f"{what}: {where} is held by {who}",
                    hint="wait for it to finish; the lock is freed when that process ends")


class StoreLease:
    """A lease object ``locks/<name>.json``: create-only, renewed every ``renew_every``."""

    def __init__(self, store: Store, name: str, holder: str, *, ttl: timedelta = timedelta(minutes=10),
                 renew_every: timedelta = timedelta(minutes=1)) -> None:
        self.store = store
        self.key = f"{LOCKS_PREFIX}{name}.json"
        self.name = name
        self.holder = holder
        self.ttl = ttl
        self.renew_every = renew_every
        self.token = uuid.uuid4().hex
        self.acquired_at = utcnow()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _document(self) -> dict[str, Any]:
        now = utcnow()
        return {"holder": self.holder, "token": self.token, "acquired_at": isoformat(self.acquired_at),
                "renewed_at": isoformat(now), "expires_at": isoformat(now + self.ttl),
                "owner": ProcessIdentity.current().to_json()}

    def _current(self) -> dict[str, Any] | None:
        try:
            return read_json(self.store, self.key)
        except ObjectNotFound:
            return None

    def acquire(self) -> None:
        for _ in range(3):
            try:
                write_json(self.store, self.key, self._document(), if_absent=True)
                break
            except ObjectExists:
                current = self._current()
                if current is None:
                    continue  # released while we looked: try again
                expires = parse_timestamp(str(current.get("expires_at", "1970-01-01T00:00:00Z")))
                owner = ProcessIdentity.from_json(current.get("owner"))
                if expires > utcnow() and not (owner and owner.known_dead()):
                    raise LockBusy(
                        f"{self.name} is already running: lease {self.store.describe(self.key)} is held by "
                        f"{current.get('holder', '?')} since {current.get('acquired_at', '?')} "
                        f"(renewed {current.get('renewed_at', '?')}, expires {current.get('expires_at', '?')} "
                        "unless renewed)",
                        hint="wait for it to finish; a holder that died stops renewing and its lease expires") from None
                _log.warning("lock.lease.takeover", extra=log.fields(
                    lease=self.key, previous_holder=current.get("holder"), expired_at=current.get("expires_at"),
                    reason="expired" if expires <= utcnow() else "its holder's process is gone"))
                self.store.delete(self.key)
        else:
            raise LockBusy(f"{self.name}: could not create lease {self.store.describe(self.key)} (contended)")
        current = self._current()
        if not current or current.get("token") != self.token:
            raise LockBusy(f"{self.name}: lease {self.store.describe(self.key)} was taken by "
                           f"{(current or {}).get('holder', 'another run')} at the same moment")
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_every.total_seconds()):
            try:
                current = self._current()
                if not current or current.get("token") != self.token:
                    self.lost = True
                    _log.error("lock.lease.lost", extra=log.fields(lease=self.key, holder=(current or {}).get("holder")))
                    return
                write_json(self.store, self.key, self._document())
            except Exception as exc:  # keep trying: a blip must not end the task
                _log.warning("lock.lease.renew_failed", extra=log.fields(lease=self.key, error=str(exc)))

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
        try:
            current = self._current()
            if current and current.get("token") == self.token:
                self.store.delete(self.key)
        except Exception as exc:
            _log.warning("lock.lease.release_failed", extra=log.fields(lease=self.key, error=str(exc)))

    @contextlib.contextmanager
    def held(self) -> Iterator["StoreLease"]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()


# -- backup leases: what a running backup owns in the store ------------------------------------------

BACKUP_LEASE_PREFIX = "backup-"
NEVER = datetime.max.replace(tzinfo=timezone.utc)


def backup_lease(store: Store, backup_id: str, policy: Policy) -> StoreLease:
    """The lease a backup holds for its whole run: prune leaves ``backups/<id>/`` alone while it is live."""
    return StoreLease(store, f"{BACKUP_LEASE_PREFIX}{backup_id}", holder_description("backup", policy.name or ""))


@dataclass(frozen=True)
class LeaseRecord:
    """A lease object as found in the store."""

    key: str
    name: str
    holder: str
    renewed_at: str
    expires_at: datetime
    owner: ProcessIdentity | None = None

    def live(self, now: datetime | None = None) -> bool:
        """Renewed recently enough (a run that died stops renewing), and not held by a process known to be gone."""
        return self.expires_at > (now or utcnow()) and not (self.owner and self.owner.known_dead())

    def describe(self) -> str:
        return f"lease {self.key} held by {self.holder}, renewed {self.renewed_at}"


def read_leases(store: Store, name_prefix: str = "") -> list[LeaseRecord]:
    """Every lease whose name starts with ``name_prefix``; a failed listing raises (callers must not guess)."""
    found: list[LeaseRecord] = []
    for info in store.list(f"{LOCKS_PREFIX}{name_prefix}"):
        if not info.key.endswith(".json"):
            continue
        try:
            document = read_json(store, info.key)
        except ObjectNotFound:
            continue  # released while we listed
        try:
            expires = parse_timestamp(str(document["expires_at"]))
        except (KeyError, ValueError):
            expires = NEVER  # unreadable: treated as live, so nothing it may cover is deleted
        found.append(LeaseRecord(info.key, info.key[len(LOCKS_PREFIX):-len(".json")], str(document.get("holder", "?")),
                                 str(document.get("renewed_at", "?")), expires,
                                 ProcessIdentity.from_json(document.get("owner"))))
    return found


@contextlib.contextmanager
def task_lock(policy: Policy, task: str, store: Store) -> Iterator[None]:
    """Take every lock ``task`` needs for ``policy``; LockBusy (exit 3) at once if one is taken."""
    kinds = TASK_LOCKS.get(task, ("database",))
    with contextlib.ExitStack() as stack:
        for kind in kinds:
            if kind == "database":
                stack.enter_context(database_lock(policy, task))
            else:
                stack.enter_context(StoreLease(store, task, holder_description(task, policy.name or "")).held())
        yield
