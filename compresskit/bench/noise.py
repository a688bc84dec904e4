"""Is the machine quiet enough to trust a latency? Other load, CPU steal, spread of timings.

A measurement takes a :class:`MachineSample` before and after timing; :func:`assess`
compares them (pure arithmetic, so it is tested with synthetic numbers). The reasons are
reported next to the numbers (``noisy: true``) instead of passing a bad number as good.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

# Thresholds: beyond these a number is flagged, not dropped.
MAX_OTHERS_BUSY = 0.25  # share of all cores used by other processes while timing
MAX_STEAL = 0.05  # share of CPU time the hypervisor gave to other guests
MAX_LOAD_PER_CORE = 0.5  # 1-minute load average, minus our own process, per core
MAX_CV = 0.15  # robust coefficient of variation of one series of timings


@dataclass(frozen=True)
class MachineSample:
    """CPU accounting at one moment (``/proc/stat`` ticks, our own CPU seconds)."""

    wall: float
    busy_ticks: int  # user + nice + system + irq + softirq, all cores
    steal_ticks: int
    total_ticks: int
    own_cpu_seconds: float  # this process, all threads
    loadavg: float  # 1-minute load average
    cores: int


@dataclass(frozen=True)
class Noise:
    """Whether timings taken between two samples are trustworthy, and why not."""

    noisy: bool
    reasons: list[str] = field(default_factory=list)
    others_busy: float | None = None
    steal: float | None = None
    load_per_core: float | None = None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def sample_machine() -> MachineSample:
    busy = steal = total = 0
    try:
        with open("/proc/stat") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal [guest guest_nice]
        user, nice, system, idle, iowait, irq, softirq, steal_ = (fields + [0] * 8)[:8]
        busy, steal, total = user + nice + system + irq + softirq, steal_, sum(fields[:8])
    except (OSError, ValueError):
        pass  # no /proc: only the load average and the spread of timings are judged
    times = os.times()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return MachineSample(
        wall=time.monotonic(),
        busy_ticks=busy,
        steal_ticks=steal,
        total_ticks=total,
        own_cpu_seconds=times.user + times.system,
        loadavg=load,
        cores=usable_cores(),
    )


def assess(
    before: MachineSample,
    after: MachineSample,
    *,
    cvs: dict[str, float] | None = None,
    own_load: float = 1.0,
    ticks_per_second: float | None = None,
) -> Noise:
    """Judge the interval between two samples; ``cvs`` are the robust CVs of the series
    timed in it (by label), ``own_load`` what our own processes add to the load average."""
    if ticks_per_second is None:
        ticks_per_second = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
    reasons = []
    others = steal = None
    cores = max(1, after.cores)
    wall = after.wall - before.wall
    total = after.total_ticks - before.total_ticks
    if total > 0 and wall > 0:
        busy_seconds = (after.busy_ticks - before.busy_ticks) / ticks_per_second
        own = after.own_cpu_seconds - before.own_cpu_seconds
        others = max(0.0, (busy_seconds - own) / (wall * cores))
        steal = (after.steal_ticks - before.steal_ticks) / total
        if others > MAX_OTHERS_BUSY:
            reasons.append(f"other processes used {others:.0%} of {cores} cores while timing")
        if steal > MAX_STEAL:
            reasons.append(f"CPU steal {steal:.0%} (a busy virtual-machine host)")
    load = max(before.loadavg, after.loadavg)
    load_per_core = max(0.0, load - own_load) / cores
    if load_per_core > MAX_LOAD_PER_CORE:
        reasons.append(f"load average {load:.2f} on {cores} cores")
    for label, cv in (cvs or {}).items():
        if cv > MAX_CV:
            reasons.append(f"timings of {label} vary (robust CV {cv:.0%})")
    return Noise(bool(reasons), reasons, others, steal, load_per_core)
