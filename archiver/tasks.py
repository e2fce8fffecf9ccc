"""Tasks: backup, prune, archive, retention, verify, restore. Each composes the lower layers."""

from __future__ import annotations

from .policy.schema import TASK_ORDER

TASK_NAMES = TASK_ORDER
