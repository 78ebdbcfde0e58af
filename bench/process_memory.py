"""Peak resident memory of the running process, for benchmarks that measure each row in a fresh process."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB. VmHWM belongs to the process's own address space, which exec
    starts anew; ru_maxrss does not: a child started by fork + exec inherits the parent's peak as its floor, so
    a small job run from a big parent would report the parent's figure."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
