"""``flag-bench run --isolate``: a cell's fit and predict in a fresh process.

The parent (``cell.run_cell``) loads the data and builds the fold's views as always, then hands a
spawned child only what a method may see: the training views (``TrainData``, and the validation
view when the card asks) and the test inputs (``TestData``), plus the method class (by
reference), its config, the cell's seed, the device and the thread count. Not the ``CellTask``
(its dataset spec can name the file that holds the counts), not the ``FoldViews`` (truths, raw
test counts, annotations), not the dataset or the harness's memos. The image access inside the
views is what the fold builder hands methods anyway: a reader restricted to the slide's images
(her2st-mini: the slide's JPEG bytes) or a reader of an image file, and an encoder resolver
that looks names up in the child's own registry.

The child runs ``cell._fit_predict``, the function an in-process cell runs (same seeding, same
cost recording), on those inputs, and sends back the predictions or the draws, the method's
summary and the costs; scoring and artifacts stay in the parent. Progress events cross the pipe
as they happen. An exception in the child is raised again in the parent (its traceback chained),
so a failed cell's record reads as it would in-process; a child that dies (killed, out of
memory, a segfault) fails the cell with its exit code.

Same numbers as in-process for the same seed and thread count (the child sets the parent's
torch/OpenMP/BLAS thread count before anything else). The costs are the child's: ``peak_rss_mb``
is its peak (the method and its inputs, without the harness's datasets); ``isolate_seconds`` is
what isolating added to the cell (the call's wall time minus the child's fit and predict). What isolation closes and what it cannot
(the child is an ordinary process of the same user: it can open any file it can read):
docs/threat-model.md. The overhead (a Python process that imports torch and the method, and the
inputs pickled through a pipe) is measured by benchmarks/bench_isolate.py.
"""

from __future__ import annotations

import pickle
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from flag_bench.errors import CellFailure

EventSink = Callable[[str, dict], None]


@dataclass(frozen=True)
class CellRef:
    """The two things ``_fit_predict`` reads of a cell: its id (progress keys) and its seed."""

    cell_id: str
    seed: int


@dataclass(frozen=True)
class ChildTask:
    """What ``cell._fit_predict`` reads of a task, and nothing else."""

    cell: CellRef
    method_cls: type
    config: Any
    device: str
    isolate: bool = False  # the child runs the cell in its own process
    save_models: bool = False  # the child sends back the fitted state (Method.save_state) too


@dataclass(frozen=True)
class MethodInputs:
    """The views a method is handed: no truths, no raw test counts, no panel, no annotations."""

    train: Any  # TrainData
    val: Any  # TrainData | None
    test: Any  # TestData


@dataclass(frozen=True)
class Job:
    task: ChildTask
    inputs: MethodInputs
    threads: int


class Fitted:
    """Stands in, in the parent, for the method fitted in the child: what the cell reads of it."""

    def __init__(self, summary: Any, n_parameters: int | None, state: Any = None):
        self.summary = summary
        self._n = n_parameters
        self._state = state

    def n_parameters(self) -> int | None:
        return self._n

    def save_state(self) -> Any:
        """The state the child captured (``--save-models``): the parent writes the model folder,
        so the child, which holds the method, writes no file."""
        if self._state is None:
            raise CellFailure("--save-models: the isolated process sent back no fitted state")
        return self._state


class ChildTraceback(Exception):
    """The isolated process's traceback, chained under the exception raised again here."""


def job_of(task, views) -> Job:
    import torch

    return Job(ChildTask(CellRef(task.cell.cell_id, int(task.cell.seed)), task.method_cls, task.config, task.device,
                         save_models=bool(getattr(task, "save_models", False))),
               MethodInputs(views.train, views.val, views.test), threads=torch.get_num_threads())


