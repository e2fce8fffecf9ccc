"""``archiver verify NAME --pitr``: a point-in-time recovery drill into a throw-away PostgreSQL.

The same code as ``archiver restore --pitr --start`` (plan, checked unpack, pg_verifybackup,
recovery with WAL fetched and checked), into a local scratch directory that is removed afterwards
(and swept if the drill dies, like every local scratch instance). The point is ``--to-time`` or a
random point inside the recoverable window, recorded in the result. The drill checks that recovery
reached that point (it stopped before the first transaction after it, or the archive holds none
after it), then runs pg_amcheck and the policy's ``verify.checks`` in the policy's database. The
verdict is written beside the base backup (``pitr/base/<id>/verification.json``) and goes through
the runner's record, metrics and notifications like a logical drill's.

A container scratch is refused: the restored server runs ``archiver wal-fetch`` as its
restore_command, which a stock PostgreSQL image does not have.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from .. import __version__
from ..common import log, sysinfo
from ..common.progress import NULL_PROGRESS, Progress
from ..common.result import TaskResult
from ..common.timeutil import isoformat, parse_timestamp, utcnow
from ..errors import TaskFailed, UsageError
from ..pg.dsn import parse_dsn
from ..pg.recovery import RecoveryServer, RecoveryStopped
from ..pg.scratch import LocalPostgres, free_port
from ..pitr.catalog import base_verification_key
from ..pitr.keys import check_opens, restore_keyring
from ..pitr.plan import PitrPlan, PitrRequest, plan_pitr
from ..pitr.restore import Recovered, point_reached, prepare_data_dir, recover
from ..pitr.settings import Target
from ..pitr.state import load_state
from ..pitr.unpack import unpack_checked
from ..pitr.window import Window
from ..policy.schema import Policy, VerifyConfig
from ..storage.base import Store
from ..storage.documents import FORMAT_VERSION, write_json
from ..storage.integrity import ObjectMismatch
from .checks import Check, check_amcheck, check_sql

logger = log.get_logger("verify")
SCRATCH_SETTINGS = {"max_locks_per_transaction": "1024"}


def random_point(window: Window, rng: random.Random | None = None) -> datetime:
    """A point drawn uniformly from the recoverable window's ranges."""
    ranges = window.ranges()
    if not ranges:
        raise TaskFailed("the drill could not run: nothing is recoverable yet (no base backup with all its WAL)")
    rng = rng or random.SystemRandom()
    total = sum((end - start).total_seconds() for start, end in ranges)
    pick = rng.uniform(0, total)
    for start, end in ranges:
        length = (end - start).total_seconds()
        if pick <= length:
            return start + timedelta(seconds=pick)
        pick -= length
    return ranges[-1][1]


def reached_check(recovered: Recovered, target: datetime) -> Check:
    """Recovery stopped at the target: before a transaction committed after it, with nothing later replayed."""
    report = recovered.report
    last = _time_in(report.last_transaction)
    if recovered.to_end_of_archive:
        ok = last is None or last <= target
        return Check("recovery", "target reached", "pass" if ok else "fail", isoformat(target), report.last_transaction,
                     detail="the archive holds no transaction after the target: its end is the state at the target")
    stopped = _time_in((report.stopped or "").rsplit("time", 1)[-1])
    ok = bool(report.stopped) and (stopped is None or stopped > target) and (last is None or last <= target)
    return Check("recovery", "target reached", "pass" if ok else "fail", isoformat(target),
                 {"stopped": report.stopped, "last_transaction": report.last_transaction})


def _time_in(text: str | None) -> datetime | None:
    if not text:
        return None
    cleaned = text.strip().strip(",")
    if cleaned.endswith(("+00", "-00")) or cleaned[-3:-2] in "+-" and cleaned[-2:].isdigit():
        cleaned += ":00"
    try:
        return parse_timestamp(cleaned)
    except ValueError:
        return None


def run_pitr_drill(policy: Policy, *, store: Store, progress: Progress = NULL_PROGRESS, to_time: datetime | None = None,
                   scratch: str | None = None) -> TaskResult:
    if policy.pitr is None:
        raise UsageError(f"policy {policy.name!r} has no pitr section: verify --pitr has nothing to restore",
                         hint="add pitr: {...} to the policy, or drop --pitr")
    config = policy.verify or VerifyConfig(schedule="0 5 * * 1")
    if (scratch or config.scratch.kind) == "container":
        raise UsageError("verify --pitr restores into a local scratch only: the restored server calls archiver "
                         "wal-fetch, which a PostgreSQL image does not have", hint="--scratch local")
    keyring = restore_keyring(policy, "verify --pitr")
    state = load_state(store)
    started_at, clock = utcnow(), time.monotonic()
    target_time = to_time or random_point(state.window)
    request = PitrRequest(data_dir=Path("/nonexistent"), target=Target("time", time=target_time),
                          policies_path=str(Path(policy.source).absolute()), start=True)
    plan = plan_pitr(policy, state, request)
    plan.keyring = keyring
    check_opens(store, plan.base, plan.files, keyring)
    if plan.bindir is None:
        raise TaskFailed(f"the drill could not run: PostgreSQL {plan.major} server programs are not installed here")
    checks: list[Check] = []
    durations: dict[str, float] = {}
    progress.phase("restore to a point in time", unit="steps")
    recovered = _restore_and_check(policy, store, plan, config, checks, durations)
    progress.done()
    durations["total"] = time.monotonic() - clock
    record = _record(policy, plan, target_time, to_time is None, checks, durations, started_at, recovered)
    write_json(store, base_verification_key(plan.base.id), record)
    return _result(policy, plan, record, checks, durations)


