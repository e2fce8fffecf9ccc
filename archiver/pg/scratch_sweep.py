"""Scratch PostgreSQL instances whose owner died: found and removed by the next run that makes one.

A local scratch cluster lives in ``<parent>/archiver-scratch-*`` (``parent`` is the policy's
``verify.scratch.work_dir``, else ``$TMPDIR``). Its owner holds an exclusive ``flock`` on
``owner.lock`` in that directory for as long as it lives; the kernel drops the lock when the
process dies, however it dies. A postmaster started by ``pg_ctl`` does not die with its owner,
so a SIGKILLed drill leaves a running server and its data behind.

Before it creates its own, each run looks at every scratch directory in the same parent: one
whose lock it can take belongs to a dead owner: its postmaster is stopped (``pg_ctl stop -m
immediate`` as the server user, only when that process really runs from this directory) and the
directory is removed. A directory whose lock is held (a live owner, the test suite's server) or
that has no owner record (being created, or made by an older archiver) is never touched. Only
records owned by this user are trusted (as root, a record other users cannot have written).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common import log
from ..common.owner import ProcessIdentity, process_start
from ..common.timeutil import isoformat, utcnow

SCRATCH_PREFIX = "archiver-scratch-"
OWNER_FILE = "owner.lock"

logger = log.get_logger("scratch")


@dataclass
class OwnerClaim:
    """This process's hold on a scratch directory: an open, flock-ed ``owner.lock``."""

    path: Path
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


def claim(directory: Path, *, bindir: Path) -> OwnerClaim:
    """Record this process as the owner of ``directory`` and hold the lock until ``release``.

    The record is written and locked under a temporary name, then renamed into place: a sweeper
    never sees an ``owner.lock`` that is not locked yet.
    """
    temporary = directory / f".{OWNER_FILE}.{secrets.token_hex(4)}"
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        record = {"owner": ProcessIdentity.current().to_json(), "bindir": str(bindir),
                  "created_at": isoformat(utcnow())}
        os.write(fd, json.dumps(record).encode())
        os.rename(temporary, directory / OWNER_FILE)
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    return OwnerClaim(directory / OWNER_FILE, fd)


def sweep(parent: Path, *, run_as: dict[str, Any]) -> list[str]:
    """Stop and remove the scratch instances in ``parent`` whose owner is dead; what was removed."""
    removed: list[str] = []
    try:
        candidates = sorted(path for path in parent.iterdir() if path.name.startswith(SCRATCH_PREFIX))
    except OSError:
        return removed
    for directory in candidates:
        fd = _open_owner_record(directory)
        if fd is None:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # its owner is alive
        try:
            text = _remove_dead(directory, _read_record(fd), run_as)
        finally:
            os.close(fd)
        if text:
            removed.append(text)
    return removed


def _open_owner_record(directory: Path) -> int | None:
    """The owner record's descriptor, if it is a regular file of ours in a real directory."""
    try:
        if directory.is_symlink() or not directory.is_dir():
            return None
        fd = os.open(directory / OWNER_FILE, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # no owner record: being created, or made by an older archiver
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or info.st_mode & 61440 != 32768:
        os.close(fd)
        return None
    return fd


def _read_record(fd: int) -> dict[str, Any]:
    try:
        document = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _remove_dead(directory: Path, record: dict[str, Any], run_as: dict[str, Any]) -> str | None:
    owner = ProcessIdentity.from_json(record.get("owner"))
    whose = owner.describe() if owner else "an unknown process"
    datadir = directory / "data"
    postmaster = _running_postmaster(datadir)
    if postmaster is not None and not _stop(datadir, Path(str(record.get("bindir", ""))), postmaster, run_as):
        logger.warning("scratch.dead_owner_not_stopped", extra=log.fields(
            directory=str(directory), owner=whose, postmaster_pid=postmaster))
        return None
    shutil.rmtree(directory, ignore_errors=True)
    text = (f"removed scratch directory {directory} of {whose}, which died"
            + (f" (stopped its PostgreSQL, pid {postmaster})" if postmaster is not None else ""))
    logger.warning("scratch.dead_owner_removed", extra=log.fields(directory=str(directory), owner=whose,
                                                                  postmaster_pid=postmaster))
    return text


def _running_postmaster(datadir: Path) -> int | None:
    """The pid of the postmaster that runs from ``datadir`` right now, or None.

    The pid in ``postmaster.pid`` may be stale and reused by another process (even another
    cluster's postmaster): it counts only when that process's working directory is this one.
    """
    try:
        pid = int((datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except (OSError, ValueError):
        return None
    if process_start(pid) is None or Path(cwd) != datadir.resolve():
        return None
    return pid


def _stop(datadir: Path, bindir: Path, pid: int, run_as: dict[str, Any]) -> bool:
    """``pg_ctl stop -m immediate`` as the server user; True once the postmaster is gone."""
    pg_ctl = bindir / "pg_ctl"
    if pg_ctl.is_file():
        try:
            subprocess.run([str(pg_ctl), "-D", str(datadir), "-m", "immediate", "-w", "-t", "60", "stop"],
                           capture_output=True, text=True, timeout=90, cwd=datadir.parent, **run_as)
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.warning("scratch.pg_ctl_failed", extra=log.fields(datadir=str(datadir), error=str(exc)))
    deadline = time.monotonic() + 10  # pg_ctl -w returns once the pid file is gone: the process ends just after
    while process_start(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    return process_start(pid) is None
