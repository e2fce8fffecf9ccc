"""The recovery settings a restored data directory gets, and the commands they call.

``restore_command`` calls ``archiver wal-fetch`` by its absolute path, with the policies path the
restore used (the server runs it with its own environment and working directory). It never holds a
secret: the store's credentials come from the server's environment, as for ``archive_command``.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..common.timeutil import isoformat

AUTO_CONF = "postgresql.auto.conf"
RECOVERY_SIGNAL = "recovery.signal"
REPORT_FILE = "archiver_recovery_error.json"  # where wal-fetch --recovery-report writes what stopped recovery
PREFETCH_DIR = "pg_wal/.archiver-prefetch"


def archiver_argv() -> list[str]:
    """How the server runs archiver (its restore_command): ``$ARCHIVER_BIN`` when set (the server's user
    may not reach this interpreter, e.g. a virtualenv in root's home), else the console script beside
    this interpreter, else ``python -m archiver``."""
    if os.environ.get("ARCHIVER_BIN"):
        return shlex.split(os.environ["ARCHIVER_BIN"])
    script = Path(sys.executable).with_name("archiver")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "archiver"]


@dataclass(frozen=True)
class Target:
    """Where recovery stops: a time, an LSN, or the end of the archive."""

    kind: str  # "time", "lsn" or "latest"
    time: datetime | None = None
    lsn: str | None = None

    def describe(self) -> str:
        if self.kind == "time" and self.time is not None:
            return f"time {isoformat(self.time)}"
        if self.kind == "lsn":
            return f"LSN {self.lsn}"
        return "the end of the archive (latest)"

    def settings(self) -> dict[str, str]:
        if self.kind == "time" and self.time is not None:
            return {"recovery_target_time": self.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")}
        if self.kind == "lsn" and self.lsn is not None:
            return {"recovery_target_lsn": self.lsn}
        return {}


def restore_command(policies: str, policy: str, data_dir: Path, *, prefetch: bool) -> str:
    """``archiver wal-fetch NAME %f %p``; with ``prefetch`` (a restore archiver watches), a file fetched ahead
    into ``pg_wal/.archiver-prefetch/<name>.<sha256>`` is taken first, once ``sha256sum`` agrees with its name
    (no Python start-up per segment on the way), and wal-fetch is the fallback."""
    argv = [*archiver_argv(), "--policies", policies, "--log-format", "json", "wal-fetch", policy, "%f", "%p",
            "--recovery-report", str(data_dir / REPORT_FILE)]
    fetch = " ".join(arg if arg in ("%f", "%p") else shlex.quote(arg) for arg in argv)
    if not prefetch:
        return fetch
    cache = shlex.quote(str(data_dir / PREFETCH_DIR))
    return (f'for f in {cache}/%f.*; do [ -f "$f" ] && [ "$(sha256sum < "$f" | cut -c1-64)" = "${{f##*.}}" ] && '
            f'mv -f "$f" %p && exit 0; done; exec {fetch}')


def recovery_settings(*, command: str, target: Target, timeline: int, keep_archiving: bool,
                      port: int | None) -> dict[str, str]:
    settings = {"restore_command": command, **target.settings(),
                "recovery_target_action": "promote", "recovery_target_timeline": str(timeline)}
    if not keep_archiving:
        settings["archive_mode"] = "off"  # a restored copy must not archive its new timeline into the source's store
    if port is not None:
        settings["port"] = str(port)
    return settings


def quote_setting(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def write_recovery(data_dir: Path, settings: dict[str, str], *, note: str) -> None:
    """Append the settings to postgresql.auto.conf (later lines win) and create recovery.signal."""
    lines = [f"# {note}"] + [f"{name} = {quote_setting(value)}" for name, value in settings.items()]
    with open(data_dir / AUTO_CONF, "a") as conf:
        conf.write("\n" + "\n".join(lines) + "\n")
    (data_dir / RECOVERY_SIGNAL).touch(mode=0o600)


def drop_setting(data_dir: Path, name: str) -> None:
    """Comment out ``name`` in postgresql.auto.conf (recovery to a time past the archive's last
    transaction: started again without the target, see :mod:`archiver.pitr.restore`)."""
    path = data_dir / AUTO_CONF
    text = path.read_text()
    kept = [f"# {line}  (removed by archiver: the archive ends before the target)"
            if line.split("=", 1)[0].strip() == name else line for line in text.splitlines()]
    path.write_text("\n".join(kept) + "\n")


_SETTING = re.compile(r"^\s*([A-Za-z_.]+)\s*=?\s*(?:'((?:[^']|'')*)'|(\S+))")
MINIMAL_HBA = ("# written by archiver restore --pitr: the base backup had no pg_hba.conf (the source keeps it outside\n"
               "# its data directory); local connections as the same operating system user only\n"
               "local all all peer\n")


def configured(data_dir: Path, name: str) -> str | None:
    """The last value of ``name`` in the data directory's postgresql.conf / postgresql.auto.conf (include
    directives are not followed: a value set only there is not seen)."""
    value = None
    for conf in ("postgresql.conf", AUTO_CONF):
        try:
            lines = (data_dir / conf).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            match = _SETTING.match(line)
            if match and match.group(1).lower() == name:
                value = (match.group(2) or "").replace("''", "'") if match.group(3) is None else match.group(3)
    return value


def host_fixes(data_dir: Path) -> tuple[dict[str, str], list[str]]:
    """Settings the restored directory needs to start on this host, and what was done: a source that keeps
    its configuration outside the data directory (Debian, containers) left none; socket directories of
    the source's host may not exist here."""
    notes: list[str] = []
    if not (data_dir / "postgresql.conf").exists():
        (data_dir / "postgresql.conf").write_text("# written by archiver restore --pitr: the base backup had no "
                                                  "postgresql.conf; settings are in postgresql.auto.conf\n")
        notes.append("the base backup has no postgresql.conf (the source keeps it elsewhere): an empty one was "
                     "written; copy the source's settings before using this server in earnest")
    if not (data_dir / "pg_hba.conf").exists():
        (data_dir / "pg_hba.conf").write_text(MINIMAL_HBA)
        notes.append("the base backup has no pg_hba.conf: one allowing only local peer connections was written")
    settings: dict[str, str] = {}
    sockets = configured(data_dir, "unix_socket_directories")
    if sockets:
        missing = [path.strip() for path in sockets.split(",") if path.strip() and not Path(path.strip()).is_dir()]
        if missing:
            settings["unix_socket_directories"] = "/var/run/postgresql" if Path("/var/run/postgresql").is_dir() else "/tmp"
            notes.append(f"unix_socket_directories {', '.join(missing)} does not exist here: "
                         f"{settings['unix_socket_directories']} instead")
    return settings, notes