def _restore_and_check(policy: Policy, store: Store, plan: PitrPlan, config: VerifyConfig, checks: list[Check],
                       durations: dict[str, float]) -> Recovered | None:
    clock = time.monotonic()

    def populate(datadir: Path) -> None:
        plan.request = replace(plan.request, data_dir=datadir)
        unpack_checked(store, plan.base, datadir, plan.pg_verifybackup, prepare=prepare_data_dir(plan, prefetch=True),
                       keyring=plan.keyring)

    instance = LocalPostgres(bin_dir=str(plan.bindir), base_dir=config.scratch.work_dir, timescaledb=False,
                             settings=SCRATCH_SETTINGS, listen_tcp=False, populate=populate, start_server=False,
                             startup_timeout=config.scratch.startup_timeout.total_seconds())
    try:
        try:
            instance.start()
        except ObjectMismatch as exc:
            checks.append(Check("object", exc.key, "fail", detail=exc.message))
            return None
        checks.append(Check("object", str(plan.base.manifest["objects"]["base"]["key"]), "pass",
                            detail="SHA-256 and sizes match the manifest; pg_verifybackup passed"))
        durations["unpack"] = time.monotonic() - clock
        instance.port = free_port()
        server = RecoveryServer(instance.bindir, instance.datadir, instance.logfile, ["-p", str(instance.port)])
        try:
            recovered = recover(plan, store, server, instance.datadir)
        except ObjectMismatch as exc:
            checks.append(Check("wal", exc.key, "fail", detail=exc.message))
            return None
        except RecoveryStopped as exc:
            checks.append(Check("recovery", "recovery", "fail", detail=exc.message[-1500:]))
            return None
        durations["recovery"] = recovered.seconds
        checks.append(reached_check(recovered, plan.request.target.time or utcnow()))
        _database_checks(policy, plan, instance, config, checks)
        return recovered
    finally:
        instance.stop()


def _database_checks(policy: Policy, plan: PitrPlan, instance: LocalPostgres, config: VerifyConfig,
                     checks: list[Check]) -> None:
    database = str(plan.base.manifest.get("database", {}).get("name") or _policy_database(policy) or "postgres")
    target = instance.dsn(database)
    if config.amcheck:
        checks.append(check_amcheck(target, instance))
    for check in config.checks:
        checks.append(check_sql(target, check.name or check.sql, check.sql, check.expect))


def _policy_database(policy: Policy) -> str | None:
    try:
        return parse_dsn(policy.database.resolved_dsn()).get("dbname")
    except Exception:
        return None


def _record(policy: Policy, plan: PitrPlan, target: datetime, random_target: bool, checks: list[Check],
            durations: dict[str, float], started_at: datetime, recovered: Recovered | None) -> dict[str, Any]:
    failed = [f"{check.kind} {check.name}" for check in checks if check.status == "fail"]
    return {
        "format_version": FORMAT_VERSION, "kind": "pitr_verification", "base_backup_id": plan.base.id,
        "policy": policy.name, "result": "failed" if failed else "passed", "target_time": isoformat(target),
        "target_chosen": "random point inside the recoverable window" if random_target else "--to-time",
        "window": [[isoformat(start), isoformat(end)] for start, end in plan.window.ranges()],
        "point_reached": point_reached(recovered.report, plan.request.target, recovered.to_end_of_archive)
        if recovered else None,
        "recovery": recovered.report.to_json() if recovered else None,
        "started_at": isoformat(started_at), "finished_at": isoformat(utcnow()),
        "durations": {key: round(value, 3) for key, value in durations.items()},
        "versions": {"archiver": __version__, "server": plan.base.manifest["server"]["version"]},
        "checks": [check.to_json() for check in checks], "failed": failed,
    }


def _result(policy: Policy, plan: PitrPlan, record: dict[str, Any], checks: list[Check],
            durations: dict[str, float]) -> TaskResult:
    failed = [check for check in checks if check.status == "fail"]
    lines = [f"target   {record['target_time']} ({record['target_chosen']})",
             f"point    {record['point_reached'] or 'not reached'}"]
    lines += [check.line() for check in checks]
    lines.append("time: " + ", ".join(f"{key} {value:.1f}s" for key, value in durations.items()))
    verdict = "passed" if not failed else f"FAILED ({len(failed)} check{'s' if len(failed) != 1 else ''})"
    summary = (f"point-in-time drill of base backup {plan.base.id} to {record['target_time']}: {verdict}; "
               f"{len(checks)} checks in {durations.get('total', 0):.1f}s")
    metrics = {"duration_seconds": round(durations.get("total", 0.0), 3),
               "restore_seconds": round(durations.get("recovery", 0.0), 3), "checks": float(len(checks)),
               "checks_failed": float(len(failed)), "bytes": float(plan.base.size),
               "peak_rss_bytes": float(sysinfo.peak_rss_bytes())}
    logger.info("verify.pitr_done", extra=log.fields(policy=policy.name, base_backup=plan.base.id,
                                                     result=record["result"], failed=record["failed"]))
    return TaskResult(policy=policy.name or "", task="verify", status="verification_failed" if failed else "ok",
                      summary=summary, lines=lines, metrics=metrics, data=record)
