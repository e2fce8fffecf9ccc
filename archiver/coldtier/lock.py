"""The cold tier's database lock, in a module that imports no driver (the task descriptors name it)."""

from __future__ import annotations

from ..pg.lockspec import DatabaseLock

# archive, retention and restore-archive share it: none of them overlaps another on one database
COLD_TIER = DatabaseLock("cold-tier", shared="the cold tier (archive, retention, restore-archive)")
