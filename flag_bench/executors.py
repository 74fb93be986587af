"""Executors: where cells run. The driver hands tasks in and gets records back, in any order.

- ``serial``: in this process, one cell after another (the default).
- ``pool``: a local pool of worker processes (``--workers N``). Each worker limits torch, OpenMP
  and BLAS threads to its share of the CPUs this process may use (oversubscribed pools on a
  shared 2-core machine made a ``flag`` fold 6-7x slower); with several CUDA devices each worker
  takes one. Workers ignore Ctrl-C (the driver decides) and die with the driver (kill -9 too).

- ``slurm`` (flag_bench.cluster.slurm) and ``ray`` (flag_bench.cluster.ray): the same protocol;
  tasks are picklable specs, the worker calls ``run_cell``, writes artifacts under the results
  dir and returns the record.

Every engine sizes torch/OpenMP/BLAS threads (and how they wait) through flag_bench.cluster.threads;
before each cell a process that limited its threads sizes them to the load (cluster/load.py).
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable, Iterator, Protocol

from flag_bench.cell import run_cell
from flag_bench.plan import CellTask
from flag_bench.record import CellRecord

EventSink = Callable[[str, dict], None]


class Executor(Protocol):
    name: str

    def map(self, tasks: Iterable[CellTask]) -> Iterator[CellRecord]:
        """Run the tasks (consumed lazily) and yield each record as it finishes."""

    def shutdown(self) -> list[CellRecord]:
        """Stop now (Ctrl-C); return records that finished but were not yielded yet."""


class SerialExecutor:
    name = "serial"

    def __init__(self, on_event: EventSink | None = None):
        self.on_event = on_event

    def map(self, tasks: Iterable[CellTask]) -> Iterator[CellRecord]:
        from flag_bench.cluster.threads import granted_cpus, limit_threads

        limit_threads(granted_cpus())
        for task in tasks:
            yield run_cell(task, self.on_event)

    def shutdown(self) -> list[CellRecord]:
        return []


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
class PoolExecutor:
    name = "pool"

    def __init__(self, workers: int, on_event: EventSink | None = None, devices: tuple[str, ...] = ()):
        self.workers = workers
        self.on_event = on_event
        self.devices = devices
        from flag_bench.cluster.threads import granted_cpus

        self.threads = granted_cpus(workers)
        self._pool = None
        self._inflight: dict = {}

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

    def map(self, tasks: Iterable[CellTask]) -> Iterator[CellRecord]:
        from concurrent.futures import FIRST_COMPLETED, wait

        self._start()
        it = iter(tasks)
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
            self._inflight[self._pool.submit(_run_in_worker, task)] = task

    @staticmethod
    def _result(fut, task: CellTask) -> CellRecord:
        from flag_bench.cell import crashed_record

        try:
            return fut.result()
        except Exception as exc:  # the worker process died (OOM kill, segfault): record it
            return crashed_record(task, exc)

    def shutdown(self) -> list[CellRecord]:
        done = [self._result(f, t) for f, t in list(self._inflight.items()) if f.done() and not f.cancelled()]
        self._close(cancel=True)
        return done

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


def make_executor(cfg, on_event: EventSink | None, device: str, store=None) -> Executor:
    """The executor ``cfg.executor`` names (local: serial or a --workers pool)."""
    if cfg.executor == "slurm":
        from flag_bench.cluster.slurm import SlurmExecutor

        return SlurmExecutor(cfg, store)
    if cfg.executor == "ray":
        from flag_bench.cluster.ray import RayExecutor

        return RayExecutor(cfg, on_event, device)
    return local_executor(cfg.workers, on_event, device)


def local_executor(workers: int, on_event: EventSink | None, device: str) -> Executor:
    if workers <= 1:
        return SerialExecutor(on_event)
    devices: tuple[str, ...] = ()
    if device == "cuda":
        import torch

        devices = tuple(f"cuda:{i}" for i in range(torch.cuda.device_count()))
    return PoolExecutor(workers, on_event, devices)
