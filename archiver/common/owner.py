"""Which process owns something (a lease, a scratch container), and whether that process is gone.

A run records its identity where it leaves things that outlive a SIGKILL; the next run asks
:meth:`ProcessIdentity.known_dead`. Only a process on the same host and in the same PID
namespace can be judged (two containers may share a hostname and reuse each other's pids);
the start time read from ``/proc`` tells a live owner from a new process that got its pid.
Anything that cannot be judged counts as alive: callers then wait for an expiry instead.
"""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass
from typing import Any

_PROC = "/proc"


def _pid_namespace() -> str:
    try:
        return os.readlink(f"{_PROC}/self/ns/pid")
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None if it
    does not exist or is a zombie (dead, not yet reaped)."""
    try:
        with open(f"{_PROC}/{pid}/stat", encoding="ascii", errors="replace") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # fields 3.. (the command name may hold spaces)
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


@dataclass(frozen=True)
class ProcessIdentity:
    host: str
    pid_namespace: str
    pid: int
    start: str  # "" where /proc is not available

    @classmethod
    def current(cls) -> ProcessIdentity:
        pid = os.getpid()
        return cls(socket.gethostname(), _pid_namespace(), pid, process_start(pid) or "")

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "pid_namespace": self.pid_namespace, "pid": self.pid, "start": self.start}

    @classmethod
    def from_json(cls, document: Any) -> ProcessIdentity | None:
        if not isinstance(document, dict):
            return None
        try:
            return cls(str(document["host"]), str(document["pid_namespace"]), int(document["pid"]),
                       str(document["start"]))
        except (KeyError, TypeError, ValueError):
            return None

    def label(self) -> str:
        """One string for places that hold text only (a container label)."""
        return f"{self.host}/{self.pid_namespace}/{self.pid}/{self.start}"

    @classmethod
    def from_label(cls, text: str) -> ProcessIdentity | None:
        parts = text.rsplit("/", 3)
        if len(parts) != 4 or not parts[2].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), parts[3])

    def known_dead(self) -> bool:
        """True only when this is certainly a process of ours (host, PID namespace) that has ended."""
        here = ProcessIdentity.current()
        if not self.start or not here.start or not self.pid_namespace:
            return False
        if (self.host, self.pid_namespace) != (here.host, here.pid_namespace):
            return False
        return process_start(self.pid) != self.start

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def holder_description(task: str, policy: str) -> str:
    """Who we are, as shown to a run that finds a lock busy (fits application_name)."""
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    return f"archiver {task} {policy} {user}@{socket.gethostname()} pid {os.getpid()}"[:63]
