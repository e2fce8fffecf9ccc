"""What ``status``, ``backups list`` and the metrics say of a policy's point-in-time recovery.

From the store alone: the base backups (each restorable or not), the recoverable window and its
gaps, the newest archived WAL and its lag against ``rpo``, and whether the newest base backup is
older than two intervals of its schedule. Each thing that needs a look is a problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..common.cron import cron_interval
from ..common.timeutil import format_duration, isoformat
from ..policy.schema import Policy
from ..storage.base import Store
from .catalog import BaseBackup, pitr_config
from .state import PitrState, load_state


@dataclass
class PitrOverview:
    policy: str
    bases: list[BaseBackup]  # newest first
    restorable: dict[str, tuple[datetime, datetime] | None]  # base id -> its recoverable span
    window: list[tuple[datetime, datetime]]
    gaps: list[str]
    last_archived: datetime | None
    newest_wal: str | None
    lag: timedelta | None
    rpo: timedelta
    problems: list[str] = field(default_factory=list)

    @property
    def window_start(self) -> datetime | None:
        return self.window[0][0] if self.window else None

    def describe_window(self) -> str:
        if not self.window:
            return "nothing is recoverable yet"
        return ", ".join(f"{start:%Y-%m-%d %H:%M:%S} .. {end:%Y-%m-%d %H:%M:%S} UTC" for start, end in self.window)

    def to_json(self) -> dict[str, Any]:
        newest = self.bases[0] if self.bases else None
        return {
            "base_backups": len(self.bases),
            "newest_base_backup": {"id": newest.id, "time": isoformat(newest.stop_time),
                                   "verified": newest.verified == "yes",
                                   "verification": newest.verification_result} if newest else None,
            "window": [{"from": isoformat(start), "to": isoformat(end)} for start, end in self.window],
            "gaps": self.gaps, "last_archived_wal": self.newest_wal,
            "last_archived_at": isoformat(self.last_archived) if self.last_archived else None,
            "lag_seconds": int(self.lag.total_seconds()) if self.lag is not None else None,
            "rpo_seconds": int(self.rpo.total_seconds()),
        }


def overview_from(policy: Policy, state: PitrState, now: datetime) -> PitrOverview:
    config = pitr_config(policy)
    window = state.window
    newest_wal = max(state.index.files.values(), key=lambda item: item.completed, default=None)
    lag = (now - state.index.last_archived) if state.index.last_archived else None
    overview = PitrOverview(
        policy.name or "", state.bases.backups,
        {span.base.id: ((span.start_time, span.end_time) if span.end_time else None) for span in window.spans},
        window.ranges(), window.gaps(), state.index.last_archived, newest_wal.name if newest_wal else None, lag,
        config.rpo)
    overview.problems += _problems(policy, overview, now)
    return overview


def _problems(policy: Policy, overview: PitrOverview, now: datetime) -> list[str]:
    config = pitr_config(policy)
    problems = []
    if overview.last_archived is None:
        problems.append("no WAL archived yet")
    elif overview.lag is not None and overview.lag > overview.rpo:
        problems.append(f"WAL archive lag {format_duration(overview.lag)} is over rpo {format_duration(overview.rpo)}: "
                        f"the newest archived WAL ({overview.newest_wal}) was completed at "
                        f"{isoformat(overview.last_archived)}")
    if not overview.bases:
        problems.append("no base backup yet")
    else:
        interval = cron_interval(config.base_backup.schedule, now=now)
        age = now - overview.bases[0].stop_time
        if age > 2 * interval:
            problems.append(f"newest base backup {overview.bases[0].id} is {format_duration(age)} old; the schedule "
                            f"({config.base_backup.schedule}) runs every {format_duration(interval)}")
        if not overview.window:
            problems.append("no base backup is restorable: the WAL they need is not all archived")
    problems += [f"gap in the recoverable window: {gap}" for gap in overview.gaps]
    return problems


def pitr_overview(policy: Policy, store: Store, now: datetime) -> PitrOverview:
    return overview_from(policy, load_state(store), now)
