"""What the benchmarks read about the machine: CPU time of processes, idle time of all cores, the load average."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import psutil

CORES = os.cpu_count() or 1


def process_cpu_seconds(proc: psutil.Process) -> float:
    """User + system time of a process and of the children it has already reaped."""
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system + t.children_user + t.children_system


def machine_idle_seconds() -> float:
    """Idle CPU seconds of the whole machine (all cores) since boot.

    Busy time over an interval is the interval times the core count minus the idle time: the kernel's busy counters
    are sampled at ticks and miss short, timer-aligned bursts (like a 40 ms delayed-ACK stall's wake-ups), idle time
    is measured exactly.
    """
    t = psutil.cpu_times()
    return t.idle + getattr(t, "iowait", 0.0)


def load_text(values: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in values)


def cpu_us(fn: Callable[[], object], calls: int) -> float:
    """This process's CPU time per call of `fn`, in microseconds (`calls` calls in a row)."""
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls * 1e6


def schedstat_ns(pid: int) -> int:
    """CPU time a process has run, in ns (first field of /proc/<pid>/schedstat): finer than the clock ticks of stat."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])
