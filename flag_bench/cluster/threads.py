"""Size torch, OpenMP and BLAS threads to the CPUs this process was granted, never the node's, make
their waits short, and use fewer of them while other processes load those CPUs.

On a shared 2-core machine an oversubscribed process made a ``flag`` fold 6-7x slower and a ridge
fit 6-10x slower, so every engine (serial in the driver, pool workers, SLURM tasks, Ray tasks)
calls :func:`limit_threads` with :func:`granted_cpus` before computing a cell.

Three pieces, each a pure decision with a thin function that applies it:

- **How many CPUs** (:func:`granted_cpus`): the smallest of the affinity mask, ``SLURM_CPUS_PER_TASK``
  and the cgroup CPU quota (:func:`cgroup_cpu_limit`: ``cpu.max``, or v1 ``cpu.cfs_quota_us`` /
  ``cpu.cfs_period_us``, on the path from this process's cgroup up to the root), split between pool
  workers.
- **How threads wait** (:func:`wait_policy`, applied by :func:`apply_wait_policy`): a bounded spin
  (``GOMP_SPINCOUNT``, ``KMP_BLOCKTIME``, ``OPENBLAS_THREAD_TIMEOUT``), unless the user set any wait
  variable. OpenMP and OpenBLAS read these once, when the library loads, i.e. when torch or numpy
  is first imported: ``flag-bench``'s entry point (``cli.main``) applies them before importing
  either, the pool sets them before spawning its workers (which inherit them), a SLURM task
  inherits the submitting shell's; a library user who imported torch first keeps the defaults.
- **How many threads this cell** (:func:`adapt_threads`, rule in ``load.threads_for_load``): the
  granted count, less the cores other processes were using on these CPUs since the last look.
  ``FLAG_BENCH_ADAPT_THREADS=0`` keeps the granted count whatever the load (the thread count
  changes float32 reductions in the last digits; every record says how many threads it used).

Why the bounded spin (issue 23): measured on the 2-core machine, two concurrent runs each took 3.9x
one alone with the libgomp default (each waiting thread spins ~300,000 iterations, milliseconds,
before sleeping: while one process's thread is descheduled, its partner burns the core the other
process needed); ``OMP_WAIT_POLICY=PASSIVE`` made them 1.5x, but slowed the lone run by 45% (every
parallel region of a small model then wakes a sleeping thread). A spin 10x shorter still covers the
microseconds between two torch ops (the lone run keeps its speed) and stops wasting a core within
a fraction of a scheduler slice; sustained load is handled by fewer threads (one thread has nothing
to wait for).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, MutableMapping

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# any of these set by the user: the user chose how threads wait, and none of ours is set
WAIT_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "KMP_LIBRARY", "OPENBLAS_THREAD_TIMEOUT")
# the bounded spin: GNU OpenMP (torch's pip wheels, their MKL and oneDNN) spins this many
# iterations (default 300,000), Intel OpenMP this many ms (default 200), OpenBLAS 2**this cycles
# (default 2**28) before sleeping
WAIT_DEFAULTS = {"GOMP_SPINCOUNT": "30000", "KMP_BLOCKTIME": "1", "OPENBLAS_THREAD_TIMEOUT": "20"}
ADAPT_ENV = "FLAG_BENCH_ADAPT_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")
_STATE: dict = {}


# -- how many CPUs ------------------------------------------------------------------------------
def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _quota_v2(d: Path) -> float | None:
    text = _read(d / "cpu.max")  # "max 100000" (no limit) or "<quota> <period>"
    parts = text.split() if text else []
    if len(parts) >= 1 and parts[0] != "max":
        try:
            quota, period = int(parts[0]), (int(parts[1]) if len(parts) > 1 else 100000)
        except ValueError:
            return None
        return quota / period if quota > 0 and period > 0 else None
    return None


def _quota_v1(d: Path) -> float | None:
    q, p = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
    try:
        quota, period = int(q or "-1"), int(p or "100000")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None  # -1: no limit


def _up(mount: Path, cgroup_path: str) -> list[Path]:
    """The cgroup's folder under ``mount`` and every parent up to the mount (a path seen from
    the host, absent inside a container's namespace, leaves the mount itself)."""
    parts = [p for p in cgroup_path.strip().split("/") if p and p != ".."]
    dirs = [mount.joinpath(*parts[:i]) for i in range(len(parts), 0, -1)]
    return [d for d in dirs if d.is_dir()] + [mount]


def cgroup_cpu_limit(root: Path | str = CGROUP_ROOT, self_cgroup: str | None = None) -> float | None:
    """Cores the cgroup CPU quota allows this process (2.5 for ``cpu.max`` = "250000 100000"), the
    smallest along the path from its cgroup up to the root; None where no level sets a quota or
    nothing is readable (not Linux, no cgroup fs).

    ``root`` is the cgroup mount (``/sys/fs/cgroup``); ``self_cgroup`` the text of
    ``/proc/self/cgroup`` (read when None). cgroup v2 (``0::/path``: ``cpu.max``) and v1 (a
    hierarchy whose controllers include ``cpu``, mounted at ``root/cpu`` or ``root/cpu,cpuacct``:
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) are both read; the smallest quota wins."""
    root = Path(root)
    if self_cgroup is None:
        self_cgroup = _read(Path("/proc/self/cgroup")) or ""
    limits: list[float] = []
    v2_path = v1_path = None
    for line in self_cgroup.splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hier == "0" and controllers == "":
            v2_path = path
        elif "cpu" in controllers.split(","):
            v1_path = path
    if v1_path is not None or (root / "cpu").is_dir() or (root / "cpu,cpuacct").is_dir():
        mounts = [m for m in sorted(root.glob("*")) if m.is_dir() and "cpu" in m.name.split(",")]
        for mount in mounts[:1]:
            limits += [q for d in _up(mount, v1_path or "/") if (q := _quota_v1(d)) is not None]
    if v2_path is not None or (root / "cpu.max").exists() or (root / "cgroup.controllers").exists():
        limits += [q for d in _up(root, v2_path or "/") if (q := _quota_v2(d)) is not None]
    return min(limits) if limits else None


