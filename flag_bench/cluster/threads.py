"""Size torch, OpenMP and BLAS threads to the CPUs this process was granted, never the node's.

On a shared 2-core machine an oversubscribed process made a ``flag`` fold 6-7x slower and a ridge
fit 6-10x slower, so every engine (serial in the driver, pool workers, SLURM tasks, Ray tasks)
calls :func:`limit_threads` with :func:`granted_cpus` before computing a cell.
"""

from __future__ import annotations

import os
from typing import Mapping

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_STATE: dict = {}


def granted_cpus(workers: int = 1, env: Mapping[str, str] | None = None, affinity: set[int] | None = None) -> int:
    """CPUs per worker: SLURM_CPUS_PER_TASK if SLURM set it, else this process's affinity, split
    evenly between ``workers`` (at least 1 each). ``env``/``affinity`` exist for tests."""
    env = os.environ if env is None else env
    raw = env.get("SLURM_CPUS_PER_TASK", "").strip()
    if raw:
        try:
            total = int(raw)
        except ValueError:
            total = 0
        if total < 1:
            raise ValueError(f"SLURM_CPUS_PER_TASK={raw!r} is not a positive integer")
    else:
        if affinity is None:
            try:
                affinity = os.sched_getaffinity(0)
            except AttributeError:  # not Linux: no affinity API, the core count is all there is
                affinity = set(range(os.cpu_count() or 1))
        total = len(affinity)
    return max(1, total // max(1, workers))


def limit_threads(n: int) -> None:
    """Apply ``n`` threads to torch, OpenMP/MKL/OpenBLAS (this process and its children) and the
    BLAS pools already loaded (threadpoolctl)."""
    if n < 1:
        raise ValueError(f"thread count {n} must be >= 1")
    for var in THREAD_ENV:
        os.environ[var] = str(n)
    from threadpoolctl import threadpool_limits

    # kept referenced for the process's lifetime: the limit lasts while the object does
    _STATE["limits"] = threadpool_limits(n)
    import torch

    torch.set_num_threads(n)
    if not _STATE.get("interop"):
        # torch allows this once, before any inter-op work; a process that already ran some
        # (the driver after encoding) keeps its pool, which is harmless at these sizes
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:
            pass
        _STATE["interop"] = True
    _STATE["threads"] = n


def applied_threads() -> int | None:
    """The count the last :func:`limit_threads` call set in this process (None: never called)."""
    return _STATE.get("threads")
