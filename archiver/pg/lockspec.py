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
    # A sharded run (archive --shard K/N) holds the lock in shared mode, so the other shards run
    # beside it while anything that takes it exclusively (retention, an unsharded archive) waits;
    # ``part`` is its own exclusive lock, so the same shard never runs twice at once.
    share_mode: bool = False
    part: str | None = None

    def for_part(self, part: str) -> DatabaseLock:
        return DatabaseLock(self.name, self.shared, share_mode=True, part=part)
