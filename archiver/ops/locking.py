"""Never run the same task on the same database twice at once (worker, CronJob and human alike).

The locks a task needs are in its descriptor (:class:`archiver.tasks.Locks`), both reported at
once when busy (exit code 3, naming the holder and since when):

- a PostgreSQL advisory lock on the source database (:func:`archiver.pg.locks.database_lock`),
  held on its own connection for the task's duration; the server frees it when the process dies;
- a lease object in the store for store-only work (:class:`archiver.storage.leases.StoreLease`),
  created with a create-only write and renewed while the task runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..common.owner import holder_description
from ..errors import UsageError
from ..pg import locks
from ..pg.lockspec import DatabaseLock
from ..policy.schema import Policy
from ..storage.base import Store
from ..storage.leases import StoreLease
from ..tasks import Locks, named


def task_locks(task: str) -> Locks:
    """The locks of the task called ``task``; a name no descriptor has gets a database lock of that name."""
    try:
        return named(task).locks
    except UsageError:
        return Locks(database=DatabaseLock(task))


@contextlib.contextmanager
def database_lock(policy: Policy, task: str, *, dsn: str | None = None) -> Iterator[None]:
    """The advisory lock of ``task`` on the policy's database, or on ``dsn`` (a restore target)."""
    lock = task_locks(task).database or DatabaseLock(task)
    with locks.database_lock(dsn or policy.database.resolved_dsn(), lock, policy=policy.name, task=task, target=dsn):
        yield


@contextlib.contextmanager
def task_lock(policy: Policy, task: str, store: Store, needed: Locks | None = None) -> Iterator[None]:
    """Take every lock ``task`` needs for ``policy`` (``needed``, else its descriptor's); LockBusy
    (exit 3) at once if one is taken."""
    needed = needed or task_locks(task)
    with contextlib.ExitStack() as stack:
        if needed.database is not None:
            stack.enter_context(locks.database_lock(policy.database.resolved_dsn(), needed.database,
                                                    policy=policy.name, task=task))
        if needed.store:
            stack.enter_context(StoreLease(store, task, holder_description(task, policy.name or "")).held())
        yield
