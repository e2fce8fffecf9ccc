"""Facts about this process for metrics and benchmarks."""

from __future__ import annotations

import math
import os
import resource
from pathlib import Path


def peak_rss_bytes() -> int:
    """Peak resident memory of this process image.

    Linux's VmHWM, not ``getrusage().ru_maxrss``: the latter is carried over from the parent
    across fork+exec, so a child of a big process would report its parent's size.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (a pod's limit).

    ``os.cpu_count()`` counts the node's cores; in a container limited to one CPU, starting a
    compression thread per node core only adds memory and contention.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _cgroup_cpu_quota() -> float | None:
    try:  # cgroup v2: "max 100000" or "150000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


_libc: object = None


def release_free_memory() -> None:
    """Hand memory freed by C libraries back to the system (glibc keeps it per thread arena).

    The ADBC driver and the Parquet reader free large buffers from several threads; without
    this, the process keeps the high-water mark of every phase. A no-op where glibc is absent.
    """
    global _libc
    if _libc is None:
        try:
            import ctypes
            _libc = ctypes.CDLL("libc.so.6")
        except OSError:
            _libc = False
    if _libc:
        _libc.malloc_trim(0)  # type: ignore[attr-defined]
