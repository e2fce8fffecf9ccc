"""``archiver wal-receive NAME``: pg_receivewal with a replication slot, each completed segment into the store.

pg_receivewal streams WAL into a local spool (``<spool>/<policy>/``): the segment in progress is
``<segment>.partial``, renamed to its name once complete. This loop pushes every completed segment
(and timeline history file) through the same code as ``wal-push`` (compressed, stored, read back
and checked) and only then removes it from the spool. On SIGTERM/SIGINT pg_receivewal is stopped,
what it completed is pushed, and the segment in progress is pushed as a ``.partial`` version
(kept in the spool: the next start continues it). The slot keeps the server's WAL until
pg_receivewal has it on disk, so the spool must survive restarts: a spool lost with segments not
yet pushed is a gap in the archive (the window shows it).

One receiver per policy: a lock file in the spool (this host) and a store lease (any host) say
so at once (exit 3). pg_receivewal runs with ``--no-loop``; when the connection drops it is started
again here with a growing delay, so a server restart does not end the receiver. It is started so
that it dies with this process (a SIGKILLed receiver must not leave it holding the slot).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..backup.dump import child_env
from ..common import log
from ..common.owner import holder_description
from ..common.process import StderrCapture
from ..common.timeutil import isoformat, utcnow
from ..errors import ExternalCommandFailed, LockBusy, UsageError
from ..pg.binaries import find_tool
from ..pg.connect import server_version_num
from ..pg.dsn import dsn_env, parse_dsn
from ..pg.replication import ensure_physical_slot
from ..policy.schema import Policy
from ..storage.base import Store
from ..storage.leases import StoreLease
from .catalog import pitr_config
from .walnames import WalNameError, parse_wal_name
from .walstore import Pushed, push_wal, wal_recipients

_log = log.get_logger("wal")
SPOOL_ENV = "ARCHIVER_WAL_SPOOL"
LOCK_FILE = ".receiver.lock"
POLL_SECONDS = 0.5
MAX_BACKOFF = 30.0
_PR_SET_PDEATHSIG = 1


def spool_directory(policy: Policy) -> Path:
    """``<pitr.wal.spool_dir | $ARCHIVER_WAL_SPOOL | $TMPDIR/archiver-wal-spool>/<policy>``."""
    config = pitr_config(policy)
    base = config.wal.spool_dir or os.environ.get(SPOOL_ENV) or os.path.join(tempfile.gettempdir(), "archiver-wal-spool")
    return Path(base) / (policy.name or "policy")


def receivewal_argv(program: str, spool: Path, slot: str) -> list[str]:
    return [program, f"--directory={spool}", f"--slot={slot}", "--no-loop", "--no-password", "--status-interval=10"]


def ready_files(spool: Path) -> list[Path]:
    """Completed files pg_receivewal left in the spool, oldest first (history files before segments)."""
    found = []
    for path in spool.iterdir():
        try:
            file = parse_wal_name(path.name)
        except WalNameError:
            continue
        if file.kind in ("segment", "history") and path.is_file():
            found.append((file.kind != "history", path.name, path))
    return [path for _, _, path in sorted(found)]


def partial_files(spool: Path) -> list[Path]:
    return sorted(path for path in spool.glob("*.partial") if path.is_file())


@contextlib.contextmanager
def spool_lock(spool: Path) -> Iterator[None]:
    spool.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(spool / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockBusy(f"another wal-receive uses the spool {spool} on this host",
                           hint="one receiver per policy: the worker runs it for stream policies") from None
        yield
    finally:
        os.close(fd)


def _die_with_parent() -> None:
    """In the child: SIGINT when this process dies (pg_receivewal then closes its files cleanly)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGINT), 0, 0, 0)


