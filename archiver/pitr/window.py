"""The recoverable window: from which base backup, along which timelines, up to which point (pure).

Recovery from a base backup replays WAL from the backup's start, one segment after the other,
until the target: every segment in between must be in the archive. Past a timeline switch the
segments come from the new timeline (its history file says where it branched off its parent),
as PostgreSQL's recovery reads them: for each segment, the newest timeline of the chain that had
begun by then. A base backup is restorable from its stop (the first consistent point) to the end
of the unbroken run of segments that follows its start; the recoverable window is the union of
those spans, and what lies between them is a gap, called out with the missing segments.

A segment's ``completed`` time bounds what it holds: everything written before it is in it or in
an older segment, so a run of segments ending in one completed at T recovers every transaction
committed up to T.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from .catalog import BaseBackup
from .walnames import DEFAULT_SEGMENT_SIZE, StoredWal, format_lsn, segment_name, segment_start, segno_of


@dataclass(frozen=True)
class TimelineStep:
    """One timeline of a chain: WAL from ``begin`` (an LSN) until ``end`` (None: still going)."""

    timeline: int
    begin: int
    end: int | None


def parse_history(text: str) -> list[tuple[int, int]]:
    """The (parent timeline, switch LSN) entries of a ``.history`` file, oldest first."""
    from .walnames import parse_lsn

    entries = []
    for line in text.splitlines():
        fields = line.strip().split(None, 2)
        if len(fields) >= 2 and not line.lstrip().startswith("#") and fields[0].isdigit():
            entries.append((int(fields[0]), parse_lsn(fields[1])))
    return entries


def chain_for(timeline: int, histories: dict[int, list[tuple[int, int]]]) -> list[TimelineStep]:
    """The timelines recovery walks to reach ``timeline``: its ancestors from its history file, then itself."""
    steps: list[TimelineStep] = []
    begin = 0
    for parent, switch in histories.get(timeline, []):
        steps.append(TimelineStep(parent, begin, switch))
        begin = switch
    steps.append(TimelineStep(timeline, begin, None))
    return steps


@dataclass
class WalIndex:
    """The stored WAL, by timeline and segment number (a complete segment preferred to a partial)."""

    segment_size: int = DEFAULT_SEGMENT_SIZE
    files: dict[tuple[int, int], StoredWal] = field(default_factory=dict)
    histories: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    history_files: set[int] = field(default_factory=set)

    @classmethod
    def build(cls, wal: list[StoredWal], histories: dict[int, list[tuple[int, int]]],
              segment_size: int = DEFAULT_SEGMENT_SIZE) -> WalIndex:
        index = cls(segment_size, {}, dict(histories), {item.file.timeline for item in wal if item.file.kind == "history"})
        for item in wal:
            if item.file.kind not in ("segment", "partial"):
                continue
            slot = (item.file.timeline, item.file.segno(segment_size))
            current = index.files.get(slot)
            if current is None or _better(item, current):
                index.files[slot] = item
        return index

    @property
    def latest_timeline(self) -> int:
        """The newest timeline recovery would follow (``recovery_target_timeline = latest``)."""
        return max(self.history_files | {timeline for timeline, _ in self.files} | {1})

    @property
    def last_archived(self) -> datetime | None:
        return max((item.completed for item in self.files.values()), default=None)

    def needed(self, chain: list[TimelineStep], segno: int) -> tuple[int, StoredWal | None]:
        """The timeline whose file recovery reads for ``segno`` on ``chain``, and that file if stored."""
        timeline = chain[0].timeline
        for step in chain:
            if segno_of(step.begin, self.segment_size) <= segno:
                timeline = step.timeline
        return timeline, self.files.get((timeline, segno))


def _better(candidate: StoredWal, current: StoredWal) -> bool:
    if (candidate.file.kind == "segment") != (current.file.kind == "segment"):
        return candidate.file.kind == "segment"
    return candidate.completed > current.completed


@dataclass(frozen=True)
class Span:
    """What one base backup can be recovered to: from its stop to the end of the WAL run after it."""

    base: BaseBackup
    chain: tuple[TimelineStep, ...]
    target_timeline: int
    start_time: datetime
    start_lsn: int
    end_time: datetime | None  # None: the WAL the backup itself needs is not all archived
    end_lsn: int
    end_segment: str | None  # the last file of the run
    last_segno: int  # the last segment number of the run (start - 1 when none)
    missing: str | None  # the first file missing after the run (a gap, or the archive's end)

    @property
    def restorable(self) -> bool:
        return self.end_time is not None

    def contains_time(self, moment: datetime) -> bool:
        return self.end_time is not None and self.start_time <= moment <= self.end_time

    def contains_lsn(self, lsn: int) -> bool:
        return self.end_time is not None and self.start_lsn <= lsn <= self.end_lsn

    def describe(self) -> str:
        if self.end_time is None:
            return (f"base backup {self.base.id}: not restorable, its WAL is incomplete (first missing: "
                    f"{self.missing})")
        return (f"{_show(self.start_time)} .. {_show(self.end_time)} (LSN {format_lsn(self.start_lsn)} .. "
                f"{format_lsn(self.end_lsn)}, timeline {self.target_timeline}) from base backup {self.base.id}")


def _show(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def span_of(base: BaseBackup, index: WalIndex) -> Span:
    """How far WAL reaches unbroken from ``base``'s start, along the chain to the latest timeline (or, for a
    base on a branch the latest timeline left before the base began, along the base's own timeline)."""
    chain = chain_for(index.latest_timeline, index.histories)
    own = [step for step in chain if step.timeline == base.timeline]
    if not own or (own[0].end is not None and own[0].end <= base.start_lsn):
        chain = chain_for(base.timeline, index.histories)
    segno, last = base.start_segno, None
    while (stored := index.needed(chain, segno)[1]) is not None:
        last, segno = stored, segno + 1
        if stored.file.kind == "partial":
            break  # what follows a segment cut short cannot be read
    last_segno = segno - 1
    complete = last is not None and last.file.kind == "segment"
    if last is not None and not complete:
        missing = f"{last.file.segment_name} (only a .partial is stored)"
    else:
        missing = segment_name(index.needed(chain, segno)[0], segno, index.segment_size)
    restorable = last is not None and last_segno >= base.stop_segno and (
        complete or last_segno > base.stop_segno or last.completed >= base.stop_time)
    end_lsn = max(segment_start(last_segno + (1 if complete else 0), index.segment_size), base.stop_lsn)
    end_time = last.completed if restorable and last is not None else None
    # the stop time is read from the server's clock just after the backup: the stop segment may have been
    # completed a moment earlier, and then the backup's consistent point is that segment's end
    start_time = min(base.stop_time, end_time) if end_time is not None else base.stop_time
    return Span(base, tuple(chain), chain[-1].timeline, start_time, base.stop_lsn, end_time, end_lsn,
                last.name if last is not None else None, last_segno, missing)


