"""A PostgreSQL server recovering from a restored base backup: started, watched until recovery ends,
and what it reached read back from its own files.

The server runs as the ``postgres`` user when archiver runs as root (as every server program does
here: :mod:`archiver.pg.scratch`). Recovery is watched from outside, without a connection:
``pg_controldata`` says when the cluster is ``in production`` (recovery ended and it was
promoted), and a postmaster that is gone before that means recovery failed (its log says why).
What it reached comes from the new timeline's history file (the switch point and the reason: the
transaction it stopped before, or "no recovery target specified") and from its log (the last
transaction replayed, the WAL files restored).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ExternalCommandFailed, TaskFailed
from .scratch import SERVER_USER, _run_as, _tail
from .scratch_sweep import _running_postmaster

IN_PRODUCTION = "in production"
_STOPPING = re.compile(r"recovery stopping ((?:before|after) .+)")
_LAST_TRANSACTION = re.compile(r"last completed transaction was at log time (.+)")
_RESTORED = re.compile(r'restored log file "([0-9A-F]{24})" from archive')
_REDO_DONE = re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)")


class RecoveryStopped(TaskFailed):
    """The server stopped before recovery ended; ``log`` holds the end of its log."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


def chown_tree(root: Path) -> None:
    """As root: give a restored data directory to the server user (its files must be its own)."""
    if os.geteuid() != 0:
        return
    import pwd

    entry = pwd.getpwnam(SERVER_USER)
    os.lchown(root, entry.pw_uid, entry.pw_gid)
    for directory, dirnames, filenames in os.walk(root):
        os.lchown(directory, entry.pw_uid, entry.pw_gid)
        for name in dirnames + filenames:
            os.lchown(os.path.join(directory, name), entry.pw_uid, entry.pw_gid)


def server_user_can_reach(path: Path) -> bool:
    """Whether the server user can open ``path`` (as root, every parent must be traversable by it)."""
    if os.geteuid() != 0:
        return True
    return subprocess.run(["test", "-r", str(path)], **_run_as()).returncode == 0


@dataclass
class RecoveryReport:
    timeline: int | None = None  # the new timeline (None: no history file, so no promotion happened)
    switch_lsn: str | None = None
    reason: str | None = None  # the history file's reason: "before transaction 739 at ..." / "no recovery target ..."
    stopped: str | None = None  # the log's "recovery stopping before ..." detail
    last_transaction: str | None = None  # the log's "last completed transaction was at log time ..."
    redo_done: str | None = None
    restored: list[str] = field(default_factory=list)  # WAL segments restore_command delivered

    def to_json(self) -> dict[str, Any]:
        return {"timeline": self.timeline, "switch_lsn": self.switch_lsn, "reason": self.reason,
                "stopped": self.stopped, "last_transaction": self.last_transaction, "redo_done": self.redo_done,
                "wal_files_restored": len(self.restored)}


class RecoveryServer:
    """pg_ctl on a restored data directory; ``options`` are the postmaster's (``-p PORT``, ``-c name=value``)."""

    def __init__(self, bindir: Path, datadir: Path, logfile: Path, options: list[str] | None = None) -> None:
        self.bindir = bindir
        self.datadir = datadir
        self.logfile = logfile
        self.options = list(options or [])

    def _run(self, argv: list[str], what: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.datadir.parent,
                                    **_run_as())
        except subprocess.TimeoutExpired:
            raise ExternalCommandFailed(Path(argv[0]).name, None, "", what=f"{what} timed out") from None
        if result.returncode != 0:
            raise ExternalCommandFailed(Path(argv[0]).name, result.returncode, _tail(result.stderr + result.stdout),
                                        what=what)
        return result

    def start_argv(self) -> list[str]:
        argv = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile), "-W"]
        if self.options:
            argv += ["-o", " ".join(shlex.quote(option) for option in self.options)]
        return argv + ["start"]

    def start(self) -> None:
        """Start the postmaster without waiting (recovery may take long; :meth:`wait_until_promoted` watches)."""
        if not self.logfile.exists():
            self.logfile.touch(mode=0o600)
            chown_tree(self.logfile)
        self._run(self.start_argv(), "start of the restored server")

    def running(self) -> bool:
        return _running_postmaster(self.datadir) is not None

    def state(self) -> str:
        result = subprocess.run([str(self.bindir / "pg_controldata"), "-D", str(self.datadir)], capture_output=True,
                                text=True, timeout=60, env={**os.environ, "LC_ALL": "C"})
        match = re.search(r"^Database cluster state:\s*(.+)$", result.stdout, re.MULTILINE)
        return match.group(1).strip() if match else f"unknown ({_tail(result.stderr, 3)})"

    def _control_written_since(self, moment: float) -> bool:
        try:
            return (self.datadir / "global" / "pg_control").stat().st_mtime > moment
        except OSError:
            return False

    def wait_until_promoted(self, since: float, *, started_within: float = 20.0, poll: float = 0.5,
                            on_wait: Callable[[], None] | None = None) -> None:
        """Until the cluster is in production; RecoveryStopped when the postmaster is gone before that.

        ``since`` is the time.time() before the start: the restored pg_control says "in production" (the
        source's state when it was copied) until the startup process rewrites it, so only a state written
        after the start counts.
        """
        deadline = time.monotonic() + started_within
        seen_running = False
        while True:
            promoted = self._control_written_since(since) and self.state() == IN_PRODUCTION
            if self.running():
                if promoted:
                    return
                seen_running = True
            elif seen_running or time.monotonic() > deadline:
                if promoted:
                    return
                raise RecoveryStopped(f"the restored server stopped during recovery (cluster state: {self.state()}); "
                                      f"its log ({self.logfile}) ends:\n{self.log_tail()}", self.log_tail())
            if on_wait is not None:
                on_wait()
            time.sleep(poll)

    def stop(self, mode: str = "fast") -> None:
        if self.running():
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", "120", "stop"],
                      "stop of the restored server", timeout=180)

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return _tail(self.log_text(), lines)

    def report(self) -> RecoveryReport:
        report = RecoveryReport()
        histories = sorted((self.datadir / "pg_wal").glob("*.history"))
        if histories:
            newest = histories[-1]
            report.timeline = int(newest.name[:8], 16)
            try:
                last = [line for line in newest.read_text().splitlines() if line.strip()][-1].split("\t")
                report.switch_lsn, report.reason = last[1].strip(), (last[2].strip() if len(last) > 2 else None)
            except (OSError, IndexError):
                pass
        text = self.log_text()
        for pattern, name in ((_STOPPING, "stopped"), (_LAST_TRANSACTION, "last_transaction"), (_REDO_DONE, "redo_done")):
            found = pattern.findall(text)
            if found:
                setattr(report, name, found[-1].strip())
        report.restored = _RESTORED.findall(text)
        return report
