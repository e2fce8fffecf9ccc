"""Feeding pg_restore: the dump streams from the store, its last megabyte held back until it is proven.

Its SHA-256 and sizes are checked while it streams; pg_restore cannot finish, so cannot commit,
before the whole object is proven. ``--jobs`` and some ``--clean`` restores spool the dump to a
work directory instead, checked completely before anything touches the target.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .planned import RestorePlan


import contextlib
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..common.prefetch import Prefetch
from ..common.process import FeedingCommand
from ..common.progress import Progress
from ..common.timeutil import utcnow
from ..errors import ExternalCommandFailed, TaskFailed
from ..storage.base import Store
from ..storage.integrity import CheckedObject

HOLD_BACK = 1024 * 1024  # bytes of the dump withheld from pg_restore until the object is proven
POST_DATA_STEP = ("creating INDEX", "creating CONSTRAINT", "creating FK CONSTRAINT", "creating TRIGGER",
                  "creating RULE", "creating POLICY", "creating INDEX ATTACH", "creating MATERIALIZED VIEW DATA",
                  "creating ACL", "creating COMMENT")


# -- running it ------------------------------------------------------------------------------------

@dataclass
class RestoreOutcome:
    seconds: float = 0.0  # from the first write to the target to post_restore: the achieved RTO
    download_seconds: float = 0.0  # until the dump object was completely read and proven
    load_seconds: float = 0.0  # until pg_restore had every byte (data loaded)
    post_data_seconds: float = 0.0  # indexes, constraints, ... after the last byte, and commit
    stored_bytes: int = 0
    dump_bytes: int = 0
    roles_created: list[str] = field(default_factory=list)
    created_database: bool = False  # this run created the target database (so only this run may drop it)
    started_at: datetime = field(default_factory=utcnow)
    properties_failed: list[tuple[str, str]] = field(default_factory=list)  # (statement, error)

    def durations(self) -> dict[str, float]:
        return {"restore": round(self.seconds, 3), "download": round(self.download_seconds, 3),
                "load": round(self.load_seconds, 3), "post_data": round(self.post_data_seconds, 3)}


class _StepCounter:
    """Counts pg_restore's --verbose lines about post-data steps (from its stderr thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def __call__(self, line: str) -> None:
        if any(marker in line for marker in POST_DATA_STEP):
            with self._lock:
                self._count += 1

    def take(self) -> int:
        with self._lock:
            count, self._count = self._count, 0
        return count


class _Withheld:
    """Passes chunks on but always keeps the last ``size`` bytes back."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._chunks: deque[bytes] = deque()
        self._held = 0

    def push(self, chunk: bytes) -> Iterator[bytes]:
        self._chunks.append(chunk)
        self._held += len(chunk)
        while self._chunks and self._held - len(self._chunks[0]) >= self.size:
            first = self._chunks.popleft()
            self._held -= len(first)
            yield first

    def rest(self) -> Iterator[bytes]:
        while self._chunks:
            yield self._chunks.popleft()
        self._held = 0


def stream_restore(plan: RestorePlan, store: Store, argv: list[str], env: dict[str, str], progress: Progress,
                    outcome: RestoreOutcome, clock: float) -> None:
    """Object -> decompressor -> pg_restore's stdin; the tail is released only once the object is proven."""
    what = f"restore of backup {plan.source.entry.id} into {plan.target_name} failed"
    steps = _StepCounter()
    progress.phase(f"restore {plan.target_name}: download and load", total=outcome.dump_bytes or None)
    with CheckedObject(store, plan.source.dump, f"the dump object of backup {plan.source.entry.id}", plan.keyring) as obj, \
            Prefetch(obj.chunks(), depth=4, close_source=False) as chunks, \
            FeedingCommand(argv, env, "pg_restore", what=what, on_line=steps) as child:
        withheld = _Withheld(HOLD_BACK)
        accepted = True
        for chunk in chunks:
            for piece in withheld.push(chunk):
                accepted = child.write(piece)
                if not accepted:
                    break
            progress.advance(len(chunk))
            if not accepted:
                break
        if not accepted:
            _explain_early_exit(plan, obj, chunks, child, progress)
        obj.finish()  # raises on any mismatch: pg_restore is killed and its transaction rolls back
        outcome.download_seconds = time.monotonic() - clock
        for piece in withheld.rest():
            if not child.write(piece):
                break
        outcome.load_seconds = time.monotonic() - clock
        progress.phase(f"restore {plan.target_name}: indexes, constraints, commit", unit="steps")
        child.finish(while_waiting=lambda: progress.advance(steps.take()))
    progress.done()
    outcome.post_data_seconds = time.monotonic() - clock - outcome.load_seconds


def _explain_early_exit(plan: RestorePlan, obj: CheckedObject, chunks: Prefetch[bytes], child: FeedingCommand,
                        progress: Progress) -> None:
    """pg_restore stopped reading before the end: was the object damaged, or did the restore fail?"""
    progress.phase("checking the rest of the dump object to explain pg_restore's failure",
                   total=int(plan.source.dump.get("uncompressed_size") or 0) or None)
    mismatch = obj.read_rest_and_check(chunks)
    progress.done()
    try:
        child.finish()
    except ExternalCommandFailed as failure:
        if mismatch is not None:
            last = (failure.stderr_tail.strip().splitlines() or [""])[-1]
            mismatch.message += f"\n(pg_restore stopped on it: {last})"
            raise mismatch from None
        raise
    if mismatch is not None:
        raise mismatch
    raise TaskFailed("pg_restore exited before it had read the whole dump (the dump matched its manifest): "
                     "this should not happen with a complete custom-format dump", hint="report it; rerun with --jobs 1")


@contextlib.contextmanager
def spooled(plan: RestorePlan, store: Store, progress: Progress, outcome: RestoreOutcome,
             clock: float) -> Iterator[Path]:
    """The dump decompressed into a private temp directory, proven complete; removed afterwards."""
    assert plan.work_dir is not None
    directory = Path(tempfile.mkdtemp(prefix="archiver-restore-", dir=plan.work_dir))
    try:
        path = directory / "dump.pgdump"
        progress.phase(f"download {plan.source.entry.id} to {directory}", total=outcome.dump_bytes or None)
        with CheckedObject(store, plan.source.dump, f"the dump object of backup {plan.source.entry.id}", plan.keyring) as obj, \
                open(path, "wb") as out:
            for chunk in obj.chunks():
                out.write(chunk)
                progress.advance(len(chunk))
            obj.finish()
        progress.done()
        outcome.download_seconds = time.monotonic() - clock
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def file_restore(plan: RestorePlan, argv: list[str], env: dict[str, str], progress: Progress,
                  outcome: RestoreOutcome, clock: float) -> None:
    what = f"restore of backup {plan.source.entry.id} into {plan.target_name} failed"
    steps = _StepCounter()
    progress.phase(f"restore {plan.target_name}: pg_restore" + (f" --jobs {plan.jobs}" if plan.jobs > 1 else ""),
                   unit="steps")
    with FeedingCommand(argv, env, "pg_restore", what=what, on_line=steps) as child:
        child.finish(while_waiting=lambda: progress.advance(steps.take()))
    progress.done()
    outcome.load_seconds = time.monotonic() - clock
