"""Thread sizing: the CPUs SLURM or the affinity mask granted, never the node's core count."""

from __future__ import annotations

import os
import subprocess
import sys

import functools

import pytest

from flag_bench.cluster import threads

# the pure tests: no cgroup quota (this machine's would cap every count; tests/test_fair_cores.py has those)
granted_cpus = functools.partial(threads.granted_cpus, cgroup_root="/nonexistent-cgroup", self_cgroup="")


def test_slurm_cpus_per_task_wins_over_affinity():
    assert granted_cpus(env={"SLURM_CPUS_PER_TASK": "3"}, affinity=set(range(64))) == 3


def test_affinity_when_slurm_says_nothing():
    assert granted_cpus(env={}, affinity={0, 5, 7}) == 3
    assert granted_cpus(env={"SLURM_CPUS_PER_TASK": " "}, affinity={2}) == 1


@pytest.mark.parametrize("cpus, workers, expected", [(8, 2, 4), (8, 3, 2), (2, 4, 1), (1, 1, 1)])
def test_split_between_pool_workers(cpus, workers, expected):
    assert granted_cpus(workers, env={}, affinity=set(range(cpus))) == expected
    assert granted_cpus(workers, env={"SLURM_CPUS_PER_TASK": str(cpus)}, affinity=set(range(64))) == expected
    # the smallest of SLURM and the affinity mask (taskset inside an allocation)
    assert granted_cpus(workers, env={"SLURM_CPUS_PER_TASK": "64"}, affinity=set(range(cpus))) == expected


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_nonsense_slurm_value_is_an_error(bad):
    with pytest.raises(ValueError, match="SLURM_CPUS_PER_TASK"):
        granted_cpus(env={"SLURM_CPUS_PER_TASK": bad}, affinity={0})


def test_default_reads_this_process_affinity(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    quota = threads.cgroup_cpu_limit()
    expected = len(os.sched_getaffinity(0)) if quota is None else min(len(os.sched_getaffinity(0)), max(1, int(quota)))
    assert threads.granted_cpus() == expected


PROBE = """
import os, json
from flag_bench.cluster.threads import granted_cpus, limit_threads
limit_threads(granted_cpus())
import torch
from threadpoolctl import threadpool_info
print(json.dumps({"torch": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
                  "env": [os.environ[v] for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")],
                  "pools": sorted({p["num_threads"] for p in threadpool_info()})}))
"""


def _probe(env_extra: dict, cpus: set[int] | None = None) -> dict:
    import json

    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS")}
    env.update(env_extra)
    argv = [sys.executable, "-c", PROBE]
    if cpus is not None:
        argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_limit_threads_applies_to_torch_openmp_blas_in_a_fresh_process():
    got = _probe({"SLURM_CPUS_PER_TASK": "1"})
    assert got["torch"] == 1 and got["interop"] == 1 and got["env"] == ["1", "1", "1"]
    assert got["pools"] in ([], [1])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or not __import__("shutil").which("taskset"),
                    reason="needs 2 CPUs and taskset")
@pytest.mark.slow
def test_affinity_mask_limits_threads():
    got = _probe({}, cpus={0})
    assert got["torch"] == 1 and got["env"] == ["1", "1", "1"]
    both = _probe({}, cpus={0, 1})
    assert both["torch"] == 2


def test_serial_executor_sizes_threads(monkeypatch):
    from flag_bench.cluster import threads
    from flag_bench.executors import SerialExecutor

    seen = []
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    monkeypatch.setattr(threads, "limit_threads", lambda n: seen.append(n))
    list(SerialExecutor().map([]))
    assert seen == [1]