def fit_predict_isolated(task, views, on_event: EventSink, stage: list[str]):
    """``cell._fit_predict`` in a fresh process: (Fitted, preds, samples, costs)."""
    import multiprocessing as mp

    t0 = time.perf_counter()
    try:
        data = pickle.dumps(job_of(task, views), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise CellFailure(f"--isolate: the method '{task.cell.method}' or its inputs cannot be sent to a fresh process "
                          f"({type(exc).__name__}: {exc}); the method class must be importable by its module path"
                          ) from None
    ctx = mp.get_context("spawn")  # never fork: a forked torch/OpenMP runtime can deadlock
    parent, child = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=_child_main, args=(child,), name=f"flag-bench isolated cell {task.cell.cell_id}")
    proc.start()
    child.close()  # the child's end lives in the child only: its death is EOF here
    t_sent, answered = None, False
    try:
        try:
            parent.send_bytes(data)
        except (BrokenPipeError, ConnectionResetError):
            proc.join(timeout=10)
            raise CellFailure(f"the isolated process of method '{task.cell.method}' died before it received its "
                              f"inputs (exit code {proc.exitcode})") from None
        t_sent = time.perf_counter()
        out = _receive(parent, proc, task, on_event, stage)
        answered = True
    finally:
        parent.close()
        if not answered and proc.is_alive():  # Ctrl-C, or the child's error: nothing more to wait for
            proc.terminate()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    costs = dict(out["costs"])
    total = time.perf_counter() - t0
    # what isolating cost this cell: spawning, importing, sending the inputs and the results back
    costs["isolate_seconds"] = total - float(costs.get("fit_seconds", 0.0)) - float(costs.get("predict_seconds", 0.0))
    costs["isolate_send_seconds"] = (t_sent - t0) if t_sent is not None else None
    costs["isolate_input_mb"] = len(data) / 2**20
    return Fitted(out["summary"], costs.get("n_parameters"), out.get("state")), out["preds"], out["samples"], costs


def _receive(conn, proc, task, on_event: EventSink, stage: list[str]) -> dict:
    while True:
        try:
            msg = pickle.loads(conn.recv_bytes())
        except EOFError:
            proc.join(timeout=10)
            raise CellFailure(f"the isolated process of method '{task.cell.method}' died in {stage[0]} "
                              f"(exit code {proc.exitcode}) without a result") from None
        kind = msg[0]
        if kind == "event":
            if msg[1] == "stage":
                stage[0] = msg[2]["stage"]
            on_event(msg[1], msg[2])
        elif kind == "done":
            return msg[1]
        elif kind == "error":
            _, where, exc_bytes, name, text, tb = msg
            stage[0] = where
            exc = None
            if exc_bytes is not None:
                try:
                    exc = pickle.loads(exc_bytes)
                except Exception:
                    exc = None
            if not isinstance(exc, BaseException):
                exc = CellFailure(f"{name} in {where} of method '{task.cell.method}': {text}")
            raise exc from ChildTraceback("in the isolated process:\n" + tb)


# -- the child ----------------------------------------------------------------------------------
def _child_main(conn) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it kills this process
    _die_with_parent()
    stage = ["fit"]

    def send(msg) -> None:
        conn.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))

    def on_event(kind: str, payload: dict) -> None:
        send(("event", kind, payload))

    try:
        job: Job = pickle.loads(conn.recv_bytes())
        from flag_bench.cluster.threads import limit_threads

        limit_threads(job.threads)
        task, inputs = job.task, read_only(job.inputs)
        del job
        from flag_bench.cell import _fit_predict
        from flag_bench.record import jsonable

        method, preds, samples, costs = _fit_predict(task, inputs, on_event, stage)
        state = None
        if task.save_models:
            stage[0] = "save model"
            state = method.save_state()  # tensors on the CPU, a skeleton as bytes
        send(("done", {"summary": jsonable(getattr(method, "summary", {}) or {}), "preds": preds, "samples": samples,
                       "costs": costs, "state": state}))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        try:
            exc_bytes = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            exc_bytes = None
        lines = str(exc).strip().splitlines()
        try:
            send(("error", stage[0], exc_bytes, type(exc).__name__, lines[0] if lines else "", traceback.format_exc()))
        except Exception:
            pass
    finally:
        conn.close()


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when the cell's process dies (as pool workers do)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def read_only(inputs: MethodInputs) -> MethodInputs:
    """Arrays handed to a method are read-only (datasets/views.py); unpickled arrays are not."""
    for data in (inputs.train, inputs.val, inputs.test):
        for s in (data.slides if data is not None else ()):
            for name in ("barcodes", "coords_um", "embeddings", "targets", "counts"):
                a = getattr(s, name, None)
                if isinstance(a, np.ndarray):
                    a.setflags(write=False)
            image = getattr(s, "image", None)
            if image is not None and isinstance(getattr(image, "coords_um", None), np.ndarray):
                image.coords_um.setflags(write=False)
    return inputs
