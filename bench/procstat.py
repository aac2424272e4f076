"""CPU time and peak memory of a process and its descendants, read from /proc (Linux only)."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """Direct children of pid, from /proc/PID/task/*/children (every thread may own children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """pid and every live descendant."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo += _children(current)
    return pids


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid and its live descendants (all threads), in seconds."""
    ticks = 0
    for each in tree(pid):
        try:
            stat = Path(f"/proc/{each}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces; fields after it start at ')'. utime, stime are fields 14, 15.
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_mib(pid: int) -> float:
    """Sum of VmHWM (peak resident set) over pid and its live descendants, in MiB."""
    return sum(_status_kib(each, "VmHWM") for each in tree(pid)) / 1024


def rss_mib(pid: int) -> float:
    """Sum of VmRSS (current resident set) over pid and its live descendants, in MiB."""
    return sum(_status_kib(each, "VmRSS") for each in tree(pid)) / 1024
