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


def _stat_fields(pid):
    """Fields of /proc/<pid>/stat after the command name (None: the process is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


#: positions of ppid, utime and stime among the fields after the command name (proc(5)).
PPID_FIELD, UTIME_FIELD, STIME_FIELD = 1, 11, 12


def tree_cpu_seconds():
    """CPU seconds (user + system) that this process and its live descendants (e.g. a local
    Dask cluster's workers) have spent so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats = {int(pid): fields for pid in os.listdir("/proc") if pid.isdigit()
             for fields in [_stat_fields(pid)] if fields is not None}
    tree, frontier = {os.getpid()}, {os.getpid()}
    while frontier:
        frontier = {pid for pid, fields in stats.items()
                    if int(fields[PPID_FIELD]) in frontier} - tree
        tree |= frontier
    return sum(int(stats[pid][UTIME_FIELD]) + int(stats[pid][STIME_FIELD])
               for pid in tree if pid in stats) / ticks


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
