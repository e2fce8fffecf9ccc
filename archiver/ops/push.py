"""``archiver run``'s metrics to a Pushgateway, at the end of the run, whatever its outcome.

Besides the run's own metrics: the policy's schedules (what the alerts compare ages with) and, after
an archive or retention run, the archive lag and cold-tier gauges of its tables. A Pushgateway that
is down does not change how the task ended: the push is retried, then logged and given up.
"""

from __future__ import annotations

from ..common import log
from ..errors import ArchiverError
from ..policy.schema import Policy
from . import gauges
from .metrics import Metrics
from .status import policy_status

_log = log.get_logger("run")
STATUS_TASKS = ("archive", "retention")  # runs after which the tables' archive gauges are read again


def push_run(metrics: Metrics, gateway: str, policy: Policy, task: str, *,
             shard: tuple[int, int] | None = None) -> bool:
    """True when the push got through. A shard pushes into its own group (``shard="K/N"``): shards
    run side by side, and one group would lose counts and let one shard's success hide another's failure."""
    name = policy.name or ""
    try:
        gauges.set_schedules(metrics, policy)
        if task in STATUS_TASKS:
            gauges.set_archive(metrics, policy_status(policy))
    except (ArchiverError, OSError, ValueError) as exc:  # advisory: the run's own metrics still go out
        _log.warning("metrics.status_failed", extra=log.fields(policy=name, error=log.scrub(str(exc))))
    try:
        metrics.push(gateway, name, task, shard=None if shard is None else f"{shard[0]}/{shard[1]}")
        return True
    except OSError as exc:
        _log.warning("metrics.push_failed", extra=log.fields(gateway=gateway, error=log.scrub(str(exc))))
        return False
