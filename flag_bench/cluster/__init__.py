"""Cluster back-ends (SLURM through submitit, Ray core), the one executor protocol every engine
implements, and the thread sizing every engine shares.

The protocol lives here, not in flag_bench/executors.py, because this package is what an engine
imports: it is light (typing only, no flag_bench.cell or plan), so an engine module, the store
(claim liveness) and the dry run can reach it without loading the cell machinery, and every
table that names an engine (``ENGINES``, ``_CLAIM_KEYS``) sits beside the engines themselves.
Nothing outside this package names an engine; tests/test_executor_protocol.py checks that.

Nothing here imports submitit or ray at module level: both are optional extras.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Iterator, Mapping, Protocol, runtime_checkable

from flag_bench.errors import UserError

if TYPE_CHECKING:
    from flag_bench.plan import CellTask
    from flag_bench.record import CellRecord

EventSink = Callable[[str, dict], None]
# the driver's writer of one record: (record, parent MLflow run id) -> None
RecordWriter = Callable[["CellRecord", "str | None"], Any]


@dataclass(frozen=True)
class Submitted:
    """Work handed to a scheduler that outlives this process (a job array): what to call it."""

    job_id: str
    note: str  # one line for the terminal: what was submitted and where its logs are
    detached: bool  # submit-and-return: nothing is collected by this run


class NothingDetached(UserError):
    """An engine that can detach has no submissions in this results dir."""


@runtime_checkable
class Executor(Protocol):
    """Where cells run. The driver drives every engine through these methods only.

    ``submit`` hands the tasks over (an engine with a bounded window draws them lazily, so claims
    are taken only as cells start), ``poll`` returns the records finished by now without waiting,
    ``collect`` waits and yields each record as it finishes until the submitted work is done,
    ``cancel`` stops (Ctrl-C) and returns finished records not yet yielded, ``shutdown`` releases
    what the engine holds (worker processes, a cluster it started). A synchronous engine computes
    in ``collect``; its ``poll`` has nothing in flight. Engines subclass this class for the
    defaults below (``map``, the context manager, no detached work)."""

    name: ClassVar[str]
    # cells run in this process or its children: this machine's device is the cells' device
    runs_locally: ClassVar[bool] = True
    # submitted work outlives this process; `flag-bench collect` gathers it (collect_detached)
    can_detach: ClassVar[bool] = False

    @classmethod
    def from_run(cls, cfg, *, on_event: EventSink | None, device: str, store) -> "Executor":
        """The engine for one run of the driver (``cfg`` a RunConfig)."""
        ...

    def submit(self, tasks: Iterable["CellTask"], parent_run_id: str | None = None) -> Submitted | None:
        """Hand the tasks over; a Submitted when they went to a scheduler as one job."""
        ...

    def poll(self) -> list["CellRecord"]:
        """Records finished since the last poll or collect, without waiting."""
        ...

    def collect(self) -> Iterator["CellRecord"]:
        """Wait for the submitted tasks and yield each record as it finishes (nothing when detached)."""
        ...

    def cancel(self) -> list["CellRecord"]:
        """Stop now (Ctrl-C); return records that finished but were not yielded yet."""
        ...

    def shutdown(self) -> None:
        """Release what this engine holds; idempotent."""
        ...

    # -- defaults ------------------------------------------------------------------------------
    def map(self, tasks: Iterable["CellTask"]) -> Iterator["CellRecord"]:
        """submit + collect: every record of ``tasks``, in the order they finish."""
        self.submit(tasks)
        yield from self.collect()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    @classmethod
    def latest_detached(cls, results_dir: Path, trusted: bool) -> dict:
        """{"tracking_uri", "suite"} of this engine's latest detached submission under
        ``results_dir``; NothingDetached when there is none (UserError when it cannot be read)."""
        raise NothingDetached(f"--results-dir {results_dir}: nothing was submitted there to collect")

    @classmethod
    def collect_detached(cls, store, write: RecordWriter) -> dict[str, int]:
        """Write this engine's finished, not yet collected detached work through ``write``:
        counts of tasks collected, records written, submissions left to another collector."""
        return {"tasks": 0, "records": 0, "busy": 0}


# engine name (``--executor``) -> "module:class"; imported only when named ("local" is
# flag_bench.executors: serial or a --workers pool)
ENGINES = {"slurm": "flag_bench.cluster.slurm:SlurmExecutor", "ray": "flag_bench.cluster.ray:RayExecutor"}


def engine(name: str) -> type[Executor] | None:
    """The executor class ``--executor name`` selects, imported but not started (its optional
    extra is not needed for that); None for a name that is not a cluster engine."""
    target = ENGINES.get(name)
    if target is None:
        return None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def detachable() -> list[type[Executor]]:
    """The engines whose submitted work outlives the submitting process."""
    return [cls for cls in (engine(n) for n in ENGINES) if cls is not None and cls.can_detach]


def detached_work(results_dir: Path, trusted: bool) -> list[tuple[type[Executor], dict]]:
    """Each engine with detached submissions under ``results_dir``, with its latest submission's
    {"tracking_uri", "suite"}; the first engine's NothingDetached when none has any."""
    found, nothing = [], None
    for cls in detachable():
        try:
            found.append((cls, cls.latest_detached(results_dir, trusted)))
        except NothingDetached as exc:
            nothing = nothing or exc
    if not found:
        raise nothing or NothingDetached(f"--results-dir {results_dir}: nothing was submitted there to collect")
    return found


# -- claims held by cluster jobs ----------------------------------------------------------------
# A cell handed to a cluster job stays claimed after the submitting process ends; the job's engine,
# not the store, says whether the claim is live. Claim field -> the engine module that writes it
# (``claim_fields``) and judges it (``claim_state``); imported only when such a claim is seen.
_CLAIM_KEYS = {"slurm_job": "flag_bench.cluster.slurm"}


def job_holder(holder: Mapping) -> str | None:
    """The module of the engine whose job holds this claim, or None when a process holds it."""
    for key, module in _CLAIM_KEYS.items():
        if holder.get(key):
            return module
    return None


def job_state(holder: Mapping) -> str | None:
    """None when a process holds the claim (the store judges it); else the holding job's state:
    "pending", "running", "gone" (the claim is stale) or "unknown" (the engine cannot be asked
    here: the claim counts as live, so its cells are never computed twice)."""
    module = job_holder(holder)
    if module is None:
        return None
    return importlib.import_module(module).claim_state(holder)
