"""Facts about this process for metrics and benchmarks."""

from __future__ import annotations

import resource


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
