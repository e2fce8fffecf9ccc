"""Backup retention as a pure function: (records, rules, now) -> decisions, each with its reasons.

The rules follow borg's ``prune``, with every rule applied on its own (as restic does), so a
backup kept by several rules lists all of them:

- ``keep_last N``: the N newest backups;
- ``keep_hourly/daily/weekly/monthly/yearly N``: the newest backup of each of the N most
  recent hours/days/ISO weeks/months/years that have backups (UTC);
- ``min_keep N``: whatever the rules say, the N newest backups stay;
- the newest backup whose restore drill passed is never deleted;
- a backup from the future (clock skew) is kept: deleting on a wrong clock is how data goes.

Nothing here does I/O or reads the clock; ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

RULE_ORDER = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")


def _hour(moment: datetime) -> tuple[int, ...]:
    return (moment.year, moment.month, moment.day, moment.hour)


def _day(moment: datetime) -> tuple[int, ...]:
    return (moment.year, moment.month, moment.day)


def _week(moment: datetime) -> tuple[int, ...]:
    iso = moment.isocalendar()
    return (iso.year, iso.week)


def _month(moment: datetime) -> tuple[int, ...]:
    return (moment.year, moment.month)


def _year(moment: datetime) -> tuple[int, ...]:
    return (moment.year,)


@dataclass(frozen=True)
class Period:
    unit: str  # hour, day, week, month, year
    key: Callable[[datetime], tuple[int, ...]]
    label: Callable[[tuple[int, ...]], str]


PERIODS: dict[str, Period] = {
    "keep_hourly": Period("hour", _hour, lambda k: f"{k[0]:04d}-{k[1]:02d}-{k[2]:02d} {k[3]:02d}h"),
    "keep_daily": Period("day", _day, lambda k: f"{k[0]:04d}-{k[1]:02d}-{k[2]:02d}"),
    "keep_weekly": Period("week", _week, lambda k: f"{k[0]:04d}-W{k[1]:02d}"),
    "keep_monthly": Period("month", _month, lambda k: f"{k[0]:04d}-{k[1]:02d}"),
    "keep_yearly": Period("year", _year, lambda k: f"{k[0]:04d}"),
}


@dataclass(frozen=True)
class Record:
    """What retention needs to know of a backup."""

    id: str
    time: datetime  # timezone-aware
    verified: bool = False  # its newest restore drill passed


@dataclass(frozen=True)
class RotationDecision:
    record: Record
    keep: bool
    reasons: tuple[str, ...]

    @property
    def text(self) -> str:
        return ("keep: " if self.keep else "delete: ") + ", ".join(self.reasons)


@dataclass
class _RuleOutcome:
    selected: dict[str, int] = field(default_factory=dict)  # record id -> ordinal (#1 = newest)
    reach: datetime | None = None  # time of the oldest selected record when the quota is full


def _short_name(rule: str) -> str:
    return rule.removeprefix("keep_")


def _apply_rule(rule: str, count: int, records: Sequence[Record]) -> _RuleOutcome:
    """``records`` newest first."""
    outcome = _RuleOutcome()
    if count <= 0:
        return outcome
    if rule == "keep_last":
        for ordinal, record in enumerate(records[:count], start=1):
            outcome.selected[record.id] = ordinal
    else:
        period = PERIODS[rule]
        seen: set[tuple[int, ...]] = set()
        for record in records:
            key = period.key(record.time)
            if key in seen:
                continue
            seen.add(key)
            outcome.selected[record.id] = len(seen)
            if len(seen) == count:
                break
    if len(outcome.selected) == count:
        outcome.reach = min(r.time for r in records if r.id in outcome.selected)
    return outcome


def decide(records: Sequence[Record], rules: Mapping[str, int], now: datetime, *, min_keep: int = 1) -> list[RotationDecision]:
    """One decision per record, newest first.

    ``rules`` maps ``keep_*`` names to counts; unknown names raise ValueError (a typo must not
    silently keep nothing). An empty ``rules`` keeps everything: no rule, no deletion.
    """
    unknown = set(rules) - set(RULE_ORDER)
    if unknown:
        raise ValueError(f"unknown retention rule(s): {', '.join(sorted(unknown))} (allowed {', '.join(RULE_ORDER)})")
    ordered = sorted(records, key=lambda r: (r.time, r.id), reverse=True)
    if not rules:
        return [RotationDecision(r, True, ("no retention rule",)) for r in ordered]
    active = [(rule, rules[rule]) for rule in RULE_ORDER if rules.get(rule, 0) > 0]
    outcomes = {rule: _apply_rule(rule, count, ordered) for rule, count in active}
    reasons: dict[str, list[str]] = {r.id: [] for r in ordered}
    for rule, _ in active:
        for record_id, ordinal in outcomes[rule].selected.items():
            reasons[record_id].append(f"{_short_name(rule)} #{ordinal}")
    for record in ordered:
        if record.time > now:
            reasons[record.id].append("newer than now (clock skew?)")
    newest_verified = next((r for r in ordered if r.verified), None)
    if newest_verified is not None:
        reasons[newest_verified.id].append("newest verified backup")
    kept = sum(1 for r in ordered if reasons[r.id])
    for record in ordered:
        if kept >= min_keep:
            break
        if not reasons[record.id]:
            reasons[record.id].append(f"min_keep {min_keep}")
            kept += 1
    decisions: list[RotationDecision] = []
    for record in ordered:
        if reasons[record.id]:
            decisions.append(RotationDecision(record, True, tuple(reasons[record.id])))
        else:
            decisions.append(RotationDecision(record, False, (_why_not_kept(record, ordered, active, outcomes),)))
    return decisions


def _why_not_kept(record: Record, ordered: Sequence[Record], active: Sequence[tuple[str, int]],
                  outcomes: Mapping[str, _RuleOutcome]) -> str:
    """``beyond keep_daily 14`` when no rule reaches back this far; otherwise the newer backup
    that stands for this one's period under the finest rule that covers it."""
    covering = [rule for rule, _ in active if rule != "keep_last"
                and (outcomes[rule].reach is None or record.time >= outcomes[rule].reach)]  # type: ignore[operator]
    if not covering:
        rule, count = min(active, key=lambda item: (outcomes[item[0]].reach or record.time, RULE_ORDER.index(item[0])))
        return f"beyond {rule} {count}"
    period = PERIODS[covering[0]]
    key = period.key(record.time)
    newer = next(r for r in ordered if period.key(r.time) == key)
    return f"{newer.id} is newer in its {period.unit} {period.label(key)} ({covering[0]})"
