"""Measurement helpers shared by the benchmark scripts (memory of this process, verdicts)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

log = logging.getLogger("benchmarks.measure")
#: lines of a failed child's log shown.
LOG_TAIL_LINES = 30

KIB_PER_MIB = 1024


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


def run_child(cmd, log_path, prefix, cwd):
    """Run one measurement in a fresh process; return the JSON after its last ``prefix`` line.

    The child's stderr goes to ``log_path``; on failure its tail is logged and the result is
    ``{"failed": "exit code N"}``.
    """
    with open(log_path, "w") as child_log:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=child_log, text=True, cwd=cwd)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(prefix)]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1][len(prefix):])
    tail = Path(log_path).read_text().splitlines()[-LOG_TAIL_LINES:]
    log.error("child failed (exit code %d); end of its log:\n%s", proc.returncode,
              "\n".join(tail))
    return {"failed": f"exit code {proc.returncode}"}
