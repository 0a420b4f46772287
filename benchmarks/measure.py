"""Measurement helpers shared by the benchmark scripts (memory of this process, verdicts)."""
from __future__ import annotations

import os
import resource
from pathlib import Path

KIB_PER_MIB = 1024


def peak_rss_mib():
    """Peak resident set size of this process alone (not its children), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB


def high_water_rss_mib():
    """Peak resident set size of this process since it started its program, in MiB.

    ``VmHWM`` of /proc (Linux): unlike ``ru_maxrss``, which execve preserves, it does not
    include the peak of the parent that forked this process.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / KIB_PER_MIB
    raise RuntimeError("no VmHWM in /proc/self/status")


def current_rss_mib():
    """Current resident set size of this process, in MiB (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / KIB_PER_MIB ** 2


def verdict(ok):
    """PASS or MISS."""
    return "PASS" if ok else "MISS"