def granted_cpus(workers: int = 1, env: Mapping[str, str] | None = None, affinity: set[int] | None = None,
                 cgroup_root: Path | str | None = None, self_cgroup: str | None = None) -> int:
    """CPUs per worker: the smallest of this process's affinity mask, ``SLURM_CPUS_PER_TASK`` (when
    SLURM set it) and the cgroup CPU quota (rounded down: a thread beyond the quota gets the whole
    process throttled at the end of each period), split evenly between ``workers`` (at least 1
    each). ``env``, ``affinity``, ``cgroup_root`` and ``self_cgroup`` exist for tests."""
    env = os.environ if env is None else env
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except AttributeError:  # not Linux: no affinity API, the core count is all there is
            affinity = set(range(os.cpu_count() or 1))
    total = len(affinity)
    raw = env.get("SLURM_CPUS_PER_TASK", "").strip()
    if raw:
        try:
            slurm = int(raw)
        except ValueError:
            slurm = 0
        if slurm < 1:
            raise ValueError(f"SLURM_CPUS_PER_TASK={raw!r} is not a positive integer")
        total = min(total, slurm)
    quota = cgroup_cpu_limit(CGROUP_ROOT if cgroup_root is None else cgroup_root, self_cgroup)
    if quota is not None:
        total = min(total, max(1, math.floor(quota + 1e-9)))
    return max(1, total // max(1, workers))


# -- how threads wait ---------------------------------------------------------------------------
def wait_policy(env: Mapping[str, str]) -> dict[str, str]:
    """The wait variables to set: :data:`WAIT_DEFAULTS` (a bounded spin), or nothing when ``env``
    already sets any of :data:`WAIT_ENV` (the user's policy is left whole, ours not mixed in)."""
    if any(str(env.get(k, "")).strip() for k in WAIT_ENV):
        return {}
    return dict(WAIT_DEFAULTS)


def apply_wait_policy(env: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :func:`wait_policy` in ``env`` (``os.environ``: this process and its children); returns
    what it set. Takes effect in this process only if torch/numpy are not imported yet."""
    env = os.environ if env is None else env
    chosen = wait_policy(env)
    env.update(chosen)
    return chosen


# -- how many threads ---------------------------------------------------------------------------
def _set_threads(n: int) -> None:
    for var in THREAD_ENV:
        os.environ[var] = str(n)
    from threadpoolctl import threadpool_limits

    # kept referenced for the process's lifetime: the limit lasts while the object does
    _STATE["limits"] = threadpool_limits(n)
    import torch

    torch.set_num_threads(n)
    _STATE["threads"] = n


def limit_threads(n: int) -> None:
    """Apply ``n`` threads to torch, OpenMP/MKL/OpenBLAS (this process and its children) and the
    BLAS pools already loaded (threadpoolctl); ``n`` is also the most :func:`adapt_threads` uses."""
    if n < 1:
        raise ValueError(f"thread count {n} must be >= 1")
    apply_wait_policy()  # for the children; this process's runtimes read it at their first import
    _set_threads(n)
    _STATE["granted"] = n
    import torch

    if not _STATE.get("interop"):
        # torch allows this once, before any inter-op work; a process that already ran some
        # (the driver after encoding) keeps its pool, which is harmless at these sizes
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:
            pass
        _STATE["interop"] = True
    from flag_bench.cluster import load

    load.start_watching()


def applied_threads() -> int | None:
    """The count the last :func:`limit_threads` or :func:`adapt_threads` set in this process (None:
    never called)."""
    return _STATE.get("threads")


def granted_threads() -> int | None:
    """The count the last :func:`limit_threads` call granted (the most a cell uses; None: never called)."""
    return _STATE.get("granted")


def adapt_enabled(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return str(env.get(ADAPT_ENV, "1")).strip().lower() not in ("0", "false", "no", "off")


def adapt_threads() -> tuple[int | None, float | None]:
    """Before a cell: size threads to the load (``load.threads_for_load`` of the granted count and
    the cores other processes used on these CPUs since the last look). Returns (threads now, cores
    used by others; None when not measured: a window under ``load.MIN_WINDOW_S``, not Linux).
    Nothing changes in a process that never called :func:`limit_threads`."""
    from flag_bench.cluster import load

    others = load.others_since_last_look()
    granted = granted_threads()
    if granted is None:
        return applied_threads(), others
    n = applied_threads() or granted
    if not adapt_enabled():  # the granted count, whatever an earlier cell of this process was sized to
        n = granted
    elif others is not None:
        n = load.threads_for_load(granted, load.sampled_cpus(), others)
    if n != applied_threads():
        _set_threads(n)
    return n, others
