"""What a task's database lock is: a name (and who shares it), in a module that imports no driver.

The task descriptors (:mod:`archiver.tasks`) name their locks when ``archiver --help`` loads them;
:mod:`archiver.pg.locks` takes them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatabaseLock:
    """A task's advisory lock on its policy's database.

    ``name``: the lock within the policy (tasks that must not overlap share one); ``shared``: who
    shares it, as the busy message names them (None: the task's own lock).
    """

    name: str
    shared: str | None = None
