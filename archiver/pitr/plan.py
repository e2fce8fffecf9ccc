"""The plan of a restore to a point in time, made read-only before anything is written.

It picks the newest base backup whose span holds the target (a base backup is restorable from its
stop to the end of the unbroken WAL after it), refuses a target outside the recoverable window
(saying what the window is, and its gaps), lists the WAL files recovery will ask for, and finds the
server programs of the backup's major version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.timeutil import format_bytes, format_duration, isoformat, utcnow
from ..errors import UsageError
from ..pg import binaries
from ..policy.schema import Policy
from ..storage.agekeys import Keyring
from .settings import Target
from .state import PitrState
from .walnames import StoredWal, format_lsn, history_name, parse_lsn, segment_name, segno_of
from .window import Span, Window


@dataclass(frozen=True)
class PitrRequest:
    data_dir: Path
    target: Target
    policies_path: str  # absolute: restore_command runs in the server's working directory
    start: bool = False
    port: int | None = None
    keep_archiving: bool = False
    dry_run: bool = False


@dataclass
class PitrPlan:
    policy: str
    request: PitrRequest
    span: Span
    window: Window
    files: list[tuple[str, StoredWal]]  # (name recovery asks for, the stored file), in recovery's order
    bindir: Path | None  # server programs of the backup's major (None: not installed here)
    pg_verifybackup: Path
    notes: list[str] = field(default_factory=list)
    host_notes: list[str] = field(default_factory=list)  # what unpacking had to adapt to this host
    keyring: Keyring | None = None  # identities of an encrypted archive (set by the restore or drill)

    @property
    def base(self) -> Any:
        return self.span.base

    @property
    def major(self) -> int:
        return int(self.base.manifest["server"]["version_num"]) // 10000

    def logfile(self) -> Path:
        data_dir = self.request.data_dir
        return data_dir.with_name(f"{data_dir.name}.recovery.log")

    def start_command(self) -> str:
        pg_ctl = (self.bindir / "pg_ctl") if self.bindir else Path(f"/usr/lib/postgresql/{self.major}/bin/pg_ctl")
        command = f"{pg_ctl} -D {self.request.data_dir} -l {self.logfile()} start"
        return f"sudo -u postgres {command}" if _root() else command

    def lines(self) -> list[str]:
        base, request = self.base, self.request
        age = format_duration(utcnow() - base.stop_time)
        entry = base.manifest["objects"]["base"]
        drill = {"yes": "passed", "failed": "FAILED", "no": "never run"}[base.verified]
        lines = [f"base     {base.id}  ended {base.stop_time:%Y-%m-%d %H:%M:%S} UTC ({age} ago), "
                 f"{format_bytes(base.size)} stored ({format_bytes(int(entry.get('uncompressed_size', 0)))} data, "
                 f"{entry.get('codec', 'none')}), PostgreSQL {base.manifest['server']['version']}, timeline "
                 f"{base.timeline}, LSN {base.manifest['start_lsn']} .. {base.manifest['stop_lsn']}, drill: {drill}",
                 f"window   {self.window.describe()}"]
        lines += [f"gap      {gap}" for gap in self.window.gaps()]
        lines.append(f"target   {request.target.describe()}: within {self.span.describe()}")
        if self.files:
            lines.append(f"wal      up to {len(self.files)} WAL file(s), {self.files[0][0]} .. {self.files[-1][0]}, each "
                         "checked against its SHA-256 before recovery reads it")
        state = "exists, empty" if request.data_dir.exists() else "does not exist: it will be created"
        lines.append(f"data dir {request.data_dir}: {state}")
        lines += [f"step     {step}" for step in self.steps()]
        lines += [f"note     {note}" for note in self.notes]
        return lines

    def steps(self) -> list[str]:
        request = self.request
        target = {"time": "recovery_target_time", "lsn": "recovery_target_lsn"}.get(request.target.kind)
        settings = (f"restore_command (archiver wal-fetch), {target + ', ' if target else ''}recovery_target_action "
                    f"= promote, recovery_target_timeline = {self.span.target_timeline}"
                    + ("" if request.keep_archiving else ", archive_mode = off")
                    + (f", port = {request.port}" if request.port else ""))
        steps = [f"unpack the base backup beside {request.data_dir}, checked against its SHA-256 and sizes",
                 "pg_verifybackup -n against the server's backup_manifest (every file's size and checksum)",
                 f"recovery settings in postgresql.auto.conf: {settings}; recovery.signal",
                 f"move it into place as {request.data_dir}"]
        if request.start:
            steps.append(f"start PostgreSQL {self.major}{' as postgres' if _root() else ''}, wait until recovery has "
                         "ended and the server is promoted")
        else:
            steps.append(f"print the command that starts it: {self.start_command()}")
        return steps

    def to_json(self) -> dict[str, Any]:
        return {"base_backup": self.base.id, "target": self.request.target.describe(),
                "data_dir": str(self.request.data_dir), "timeline": self.span.target_timeline,
                "window": [[isoformat(start), isoformat(end)] for start, end in self.window.ranges()],
                "gaps": self.window.gaps(), "wal_files": len(self.files), "steps": self.steps(), "notes": self.notes}


def _root() -> bool:
    import os

    return os.geteuid() == 0


def choose_span(window: Window, target: Target) -> Span:
    """The newest base backup whose span holds the target; UsageError naming the window otherwise."""
    spans = window.restorable
    if target.kind == "time":
        assert target.time is not None
        moment = target.time
        candidates = [span for span in spans if span.contains_time(moment)]
    elif target.kind == "lsn":
        assert target.lsn is not None
        lsn = parse_lsn(target.lsn)
        candidates = [span for span in spans if span.contains_lsn(lsn)]
    else:
        candidates = sorted(spans, key=lambda span: (span.end_time, span.base.stop_time))[-1:]
    if candidates:
        return max(candidates, key=lambda span: (span.base.stop_time, span.base.id))
    gaps = window.gaps()
    detail = f"; gaps: {'; '.join(gaps)}" if gaps else ""
    if target.kind == "lsn":
        reach = ", ".join(f"{format_lsn(span.start_lsn)} .. {format_lsn(span.end_lsn)}" for span in spans) or "none"
        detail += f"; by LSN: {reach}"
    raise UsageError(f"{target.describe()} is outside the recoverable window: {window.describe()}{detail}",
                     hint="choose a point inside the window; archiver backups list NAME shows it")


def recovery_files(state: PitrState, span: Span, target: Target) -> list[tuple[str, StoredWal]]:
    """The files recovery will ask for, in order: the chain's history files, then the segments from the base
    backup's start up to the target (for a time: up to the first segment completed after it, and one more)."""
    index = state.index
    by_name = {item.name: item for item in state.wal if item.file.kind == "history"}
    files = [(name, by_name[name]) for step in span.chain[1:]
             if (name := history_name(step.timeline)) in by_name]
    last = span.last_segno
    if target.kind == "lsn" and target.lsn is not None:
        last = min(last, segno_of(parse_lsn(target.lsn), index.segment_size) + 1)
    chain = list(span.chain)
    past_target = 0
    for segno in range(span.base.start_segno, last + 1):
        timeline, stored = index.needed(chain, segno)
        if stored is None:
            break
        files.append((segment_name(timeline, segno, index.segment_size), stored))
        if target.kind == "time" and target.time is not None and stored.completed >= target.time:
            past_target += 1
            if past_target >= 2:
                break
    return files


