"""Stopping on SIGTERM or SIGINT within a grace period, whatever is in flight.

The first signal raises :class:`archiver.errors.Interrupted` in the main thread, so a stopped
run unwinds like a failed one: writers abort their uploads, child processes are killed, no
manifest is written, the run is recorded as interrupted. Clean-up then talks to storage under
a short timeout of its own (see ``stop_requested``), and worker threads still blocked in I/O are
abandoned at exit rather than waited for.

A watchdog makes the grace period a promise: if unwinding takes longer (a database call that
does not return, a stalled endpoint, a main thread stuck in C code where no Python signal handler
can run), it logs ``stop.forced`` and ends the process with exit code 130. It learns of the
signal through ``signal.set_wakeup_fd``, which the C-level handler writes to even while the main
thread cannot run Python. A second signal ends the process at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

from ..errors import ExitCode, Interrupted
from . import log

DEFAULT_GRACE_SECONDS = 25.0  # below Kubernetes' default terminationGracePeriodSeconds (30)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_log = log.get_logger("stop")


class _State:
    grace = DEFAULT_GRACE_SECONDS
    requested = threading.Event()
    raised = False
    received = 0
    deadline: float | None = None
    lock = threading.Lock()


def configure(grace_seconds: float) -> None:
    """The grace period: how long a stop may take before the process ends regardless."""
    _State.grace = grace_seconds


def grace_seconds() -> float:
    return _State.grace


def stop_requested() -> bool:
    """True once SIGTERM or SIGINT arrived: clean-up should be short from here on."""
    return _State.requested.is_set()


def remaining_grace() -> float | None:
    """Seconds left before the watchdog ends the process; None when no stop was requested."""
    return None if _State.deadline is None else max(0.0, _State.deadline - time.monotonic())


def _handler(signum: int, frame: FrameType | None) -> None:
    """Python-level handler (main thread): raise once, then let the clean-up run undisturbed."""
    _State.requested.set()
    if _State.raised:
        return
    _State.raised = True
    raise Interrupted(signal.Signals(signum).name)


def _flush_logs() -> None:
    for handler in logging.getLogger(log.LOGGER_NAME).handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    with contextlib.suppress(Exception):
        sys.stderr.flush()


def force_exit(reason: str) -> None:
    """End the process now (exit 130), saying why; in-flight work is abandoned."""
    with contextlib.suppress(Exception):
        _log.error("stop.forced", extra=log.fields(reason=reason, grace_seconds=_State.grace,
                                                   exit_code=int(ExitCode.INTERRUPTED)))
    _flush_logs()
    os._exit(int(ExitCode.INTERRUPTED))


def _arm(signum: int) -> None:
    """Seen by the watcher thread for every stop signal, even while the main thread is stuck."""
    name = signal.Signals(signum).name
    with _State.lock:
        _State.received += 1
        first = _State.received == 1
        if first:
            _State.deadline = time.monotonic() + _State.grace
    _State.requested.set()
    if not first:
        force_exit(f"a second signal ({name}) during the clean-up")
    _log.warning("stop.requested", extra=log.fields(signal=name, grace_seconds=_State.grace))
    timer = threading.Timer(_State.grace, force_exit,
                            args=(f"the clean-up after {name} did not finish within the grace period "
                                  f"({_State.grace:g}s); work in flight was abandoned",))
    timer.daemon = True
    timer.start()


def _watch(read_fd: int) -> None:
    with contextlib.closing(os.fdopen(read_fd, "rb", buffering=0)) as pipe:
        while data := pipe.read(64):
            for signum in data:
                if signum in STOP_SIGNALS and signal.getsignal(signum) is _handler:
                    _arm(signum)


def abandoned_threads() -> list[str]:
    """Non-daemon threads still running (blocked in I/O): exit must not wait for them."""
    return [thread.name for thread in threading.enumerate()
            if thread is not threading.current_thread() and thread.is_alive() and not thread.daemon]


def exit_interrupted() -> None:
    """Exit 130 without waiting for worker threads still blocked in I/O (uploads of parts)."""
    stuck = abandoned_threads()
    if stuck:
        _log.warning("stop.abandoned_threads", extra=log.fields(threads=stuck))
        _flush_logs()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(int(ExitCode.INTERRUPTED))
    sys.exit(int(ExitCode.INTERRUPTED))


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise Interrupted in the main thread; a watchdog bounds the clean-up.

    Handlers replaced inside the block (the worker installs its own) switch the watchdog off for
    that signal: it only acts while this module's handler is the one in place.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous: dict[signal.Signals, Any] = {sig: signal.signal(sig, _handler) for sig in STOP_SIGNALS}
    threading.Thread(target=_watch, args=(read_fd,), name="archiver-stop-watch", daemon=True).start()
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_fd)
