"""Leases in the store: work that touches only the store (prune, cold expiry, drills) locks with them.

A lease object ``locks/<name>.json`` is created with a create-only write and renewed while the
task runs; a holder that died stops renewing, and its lease is taken over once it has expired, or
at once when the holder was a process on this host that is gone (the lease records its owner:
:mod:`archiver.common.owner`). A running backup also holds a lease on its backup id, which prune
respects (:func:`backup_lease`).
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..common import log
from ..common.owner import ProcessIdentity, holder_description
from ..common.timeutil import isoformat, parse_timestamp, utcnow
from ..errors import LockBusy, ObjectExists, ObjectNotFound
from .base import Store
from .documents import read_json, write_json

LOCKS_PREFIX = "locks/"

_log = log.get_logger("lock")


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
    def held(self) -> Iterator[StoreLease]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()


# -- backup leases: what a running backup owns in the store ------------------------------------------

BACKUP_LEASE_PREFIX = "backup-"
NEVER = datetime.max.replace(tzinfo=UTC)


def backup_lease(store: Store, backup_id: str, policy: str) -> StoreLease:
    """The lease a backup holds for its whole run: prune leaves ``backups/<id>/`` alone while it is live."""
    return StoreLease(store, f"{BACKUP_LEASE_PREFIX}{backup_id}", holder_description("backup", policy))


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