def plan_pitr(policy: Policy, state: PitrState, request: PitrRequest) -> PitrPlan:
    span = choose_span(state.window, request.target)
    major = int(span.base.manifest["server"]["version_num"]) // 10000
    configured = policy.database.pg_bin_dir
    verifybackup = binaries.find("pg_verifybackup", server_major=major, configured=configured)
    bindir, notes = _server_programs(major, configured, request.start)
    if not request.keep_archiving:
        notes.append("archive_mode = off: the restored server does not archive its new timeline into this store "
                     "(--keep-archiving keeps the backup's archive settings, for a server that becomes the primary)")
    if request.target.kind == "time":
        notes.append("recovery stops before the first transaction that committed after the target time")
    return PitrPlan(policy.name or "", request, span, state.window, recovery_files(state, span, request.target),
                    bindir, verifybackup, notes)


def _server_programs(major: int, configured: str | None, start: bool) -> tuple[Path | None, list[str]]:
    try:
        pg_ctl = binaries.find("pg_ctl", server_major=major, configured=configured)
    except UsageError:
        pg_ctl = None
    if pg_ctl is not None and binaries.program_version(str(pg_ctl))[0] == major:
        return pg_ctl.parent, []
    text = f"PostgreSQL {major} server programs are not installed here (the base backup's major)"
    if start:
        raise UsageError(f"--start: {text}", hint=f"install postgresql-{major}, or restore without --start and start "
                                                  "the server where they are")
    return None, [f"{text}: start the data directory with PostgreSQL {major}'s pg_ctl"]