class Receiver:
    def __init__(self, policy: Policy, store: Store, *, on_push: Callable[[Pushed], None] | None = None) -> None:
        self.policy = policy
        self.store = store
        self.config = pitr_config(policy)
        self.spool = spool_directory(policy)
        self.on_push = on_push
        self.pushed = 0
        self._child: subprocess.Popen[bytes] | None = None
        self._stderr = StderrCapture("pg_receivewal")

    # -- pushing -------------------------------------------------------------------------------
    def push(self, path: Path, *, keep: bool = False) -> Pushed:
        pushed = push_wal(self.store, path, self.config.wal.compression, wal_recipients(self.policy))
        if not keep:
            path.unlink()
        self.pushed += 1
        lag = max(0.0, (utcnow() - pushed.stored.completed).total_seconds())
        _log.info("wal.pushed", extra=log.fields(policy=self.policy.name, file=path.name, new=pushed.new,
                                                 completed_at=isoformat(pushed.stored.completed),
                                                 seconds=round(pushed.seconds, 3), lag_seconds=round(lag, 3)))
        if self.on_push is not None:
            self.on_push(pushed)
        return pushed

    def push_ready(self) -> int:
        count = 0
        for path in ready_files(self.spool):
            self.push(path)
            count += 1
        return count

    def push_partials(self) -> None:
        for path in partial_files(self.spool):
            if path.stat().st_size:
                self.push(path, keep=True)  # the next pg_receivewal continues it

    # -- pg_receivewal -------------------------------------------------------------------------
    def _start_child(self, argv: list[str], env: dict[str, str]) -> None:
        self._stderr = StderrCapture("pg_receivewal")
        self._child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        stderr = self._child.stderr
        assert stderr is not None

        def relay() -> None:
            for line in stderr:
                self._stderr.add(line)

        threading.Thread(target=relay, name="pg_receivewal-stderr", daemon=True).start()

    def _stop_child(self) -> None:
        child, self._child = self._child, None
        if child is None or child.poll() is not None:
            return
        child.send_signal(signal.SIGINT)  # pg_receivewal flushes and closes its .partial file
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def run(self, *, stop: Callable[[], bool] = lambda: False) -> None:
        """Receive until ``stop()`` or a signal; push what is complete, then the partial segment."""
        dsn = self.policy.database.resolved_dsn()
        log.register_secret(parse_dsn(dsn).get("password"))
        slot = self.config.wal.slot
        if slot is None:
            raise UsageError(f"policy {self.policy.name!r}: pitr.wal.method stream needs pitr.wal.slot")
        holder = holder_description("wal-receive", self.policy.name or "")
        with spool_lock(self.spool), StoreLease(self.store, "wal-receive", holder).held():
            created = ensure_physical_slot(dsn, slot, connect_timeout=self.policy.database.connect_timeout)
            tool = find_tool("pg_receivewal", server_version_num(dsn), self.policy.database.pg_bin_dir)
            _log.info("wal.receive.start", extra=log.fields(policy=self.policy.name, slot=slot, slot_created=created,
                                                            spool=str(self.spool), pg_receivewal=tool.version))
            argv = receivewal_argv(str(tool.path), self.spool, slot)
            env = child_env(dsn_env(dsn), f"archiver wal-receive {self.policy.name}")
            try:
                self.push_ready()  # left by a receiver that was killed
                self._loop(argv, env, stop)
            finally:
                self._stop_child()
                self.push_ready()
                self.push_partials()
                _log.info("wal.receive.stopped", extra=log.fields(policy=self.policy.name, pushed=self.pushed))

    def _loop(self, argv: list[str], env: dict[str, str], stop: Callable[[], bool]) -> None:
        backoff = 1.0
        started = time.monotonic()
        self._start_child(argv, env)
        while not stop():
            self.push_ready()
            child = self._child
            if child is not None and child.poll() is not None:
                self.push_ready()
                failure = ExternalCommandFailed("pg_receivewal", child.returncode, self._stderr.text(),
                                                what="the WAL stream stopped")
                if time.monotonic() - started > 60:
                    backoff = 1.0
                _log.warning("wal.receive.restart", extra=log.fields(policy=self.policy.name, in_seconds=backoff,
                                                                     error=log.scrub(str(failure))[-1000:]))
                self._sleep(backoff, stop)
                backoff = min(MAX_BACKOFF, backoff * 2)
                started = time.monotonic()
                self._start_child(argv, env)
                continue
            time.sleep(POLL_SECONDS)

    def _sleep(self, seconds: float, stop: Callable[[], bool]) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not stop():
            self.push_ready()
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))


def run_receiver(policy: Policy, store: Store) -> int:
    """``archiver wal-receive``: until SIGTERM/SIGINT (raised as Interrupted), after which the partial is pushed;
    the number of files pushed."""
    receiver = Receiver(policy, store)
    receiver.run()
    return receiver.pushed
