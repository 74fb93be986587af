"""Is the machine busy? The cores other processes use on this process's CPUs, the load average,
and the two rules built on them: how many threads a cell gets (:func:`threads_for_load`) and when
a cell's costs are marked contended (:func:`is_contended`).

The measurement: two samples of ``/proc/stat`` (busy and total jiffies of the CPUs in this
process's affinity mask) and of this process's own CPU time (user + sys of its threads, of its
reaped children and of its live children). Busy cores over the window minus this process's own
cores = the cores *others* used. A window shorter than :data:`MIN_WINDOW_S` says nothing (the
kernel counts in 10 ms ticks per CPU: over 0.5 s on 2 CPUs that is +-0.08 core). Off Linux
nothing is measured (None) and the 1-minute load average is the fallback.

The rule, in "taken" cores: what others used beyond the cores this process was not granted
(``others - (cpus - granted)``: a pool's sibling workers on their own share take nothing). Up to
:func:`margin` (half a core, or a tenth of the grant on a large one) is background noise; beyond
it a cell gets fewer threads (one at least) and its costs are contended.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

MIN_WINDOW_S = 0.5
_WATCH: dict = {}


@dataclass(frozen=True)
class Sample:
    wall: float  # time.monotonic()
    own_cpu: float  # user + sys seconds of this process, its reaped and its live children
    busy: int | None  # busy jiffies of the sampled CPUs (None: no /proc/stat)
    total: int | None  # all jiffies of the sampled CPUs
    cpus: int  # CPUs sampled: this process's affinity mask
    load1: float | None  # 1-minute load average (None: not available)


# -- pure rules ---------------------------------------------------------------------------------
def margin(granted: int) -> float:
    """Cores others may take from this process's share before it counts: 0.5, or 10% of a large grant."""
    return max(0.5, 0.1 * granted)


def taken_cores(granted: int, cpus: int, others: float) -> float:
    """Cores others used out of the ``granted`` ones (those beyond the grant are theirs to use)."""
    return max(0.0, others - max(0, cpus - granted))


def threads_for_load(granted: int, cpus: int, others: float | None) -> int:
    """Threads for the next cell: ``granted`` less the cores others took beyond :func:`margin`
    (rounded: up to half a core more is tolerated), at least 1; ``granted`` when not measured."""
    if others is None:
        return granted
    free = granted - taken_cores(granted, cpus, others)
    return max(1, min(granted, math.floor(free + margin(granted))))


def is_contended(granted: int, cpus: int, others: float | None, load_start: float | None = None,
                 load_end: float | None = None, machine_cpus: int | None = None, threads: int | None = None) -> bool:
    """Were this cell's times taken on a busy machine? Yes when it ran on fewer ``threads`` than
    ``granted`` (sized down for load), or when others took more than :func:`margin` of the granted
    cores during it (``others`` measured); unmeasured, when the mean 1-minute load average of its
    start and end exceeded the machine's CPUs by more than the margin (the load counts this
    process's threads too: a quiet run loads the machine at most to its thread count)."""
    if threads is not None and threads < granted:
        return True
    if others is not None:
        return taken_cores(granted, cpus, others) > margin(granted)
    loads = [x for x in (load_start, load_end) if x is not None]
    if loads and machine_cpus:
        return sum(loads) / len(loads) > machine_cpus + margin(machine_cpus)
    return False


def others_cores(a: Sample, b: Sample, min_window: float = MIN_WINDOW_S) -> float | None:
    """Mean cores other processes used on the sampled CPUs between ``a`` and ``b`` (None: not
    measured, or a window under ``min_window`` seconds)."""
    if a.busy is None or b.busy is None or a.total is None or b.total is None:
        return None
    wall, ticks = b.wall - a.wall, b.total - a.total
    if wall < min_window or ticks <= 0:
        return None
    busy = (b.busy - a.busy) / ticks * b.cpus
    own = (b.own_cpu - a.own_cpu) / wall
    return max(0.0, busy - own)


