"""Turning SIGTERM into an exception, so a stopped run unwinds like a failed one.

Every streaming step already aborts cleanly on an exception (writers abort their multipart
uploads, child processes are killed, no manifest is written), so raising in the main thread is
the whole of a clean shutdown.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from .errors import Cancelled


@contextlib.contextmanager
def cancel_on_signals(signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        for sig in signals:  # a second signal must not interrupt the clean-up
            signal.signal(sig, signal.SIG_IGN)
        raise Cancelled(f"stopped by {name}: work in flight was aborted, nothing half-written was kept")

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