@dataclass(frozen=True)
class Window:
    spans: list[Span]  # one per base backup, oldest base first
    last_archived: datetime | None
    latest_timeline: int

    @property
    def restorable(self) -> list[Span]:
        return [span for span in self.spans if span.restorable]

    @property
    def start(self) -> datetime | None:
        return min((span.start_time for span in self.restorable), default=None)

    @property
    def end(self) -> datetime | None:
        return max((span.end_time for span in self.restorable if span.end_time), default=None)

    def ranges(self) -> list[tuple[datetime, datetime]]:
        """The recoverable time ranges, merged, oldest first."""
        merged: list[tuple[datetime, datetime]] = []
        for span in sorted(self.restorable, key=lambda item: item.start_time):
            assert span.end_time is not None
            if merged and span.start_time <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], span.end_time))
            else:
                merged.append((span.start_time, span.end_time))
        return merged

    def gaps(self) -> list[str]:
        """Holes in the window, each with the first segment missing there."""
        text = []
        ranges = self.ranges()
        for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False):
            cause = next((span.missing for span in self.restorable if span.end_time == end), None)
            text.append(f"{_show(end)} .. {_show(start)} cannot be recovered (first missing WAL: {cause})")
        return text

    def describe(self) -> str:
        ranges = self.ranges()
        if not ranges:
            return "nothing is recoverable (no base backup has all the WAL it needs)"
        return ", ".join(f"{_show(start)} .. {_show(end)}" for start, end in ranges)


def window_of(bases: list[BaseBackup], index: WalIndex) -> Window:
    spans = [span_of(base, index) for base in sorted(bases, key=lambda item: (item.stop_time, item.id))]
    return Window(spans, index.last_archived, index.latest_timeline)
