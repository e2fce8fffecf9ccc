"""Reading ahead on a thread, so that reading a source overlaps with writing what it gave."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Prefetch(Generic[T]):
    """Pulls items from ``source`` on a thread, up to ``depth`` ahead (ADBC batches for an export,
    stored chunks for a restore). An error of the source is raised to the consumer; ``close`` (or
    leaving the ``with`` block) stops the thread, and the source is not read any further (and is
    closed, unless ``close_source`` is False: a source the caller goes on reading afterwards).
    """

    def __init__(self, source: Iterator[T], depth: int = 2, *, close_source: bool = True,
                 name: str = "archiver-prefetch") -> None:
        self._source = source
        self._close_source = close_source
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(("error", exc))
        finally:  # a generator holding a connection (ADBC) lets it go now, not at garbage collection
            close = getattr(self._source, "close", None) if self._close_source else None
            if close is not None:
                close()

    def __iter__(self) -> Iterator[T]:
        while True:
            kind, value = self._queue.get()
            if kind == "end":
                self._queue.put(("end", None))  # iterating again ends at once too
                return
            if kind == "error":
                raise value
            yield value

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.1)
        self._thread.join()

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
