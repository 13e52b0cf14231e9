"""CPU readings from ``/proc`` that the benchmarks share: a process's CPU time (all its
threads) and a core's busy time (all processes), for core shares and "other on core"."""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of every thread of ``pid`` so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


def core_busy_seconds(core: int) -> float:
    """CPU time ``core`` has spent busy (not idle, not waiting for I/O), all processes."""
    for line in Path("/proc/stat").read_text().splitlines():
        name, *ticks = line.split()
        if name == f"cpu{core}":
            values = [int(tick) for tick in ticks]
            return (sum(values[:8]) - values[3] - values[4]) / TICKS  # less idle, iowait
    raise RuntimeError(f"no cpu{core} in /proc/stat")
