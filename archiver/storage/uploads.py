"""Writes that dead runs left pending: S3 multipart uploads, and temp files of the file store.

A writer killed with SIGKILL (or a vanished pod) cannot abort its own multipart upload, and
S3 keeps its parts, billed and invisible to listings, until someone aborts it (or a lifecycle
rule does). The next run that writes under the same prefix cleans up, but only what no live
run can still own:

- ``older_than``: writes started at or after this moment are kept. A task that holds a lock
  excluding every other writer of the prefix (the cold-tier lock for ``archive/``) passes its
  own start time: whatever is pending from before it started belongs to a run that is gone.
  Without such a lock, pass ``now - grace``.
- ``protect``: says why a given write must stay (a live lease covers its key). Read such
  leases before calling: a run live then is protected even if it ends meanwhile, and one that
  starts later began after ``older_than``.
- ``born``: the start of the run that wrote a key, when the key tells it (a backup id): some
  S3-compatible stores report odd start times (moto dates every upload 2010-11-10), and a
  young run must not lose its upload to one.

A failed listing raises: nothing is aborted on a listing that may be incomplete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..common import log
from ..common.timeutil import format_duration, isoformat, utcnow
from ..errors import ArchiverError, TaskFailed
from .base import IncompleteWrite, PutResult, Store

logger = log.get_logger("uploads")

Protect = Callable[[IncompleteWrite], "str | None"]
Born = Callable[[str], "datetime | None"]


@dataclass(frozen=True)
class UploadVerdict:
    """One pending write and what to do with it, with the reason."""

    write: IncompleteWrite
    since: datetime  # when its run started, as far as can be told
    abort: bool
    reason: str

    @property
    def key(self) -> str:
        return self.write.key

    def line(self, now: datetime | None = None) -> str:
        age = format_duration(max(timedelta(0), (now or utcnow()) - self.since))
        return f"pending {self.write.key}  ({self.write.description}, {age} old)  " \
               f"{'abort' if self.abort else 'keep'}: {self.reason}"

    def to_json(self) -> dict[str, object]:
        return {"key": self.write.key, "what": self.write.description, "since": isoformat(self.since),
                "abort": self.abort, "reason": self.reason}


def judge_pending_uploads(store: Store, prefix: str, *, older_than: datetime, protect: Protect | None = None,
                          born: Born | None = None) -> list[UploadVerdict]:
    """Every pending write under ``prefix``, judged; changes nothing (a failed listing raises)."""
    writes = store.incomplete_writes(prefix)
    verdicts = []
    for write in writes:
        started = born(write.key) if born else None
        since = max(write.started, started) if started else write.started
        reason = protect(write) if protect else None
        if reason is not None:
            verdicts.append(UploadVerdict(write, since, False, reason))
        elif since >= older_than:
            verdicts.append(UploadVerdict(write, since, False, f"started at {isoformat(since)}, not before "
                                                                f"{isoformat(older_than)}: a live run may own it"))
        else:
            verdicts.append(UploadVerdict(write, since, True, f"started at {isoformat(since)}, before "
                                                               f"{isoformat(older_than)}; no live run owns it"))
    return verdicts


def abort_uploads(store: Store, verdicts: list[UploadVerdict]) -> list[UploadVerdict]:
    """Abort the writes judged dead; returns those aborted (an abort that fails raises)."""
    aborted = []
    for verdict in verdicts:
        if not verdict.abort:
            continue
        store.discard_incomplete(verdict.write)
        logger.info("uploads.aborted", extra=log.fields(key=verdict.key, what=verdict.write.description,
                                                        since=isoformat(verdict.since), reason=verdict.reason))
        aborted.append(verdict)
    return aborted


def abort_dead_uploads(store: Store, prefix: str, *, older_than: datetime, protect: Protect | None = None,
                       born: Born | None = None, dry_run: bool = False) -> list[UploadVerdict]:
    """Abort the pending writes under ``prefix`` that no live run owns; every verdict, kept ones too.

    Call it while holding the lock that excludes other writers of ``prefix``, with ``older_than``
    the start of this run (or ``now - grace`` where no such lock exists), before this run writes
    there itself.
    """
    verdicts = judge_pending_uploads(store, prefix, older_than=older_than, protect=protect, born=born)
    if not dry_run:
        abort_uploads(store, verdicts)
    return verdicts


def check_before_manifest(store: Store, results: Iterable[PutResult], *, meanwhile: str = "") -> None:
    """Right before a manifest vouches for them: each object is there with the size that was written
    (``meanwhile``: what else the error should say, e.g. a lease lost during the run)."""
    for result in results:
        info = store.head(result.key)
        if info is None or info.size != result.size:
            found = "missing" if info is None else f"{info.size} bytes"
            raise TaskFailed(f"{store.describe(result.key)} is {found} before its manifest was written "
                             f"(wrote {result.size} bytes{meanwhile}): no manifest written")


def remove_quietly(store: Store, keys: Iterable[str], *, event: str) -> None:
    """Best effort, after a failed run: what cannot be removed now is an orphan that prune removes
    after its grace period (a warning ``event`` says which)."""
    for key in keys:
        try:
            store.delete(key)
        except ArchiverError as exc:
            logger.warning(event, extra=log.fields(key=key, error=str(exc)))