def parse_proc_stat(text: str, cpus: set[int] | None = None) -> tuple[int, int, int] | None:
    """(busy jiffies, all jiffies, CPUs counted) over the ``cpuN`` lines of ``/proc/stat`` whose N is
    in ``cpus`` (all when None). Idle = idle + iowait; steal counts as busy (the hypervisor ran
    someone else); guest time is already inside user time."""
    busy = total = n = 0
    for line in text.splitlines():
        name, *fields = line.split() or [""]
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        vals = [int(x) for x in fields[:8]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        total += sum(vals)
        busy += sum(vals) - idle
        n += 1
    return (busy, total, n) if n else None


# -- measurements -------------------------------------------------------------------------------
def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _live_children_cpu() -> float:
    """CPU seconds of this process's live children (and what they reaped): Linux only."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    pids: set[str] = set()
    for f in Path("/proc/self/task").glob("*/children"):
        pids.update((_read(str(f)) or "").split())
    secs = 0.0
    for pid in pids:
        text = _read(f"/proc/{pid}/stat")
        if not text:
            continue
        rest = text.rsplit(")", 1)[-1].split()  # the name may hold spaces and parentheses
        try:
            secs += sum(int(x) for x in rest[11:15]) / tick  # utime stime cutime cstime
        except (ValueError, IndexError):
            continue
    return secs


def own_cpu_seconds() -> float:
    """User + sys seconds of this process (all threads), its reaped children and its live children."""
    try:
        import resource

        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        base = s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
    except ImportError:  # Windows
        return time.process_time()
    return base + _live_children_cpu()


def _affinity() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except AttributeError:
        return set(range(os.cpu_count() or 1))


def read_sample() -> Sample:
    cpus = _affinity()
    text = _read("/proc/stat")
    parsed = parse_proc_stat(text, cpus) if text else None
    try:
        load1: float | None = os.getloadavg()[0]
    except (OSError, AttributeError):
        load1 = None
    busy, total, n = parsed if parsed else (None, None, len(cpus))
    return Sample(time.monotonic(), own_cpu_seconds(), busy, total, n, load1)


def start_watching() -> None:
    """The first sample of this process (at start-up): the window the first cell's threads are sized on."""
    _WATCH.setdefault("last", read_sample())


def others_since_last_look() -> float | None:
    """Cores others used since the last look (None: not measured, or the window is still too
    short, in which case it keeps growing until the next look)."""
    now = read_sample()
    last = _WATCH.get("last")
    _WATCH["cpus"] = now.cpus
    if last is None:
        _WATCH["last"] = now
        return None
    others = others_cores(last, now)
    if others is not None:
        _WATCH["last"] = now
    return others


def sampled_cpus() -> int:
    """CPUs of the last look (the affinity mask)."""
    return _WATCH.get("cpus") or len(_affinity())


class CellLoad:
    """Around one cell's fit and predict: sizes the threads to the load first
    (``threads.adapt_threads``), then measures CPU time, wall time, the load average at start and
    end, the cores others used, and says whether the cell was contended. ``costs()`` after exit."""

    def __enter__(self) -> "CellLoad":
        from flag_bench.cluster import threads

        self.threads, _ = threads.adapt_threads()
        self.granted = threads.granted_threads() or threads.granted_cpus()
        self.start = read_sample()
        return self

    def __exit__(self, *exc) -> None:
        self.end = read_sample()

    def costs(self) -> dict:
        a, b = self.start, self.end
        others = others_cores(a, b)
        contended = is_contended(self.granted, b.cpus, others, a.load1, b.load1, os.cpu_count(), self.threads)
        return {"cpu_seconds": b.own_cpu - a.own_cpu, "wall_seconds": b.wall - a.wall, "load_start": a.load1,
                "load_end": b.load1, "cores": self.granted, "others_cpu": others, "contended": int(contended)}
