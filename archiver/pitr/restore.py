"""``archiver restore NAME --pitr``: a base backup and the WAL after it, into a new data directory.

1. **Plan, read-only** (:mod:`archiver.pitr.plan`): the base backup, the window, the WAL files;
   every refusal (target outside the window, a data directory that holds anything, missing server
   programs) happens here.
2. **Confirm** (a prompt, ``--yes``, or a drill).
3. **Unpack, proven** (:mod:`archiver.pitr.unpack`): into a staging directory beside the
   destination, checked against our manifest and by ``pg_verifybackup``; the recovery settings are
   written; then one rename makes it the data directory. A damaged base backup exits 4 with the
   destination untouched.
4. With ``--start``: the server starts (as ``postgres`` when root), WAL is fetched ahead of it
   (:mod:`archiver.pitr.prefetch`), and this waits until recovery has ended and the server is
   promoted, then prints the point reached, the WAL replayed and the RTO. A damaged WAL file stops
   recovery before it is replayed (wal-fetch's report: exit 4). A time target past the archive's
   last transaction ends recovery without reaching its target (PostgreSQL then stops); when the
   target lies inside the window the end of the archive *is* the state at that time, so the server
   is started again without the target. Without ``--start`` it prints the command that starts it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common import log, sysinfo
from ..common.progress import NULL_PROGRESS, Progress
from ..common.result import TaskResult
from ..common.timeutil import format_bytes, isoformat, utcnow
from ..errors import TaskFailed, UsageError, VerificationFailed
from ..pg.recovery import RecoveryReport, RecoveryServer, RecoveryStopped, server_user_can_reach
from ..policy.schema import Policy
from ..storage.backends import open_store
from ..storage.base import Store
from ..storage.integrity import ObjectMismatch
from .keys import check_opens, restore_keyring
from .plan import PitrPlan, PitrRequest, plan_pitr
from .prefetch import Prefetcher
from .settings import (
    PREFETCH_DIR,
    REPORT_FILE,
    Target,
    drop_setting,
    host_fixes,
    recovery_settings,
    restore_command,
    write_recovery,
)
from .state import load_state
from .unpack import check_destination, unpack_checked
from .walnames import format_lsn, parse_lsn

logger = log.get_logger("restore")
Confirm = Callable[[PitrPlan], bool]
END_BEFORE_TARGET = "recovery ended before configured recovery target was reached"


@dataclass
class Recovered:
    report: RecoveryReport
    seconds: float
    fetched_ahead: int
    to_end_of_archive: bool  # a time target past the archive's last transaction: recovered to the end


def prepare_data_dir(plan: PitrPlan, *, settings_extra: dict[str, str] | None = None,
                     prefetch: bool) -> Callable[[Path], None]:
    """What goes into the staging directory before it becomes the data directory."""
    request = plan.request

    def prepare(staging: Path) -> None:
        command = restore_command(request.policies_path, plan.policy, request.data_dir, prefetch=prefetch)
        settings = recovery_settings(command=command, target=request.target, timeline=plan.span.target_timeline,
                                     keep_archiving=request.keep_archiving, port=request.port)
        fixes, notes = host_fixes(staging)
        settings.update({**fixes, **(settings_extra or {})})
        plan.host_notes.extend(notes)
        write_recovery(staging, settings, note=f"recovery settings added by archiver restore --pitr at "
                                               f"{isoformat(utcnow())} (base backup {plan.base.id})")
        if prefetch:
            (staging / PREFETCH_DIR).mkdir(mode=0o700)
    return prepare


def recover(plan: PitrPlan, store: Store, server: RecoveryServer, data_dir: Path,
            progress: Progress = NULL_PROGRESS) -> Recovered:
    """Start the restored server, fetch WAL ahead of it, wait until it is promoted (see the module docstring)."""
    clock = time.monotonic()
    prefetcher = Prefetcher(store, plan.files, data_dir / PREFETCH_DIR, keyring=plan.keyring)
    prefetcher.start()
    to_end = False
    progress.phase("recovery", unit="steps")
    try:
        since = time.time()
        server.start()
        try:
            server.wait_until_promoted(since)
        except RecoveryStopped as exc:
            _raise_reported(data_dir, plan, exc)
            if plan.request.target.kind != "time" or END_BEFORE_TARGET not in server.log_text():
                raise _stopped(plan, exc) from None
            logger.warning("restore.end_of_archive", extra=log.fields(target=plan.request.target.describe()))
            drop_setting(data_dir, "recovery_target_time")
            since, to_end = time.time(), True
            server.start()
            server.wait_until_promoted(since)
    finally:
        prefetcher.stop()
        shutil.rmtree(data_dir / PREFETCH_DIR, ignore_errors=True)
        progress.done()
    with contextlib.suppress(FileNotFoundError):
        (data_dir / REPORT_FILE).unlink()
    return Recovered(server.report(), time.monotonic() - clock, prefetcher.fetched, to_end)


def _raise_reported(data_dir: Path, plan: PitrPlan, exc: RecoveryStopped) -> None:
    """wal-fetch reported why it stopped recovery: a damaged WAL file is exit 4, anything else exit 1."""
    try:
        report = json.loads((data_dir / REPORT_FILE).read_text())
    except (OSError, ValueError):
        return
    state = (f"the data directory {plan.request.data_dir} holds the base backup recovered up to just before "
             f"{report.get('file')}; the server is stopped")
    if int(report.get("exit_code", 1)) == int(VerificationFailed.exit_code):
        raise ObjectMismatch(f"recovery stopped before replaying WAL file {report.get('file')}: {report.get('error')}",
                             key=str(report.get("file")), reason=str(report.get("reason") or "checksum"),
                             hint=state) from None
    raise TaskFailed(f"recovery stopped: wal-fetch could not deliver {report.get('file')}: {report.get('error')}",
                     hint=state) from None


def _stopped(plan: PitrPlan, exc: RecoveryStopped) -> TaskFailed:
    return TaskFailed(str(exc), hint=f"the data directory {plan.request.data_dir} is left as recovery left it (not "
                                     "running); remove it before restoring into it again")


def run_pitr_restore(policy: Policy, request: PitrRequest, *, confirm: Confirm, progress: Progress = NULL_PROGRESS,
                     store: Store | None = None) -> TaskResult:
    clock = time.monotonic()
    keyring = restore_keyring(policy, "restore --pitr")
    data_dir = request.data_dir
    check_destination(data_dir)
    store = store or open_store(policy.storage)
    plan = plan_pitr(policy, load_state(store), request)
    plan.keyring = keyring
    check_opens(store, plan.base, plan.files, keyring)
    if request.dry_run:
        return TaskResult(policy=policy.name or "", task="restore", summary="dry run: nothing was changed",
                          lines=plan.lines(), data={"plan": plan.to_json(), "dry_run": True})
    if request.start and not server_user_can_reach(data_dir.parent):
        raise UsageError(f"--data-dir {data_dir}: the postgres user cannot reach {data_dir.parent} (a parent "
                         "directory is private), so the server could not run there",
                         hint="restore under a directory every user can traverse, e.g. /var/lib/postgresql")
    if not confirm(plan):
        raise TaskFailed("restore not confirmed: nothing was changed")
    logger.info("restore.pitr_start", extra=log.fields(policy=policy.name, base_backup=plan.base.id,
                                                       target=request.target.describe(), data_dir=str(data_dir)))
    unpacked, _ = unpack_checked(store, plan.base, data_dir, plan.pg_verifybackup,
                                 prepare=prepare_data_dir(plan, prefetch=request.start), keyring=keyring)
    unpack_seconds = time.monotonic() - clock
    if not request.start:
        return _result(plan, unpacked, unpack_seconds, None, time.monotonic() - clock)
    assert plan.bindir is not None
    logfile = plan.logfile()
    server = RecoveryServer(plan.bindir, data_dir, logfile, ["-c", "logging_collector=off"])
    recovered = recover(plan, store, server, data_dir, progress)
    return _result(plan, unpacked, unpack_seconds, recovered, time.monotonic() - clock)


def point_reached(report: RecoveryReport, target: Target, to_end: bool) -> str:
    if to_end:
        return (f"the end of the archive: it holds no transaction after {target.describe()}, so this is the state at "
                f"that time (last transaction replayed: {report.last_transaction or 'none'})")
    if report.stopped:
        return f"recovery stopped {report.stopped} (last transaction replayed: {report.last_transaction or 'none'})"
    return f"the end of the archive (last transaction replayed: {report.last_transaction or 'none'})"


def _result(plan: PitrPlan, unpacked: int, unpack_seconds: float, recovered: Recovered | None,
            total: float) -> TaskResult:
    request = plan.request
    lines = [f"restored base backup {plan.base.id} ({format_bytes(unpacked)}) into {request.data_dir}, proven by its "
             f"SHA-256 and pg_verifybackup in {unpack_seconds:.1f}s"]
    lines += [f"note     {note}" for note in plan.host_notes]
    data: dict[str, Any] = {"base_backup": plan.base.id, "data_dir": str(request.data_dir), "plan": plan.to_json(),
                            "unpacked_bytes": unpacked, "unpack_seconds": round(unpack_seconds, 3)}
    metrics = {"bytes": float(unpacked), "duration_seconds": round(total, 3),
               "peak_rss_bytes": float(sysinfo.peak_rss_bytes())}
    if recovered is None:
        lines.append(f"start it with: {plan.start_command()}")
        lines.append("recovery then fetches WAL with archiver wal-fetch (the server's environment needs the store's "
                     "settings), stops at the target and promotes")
        summary = f"restore of {plan.base.id} into {request.data_dir}: ready to start ({request.target.describe()})"
        return TaskResult(policy=plan.policy, task="restore", summary=summary, lines=lines, data=data, metrics=metrics)
    report = recovered.report
    start = parse_lsn(str(plan.base.manifest["start_lsn"]))
    end = parse_lsn(report.switch_lsn or report.redo_done or str(plan.base.manifest["stop_lsn"]))
    reached = point_reached(report, request.target, recovered.to_end_of_archive)
    lines += [f"point    {reached}",
              f"timeline {report.timeline} from {report.switch_lsn} ({report.reason or 'promoted'})",
              f"wal      replayed {format_lsn(start)} .. {format_lsn(end)} ({format_bytes(max(0, end - start))}), "
              f"{len(report.restored)} WAL file(s) from the archive ({recovered.fetched_ahead} fetched ahead)",
              f"rto      {total:.1f}s (unpack and checks {unpack_seconds:.1f}s, recovery {recovered.seconds:.1f}s)",
              f"server   running from {request.data_dir}; log {plan.logfile()}"]
    data.update(recovery=report.to_json(), point=reached, rto_seconds=round(total, 3),
                recovery_seconds=round(recovered.seconds, 3), wal_bytes=max(0, end - start),
                to_end_of_archive=recovered.to_end_of_archive)
    metrics.update(wal_bytes=float(max(0, end - start)), recovery_seconds=round(recovered.seconds, 3))
    summary = (f"restore of {plan.base.id} into {request.data_dir} to {request.target.describe()}: promoted on "
               f"timeline {report.timeline}, RTO {total:.1f}s")
    logger.info("restore.pitr_done", extra=log.fields(policy=plan.policy, base_backup=plan.base.id, rto=round(total, 3),
                                                      metrics=metrics))
    return TaskResult(policy=plan.policy, task="restore", summary=summary, lines=lines, data=data, metrics=metrics)
