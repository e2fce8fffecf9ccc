"""Rules of the ``encryption`` and ``storage.object_lock`` sections that span several keys.

Errors refuse the policy; warnings (``policy validate`` prints them) point at a setting that works
but is probably not what was meant.
"""

from __future__ import annotations

from datetime import timedelta

from ..common.timeutil import format_duration
from .build import Builder
from .schema import Policy, RetentionConfig

# how long a backup chosen by each rule stays at most (keep_monthly 12 keeps a backup ~12 months)
RULE_PERIODS = {"keep_hourly": timedelta(hours=1), "keep_daily": timedelta(days=1), "keep_weekly": timedelta(days=7),
                "keep_monthly": timedelta(days=31), "keep_yearly": timedelta(days=366)}


def check_protection(policy: Policy, b: Builder) -> None:
    _check_encryption(policy, b)
    _check_object_lock(policy, b)


def _check_encryption(policy: Policy, b: Builder) -> None:
    if policy.archive and policy.archive.encrypt and policy.encryption is None:
        b.issue(("archive", "encrypt"), "needs an encryption section with recipients (got archive.encrypt: true and no "
                                        "encryption:)")
    if policy.encryption is None or not policy.encryption.identity_paths():
        return
    reads = bool(policy.verify) or bool(policy.archive and policy.archive.encrypt)
    if not reads:
        b.warn(("encryption", "identities"), "is set on a policy whose tasks only write (backup, prune): a private key "
                                             "is needed only where verify, restore or restore-archive run; keep it out "
                                             "of the writers' environment (use ${ARCHIVER_AGE_IDENTITY_FILE:-})")


def _check_object_lock(policy: Policy, b: Builder) -> None:
    lock = policy.storage.object_lock if policy.storage else None
    if lock is None or lock.retain is None:
        return
    if policy.storage.url and not policy.storage.url.startswith("s3://"):
        b.issue(("storage", "object_lock"), f"applies to s3:// storage only (got {policy.storage.url!r})")
        return
    retain = lock.retain
    if policy.backup is not None:
        _check_retention(b, ("backup", "retention"), "backup", policy.backup.retention, policy.backup.schedule, retain)
    if policy.pitr is not None:
        base = policy.pitr.base_backup
        _check_retention(b, ("pitr", "base_backup", "retention"), "base backup", base.retention, base.schedule, retain)
    cold = policy.archive.cold_retention if policy.archive else None
    if cold is not None and cold < retain:
        b.issue(("archive", "cold_retention"), f"always expires cold files before their lock ends (got "
                                               f"{format_duration(cold)} < object_lock.retain {format_duration(retain)})")


def _check_retention(b: Builder, where: tuple[str, ...], what: str, retention: RetentionConfig | None,
                     schedule: str | None, retain: timedelta) -> None:
    """``what`` is "backup" or "base backup" (a base backup's WAL goes with the oldest kept one)."""
    if retention is None or not retention.rules() or not schedule:
        return
    shortest, longest = kept_for(retention, _interval(schedule))
    held = f"object_lock.retain {format_duration(retain)}"
    if longest < retain:
        b.issue(where, f"always deletes {what}s before their lock ends: no rule keeps a {what} longer than "
                       f"{format_duration(longest)} < {held} (allowed: rules that keep {what}s at least "
                       f"{format_duration(retain)}, or a shorter retain)")
    elif shortest < retain:
        b.warn(where, f"sometimes deletes {what}s before their lock ends: {what}s no longer rule keeps go after "
                      f"about {format_duration(shortest)} < {held}; prune keeps them, reporting 'keep: object locked "
                      "until ...', until the lock ends")


def _interval(schedule: str) -> timedelta:
    from ..common.cron import cron_interval

    try:
        return cron_interval(schedule)
    except Exception:  # an invalid schedule is reported by its own field
        return timedelta(days=1)


def kept_for(retention: RetentionConfig, interval: timedelta) -> tuple[timedelta, timedelta]:
    """About how long the rules keep a backup taken every ``interval``: (the least kept, the longest kept)."""
    rules = retention.rules()
    last = rules.get("keep_last", 0) * interval
    horizons = {name: count * RULE_PERIODS[name] for name, count in rules.items() if name in RULE_PERIODS and count}
    longest = max([last, *horizons.values()])
    # a period rule at least as coarse as the schedule keeps every backup (each is its period's newest)
    covering = [horizon for name, horizon in horizons.items() if RULE_PERIODS[name] <= interval]
    shortest = max([last, interval, *covering])
    return min(shortest, longest), longest
