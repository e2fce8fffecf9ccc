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
