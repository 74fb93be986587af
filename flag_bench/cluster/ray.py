"""``--executor ray``: one Ray task per cell on a Ray cluster (``--ray-address``) or a local one.

Each task reserves ``--ray-cpus-per-cell`` CPUs and, for a CUDA device, one GPU (Ray sets
``CUDA_VISIBLE_DEVICES`` and gives GPU tasks a fresh worker each); it sizes its threads to the
CPUs it reserved, runs ``run_cell`` and returns the record as JSON. A bounded window of tasks is
in flight, so claims stay lazy; the driver writes store and MLflow. A worker that dies becomes
a failed record (Ray's own retries of dead workers still apply); Python errors are failed records
already and are never retried. A local cluster started here (no ``--ray-address``) listens on
127.0.0.1 only and keeps Ray's token authentication on (``start_local``).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from typing import Any, Iterable, Iterator

from flag_bench.cluster import Executor, Submitted
from flag_bench.errors import UserError, one_line
from flag_bench.record import CellRecord


def require_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'flag-bench[ray]'") from None
    return ray


# one random token per process for the clusters it starts, unless the user configured one:
# Ray's token auth stays on, and no token file is written into the user's home
_TOKEN = secrets.token_hex(32)
LOOPBACK = "127.0.0.1"


def start_local(num_cpus: int, **kwargs) -> None:
    """Start a private local Ray cluster for this process: bound to loopback (127.0.0.1: nothing
    on the network can reach its GCS, raylet or workers) with Ray's default token authentication
    on. A token the user gives (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``) is used; otherwise a
    random one, in this process's environment only (the cluster's processes inherit it). An
    explicit ``RAY_AUTH_MODE`` is the user's choice and is left as it is."""
    import ray
    from ray._private import ray_constants

    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = _TOKEN
    # On Linux, Ray swaps a loopback node address for the machine's reachable IP and listens there;
    # with "local only" (its macOS/Windows default) it keeps 127.0.0.1, for this start and for the
    # GCS and raylet it spawns (they inherit the variable); both are restored after the start.
    var = getattr(ray_constants, "ENABLE_RAY_CLUSTERS_ENV_VAR", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    saved_env, saved_const = os.environ.get(var), getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    os.environ[var] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False,
                 _node_ip_address=LOOPBACK, **kwargs)
    except BaseException:
        ray.shutdown()  # a start that timed out leaves no GCS or raylet behind
        raise
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_const
        if saved_env is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = saved_env


def run_one(task, cpus: int) -> dict:
    """The body of a Ray task (module-level, so Ray ships it by reference)."""
    from flag_bench.cell import run_cell
    from flag_bench.cluster.slurm import with_scheduler
    from flag_bench.cluster.threads import limit_threads

    limit_threads(cpus)
    t0 = time.monotonic()
    rec = run_cell(task, lambda kind, payload: None)
    info = {"engine": "ray", "node": socket.gethostname(), "pid": os.getpid(), "cpus": cpus,
            "cell_elapsed_s": round(time.monotonic() - t0, 3)}
    try:
        import ray

        ctx = ray.get_runtime_context()
        info.update(node_id=ctx.get_node_id(), task_id=ctx.get_task_id())
    except Exception:  # outside a Ray worker (unit tests call this directly)
        pass
    return with_scheduler(rec, info).to_json()


class RayExecutor(Executor):
    name = "ray"
    runs_locally = False  # a joined cluster runs cells on its nodes, with their devices

    def __init__(self, cfg, on_event=None, device: str = "cpu"):
        self.ray = require_ray()
        self.cfg, self.on_event, self.device = cfg, on_event, device
        self._started = False
        self._inflight: dict = {}
        self._tasks: Iterator | None = None  # submitted, drawn as slots free up
        self._remote: Any = None  # ray's remote function, once the cluster is up
        self._slots = 0

    @classmethod
    def from_run(cls, cfg, *, on_event=None, device: str = "cpu", store=None) -> "RayExecutor":
        return cls(cfg, on_event, device)

    def _init(self) -> int:
        """Join or start a cluster; returns how many cells fit at once."""
        from flag_bench.cluster.threads import granted_cpus

        ray = self.ray
        if not ray.is_initialized():
            if self.cfg.ray_address:
                try:
                    ray.init(address=self.cfg.ray_address, log_to_driver=False)
                except Exception as exc:
                    raise UserError(f"--ray-address {self.cfg.ray_address}: cannot join that Ray cluster "
                                    f"({type(exc).__name__}: {one_line(str(exc), 200)}); "
                                    "check the address (`ray status` on the head node)") from None
            else:
                # a private local cluster: no dashboard, a capped object store (records are small)
                start_local(num_cpus=granted_cpus())
            self._started = True
        total = int(ray.cluster_resources().get("CPU", 1))
        return max(1, total // self.cfg.ray_cpus_per_cell)

    def _start(self) -> None:
        self._slots = self._init()
        gpus = 1 if self.device.startswith("cuda") else 0
        self._remote = self.ray.remote(num_cpus=self.cfg.ray_cpus_per_cell, num_gpus=gpus,
                                       max_retries=self.cfg.max_retries)(run_one)

    def _fill(self) -> None:
        # a bounded window keeps tasks (and their claims) lazy: a second run can share the grid
        while self._tasks is not None and len(self._inflight) < self._slots:
            task = next(self._tasks, None)
            if task is None:
                self._tasks = None
                return
            self._inflight[self._remote.remote(task, self.cfg.ray_cpus_per_cell)] = task

    def submit(self, tasks: Iterable, parent_run_id: str | None = None) -> Submitted | None:
        self._tasks = iter(tasks)  # the cluster is joined or started with the first poll or collect
        return None

    def poll(self) -> list[CellRecord]:
        if self._tasks is None and not self._inflight:
            return []
        if self._remote is None:
            self._start()
        self._fill()
        done = []
        if self._inflight:
            done, _ = self.ray.wait(list(self._inflight), num_returns=len(self._inflight), timeout=0)
        out = [self._result(ref, self._inflight.pop(ref)) for ref in done]
        self._fill()
        return out

    def collect(self) -> Iterator[CellRecord]:
        ray = self.ray
        self._start()
        try:
            while True:
                self._fill()
                if not self._inflight:
                    return
                done, _ = ray.wait(list(self._inflight), num_returns=1)
                for ref in done:
                    yield self._result(ref, self._inflight.pop(ref))
        finally:
            self._tasks = None
            if self._inflight:
                for ref in list(self._inflight):
                    ray.cancel(ref, force=True)
                self._inflight.clear()

    def _result(self, ref, task) -> CellRecord:
        from flag_bench.cell import crashed_record

        try:
            return CellRecord.from_json(self.ray.get(ref), where="Ray task result")
        except Exception as exc:  # the worker died (OOM kill, segfault) or the task was cancelled
            return crashed_record(task, exc)

    def cancel(self) -> list[CellRecord]:
        done = []
        for ref, task in list(self._inflight.items()):
            ready, _ = self.ray.wait([ref], timeout=0)
            if ready:
                done.append(self._result(ref, task))
                self._inflight.pop(ref)
        for ref in list(self._inflight):
            self.ray.cancel(ref, force=True)
        self._inflight.clear()
        self._tasks = None
        return done

    def shutdown(self) -> None:
        self.cancel()
        if self._started:
            # a cluster we started goes with us; one we joined stays up for its other users
            if not self.cfg.ray_address:
                self.ray.shutdown()
            self._started = False
