"""Executors: where cells run. The driver hands tasks in and gets records back, in any order.

- ``serial``: in this process, one cell after another (the default).
- ``pool``: a local pool of worker processes (``--workers N``). Each worker limits torch, OpenMP
  and BLAS threads to its share of the CPUs this process may use (oversubscribed pools on a
  shared 2-core machine made a ``flag`` fold 6-7x slower); with several CUDA devices each worker
  takes one. Workers ignore Ctrl-C (the driver decides) and die with the driver (kill -9 too).

- the cluster engines (flag_bench.cluster, its ``ENGINES`` table): the same protocol; tasks are
  picklable specs, the worker calls ``run_cell``, writes artifacts under the results dir and
  returns the record.

Every engine implements one protocol, ``flag_bench.cluster.Executor`` (submit, poll, collect,
cancel, shutdown); the driver uses nothing else. Every engine sizes torch/OpenMP/BLAS threads
(and how they wait) through flag_bench.cluster.threads; before each cell a process that limited
its threads sizes them to the load (cluster/load.py).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Iterable, Iterator

from flag_bench.cell import run_cell
from flag_bench.cluster import EventSink, Executor, Submitted, engine
from flag_bench.plan import CellTask
from flag_bench.record import CellRecord

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

__all__ = ["EventSink", "Executor", "PoolExecutor", "SerialExecutor", "Submitted", "cell_device", "executor_class",
           "local_executor", "make_executor", "remote_cuda"]


class SerialExecutor(Executor):
    name = "serial"

    def __init__(self, on_event: EventSink | None = None):
        self.on_event = on_event
        self._tasks: Iterable[CellTask] = ()

    @classmethod
    def from_run(cls, cfg, *, on_event: EventSink | None, device: str, store) -> "SerialExecutor":
        return cls(on_event)

    def submit(self, tasks: Iterable[CellTask], parent_run_id: str | None = None) -> Submitted | None:
        self._tasks = tasks  # computed in collect: nothing runs between calls
        return None

    def poll(self) -> list[CellRecord]:
        return []

    def collect(self) -> Iterator[CellRecord]:
        from flag_bench.cluster.threads import granted_cpus, limit_threads

        tasks, self._tasks = self._tasks, ()
        limit_threads(granted_cpus())
        for task in tasks:
            yield run_cell(task, self.on_event)

    def cancel(self) -> list[CellRecord]:
        return []

    def shutdown(self) -> None:
        self._tasks = ()


# -- worker side ------------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(queue, counter, devices: tuple[str, ...], threads: int) -> None:
    import signal

    from flag_bench.cluster.threads import limit_threads

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    limit_threads(threads)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    _WORKER.update(queue=queue, device=devices[index % len(devices)] if devices else None)


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when the driver dies (kill -9 leaves no orphans)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_in_worker(task: CellTask) -> CellRecord:
    import dataclasses

    device = _WORKER.get("device")
    if device and task.device.startswith("cuda"):
        task = dataclasses.replace(task, device=device)
    queue = _WORKER["queue"]
    return run_cell(task, lambda kind, payload: queue.put((kind, payload)))


# -- driver side ------------------------------------------------------------------------------
class PoolExecutor(Executor):
    name = "pool"

    def __init__(self, workers: int, on_event: EventSink | None = None, devices: tuple[str, ...] = ()):
        self.workers = workers
        self.on_event = on_event
        self.devices = devices
        from flag_bench.cluster.threads import granted_cpus

        self.threads = granted_cpus(workers)
        self._pool: ProcessPoolExecutor | None = None
        self._inflight: dict = {}
        self._tasks: Iterator[CellTask] | None = None  # submitted, drawn as workers free up

    @classmethod
    def from_run(cls, cfg, *, on_event: EventSink | None, device: str, store) -> "PoolExecutor":
        return cls(cfg.workers, on_event, _cuda_devices(device))

    def _start(self):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        from flag_bench.cluster.threads import apply_wait_policy

        # spawn, not fork: a forked torch/OpenMP runtime can deadlock in the child; the workers
        # inherit the wait policy in their environment, set before their runtimes load
        apply_wait_policy()
        ctx = mp.get_context("spawn")
        self._queue = ctx.Queue()
        counter = ctx.Value("i", 0)
        self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                         initargs=(self._queue, counter, self.devices, self.threads))
        self._stop = threading.Event()
        self._drain = threading.Thread(target=self._forward_events, daemon=True)
        self._drain.start()

    def _forward_events(self) -> None:
        import queue as q

        while not self._stop.is_set():
            try:
                kind, payload = self._queue.get(timeout=0.1)
            except (q.Empty, EOFError, OSError):
                continue
            if self.on_event:
                self.on_event(kind, payload)

    def submit(self, tasks: Iterable[CellTask], parent_run_id: str | None = None) -> Submitted | None:
        self._tasks = iter(tasks)  # the workers start with the first poll or collect
        return None

    def poll(self) -> list[CellRecord]:
        if self._pool is None:
            if self._tasks is None:
                return []  # nothing submitted, or everything collected
            self._start()
        self._fill(self._tasks)
        done = [f for f in self._inflight if f.done()]
        out = [self._result(f, self._inflight.pop(f)) for f in done]
        self._fill(self._tasks)
        return out

    def collect(self) -> Iterator[CellRecord]:
        from concurrent.futures import FIRST_COMPLETED, wait

        if self._pool is None:
            self._start()
        it, self._tasks = (self._tasks if self._tasks is not None else iter(())), None
        try:
            self._fill(it)
            while self._inflight:
                done, _ = wait(list(self._inflight), return_when=FIRST_COMPLETED)
                for fut in done:
                    task = self._inflight.pop(fut)
                    yield self._result(fut, task)
                self._fill(it)
        finally:
            self._close(cancel=bool(self._inflight))

    def _fill(self, it) -> None:
        # a bounded window keeps tasks (and their claims) lazy: a second run can share the grid
        while len(self._inflight) < self.workers:
            task = next(it, None)
            if task is None:
                return
            assert self._pool is not None  # started before any task is drawn
            self._inflight[self._pool.submit(_run_in_worker, task)] = task

    @staticmethod
    def _result(fut, task: CellTask) -> CellRecord:
        from flag_bench.cell import crashed_record

        try:
            return fut.result()
        except Exception as exc:  # the worker process died (OOM kill, segfault): record it
            return crashed_record(task, exc)

    def cancel(self) -> list[CellRecord]:
        done = [self._result(f, t) for f, t in list(self._inflight.items()) if f.done() and not f.cancelled()]
        self._close(cancel=True)
        self._tasks = None
        return done

    def shutdown(self) -> None:
        self.cancel()

    def _close(self, cancel: bool) -> None:
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        if cancel:
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        self._inflight.clear()
        self._stop.set()
        self._drain.join(timeout=2)


def executor_class(cfg) -> type[Executor]:
    """The class of the executor ``cfg.executor`` names, not started: a cluster engine (its
    optional extra not needed yet), else local: serial, or a pool for ``--workers`` > 1."""
    cls = engine(cfg.executor)
    if cls is not None:
        return cls
    return SerialExecutor if cfg.workers <= 1 else PoolExecutor


def make_executor(cfg, on_event: EventSink | None, device: str, store=None) -> Executor:
    """The executor ``cfg.executor`` names (local: serial or a --workers pool)."""
    return executor_class(cfg).from_run(cfg, on_event=on_event, device=device, store=store)


def remote_cuda(cfg) -> bool:
    """The cells run on CUDA devices of other machines (an engine that does not run them here was
    asked for CUDA): this machine, a CPU login node perhaps, need not have one."""
    return not executor_class(cfg).runs_locally and cfg.device.startswith("cuda")


def cell_device(cfg) -> str:
    """The device the cells run on: this machine's, checked here, unless they run elsewhere."""
    if remote_cuda(cfg):
        return cfg.device
    from flag_bench.resolve import device  # "auto" without a GPU on this machine: no torch import

    return device(cfg.device)


def local_executor(workers: int, on_event: EventSink | None, device: str) -> Executor:
    if workers <= 1:
        return SerialExecutor(on_event)
    return PoolExecutor(workers, on_event, _cuda_devices(device))


def _cuda_devices(device: str) -> tuple[str, ...]:
    """One CUDA device per pool worker, round robin, when the cells run on "cuda"."""
    if device != "cuda":
        return ()
    import torch

    return tuple(f"cuda:{i}" for i in range(torch.cuda.device_count()))
