"""The driver: plan -> skip finished -> encode every slide once -> executor.submit / collect -> store + MLflow.

It is the only writer of the results store and MLflow (SQLite stays safe), whatever executor
computes the cells; it drives every executor through one protocol (flag_bench.cluster.Executor) and
names none. Before a cell is handed out it is claimed in the store, so two runs of the
same grid started at once share the work instead of computing a cell twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from flag_bench.config import RunConfig
from flag_bench.plan import CellTask, Plan, plan_grid
from flag_bench.progress import ProgressUI
from flag_bench.record import CellRecord
from flag_bench.store import ResultsStore


@dataclass
class RunSummary:
    planned: int = 0
    skipped: int = 0
    ok: int = 0
    elsewhere: int = 0  # claimed by another live run of the same grid
    # cells claimed by a run on another host: host -> count (taken over once that run stops
    # refreshing its claims for store.CLAIM_TTL_S seconds)
    elsewhere_hosts: dict[str, int] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (cell description, message)
    interrupted: bool = False
    encoding_seconds: float = 0.0
    parent_run_id: str | None = None
    tracking_uri: str | None = None  # as shown: its password redacted (flag_bench.redact)
    executor: str = "serial"
    job: str | None = None  # the cluster job (a job array) this run submitted
    job_note: str | None = None  # the engine's one line about it (what was submitted, where its logs are)
    detached: bool = False
    collected: int = 0  # records of earlier detached submissions gathered at the start
    tracking_offline: str | None = None  # why MLflow logging stopped mid-run (sync-tracking fixes it)
    unsaved_models: int = 0  # --save-models: finished cells skipped that hold no saved model

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed else 0


class Driver:
    def __init__(self, cfg: RunConfig, *, console=None, progress: bool = True, cache_dir: str | None = None,
                 after_cell: Callable[[CellRecord], None] | None = None):
        self.cfg = cfg
        self.ui = ProgressUI(console, progress)
        self.cache_dir = cache_dir
        self.after_cell = after_cell  # test hook
        self.store = ResultsStore(cfg.results_dir)

    def run(self) -> RunSummary:
        from flag_bench.measure import provenance
        from flag_bench.methods.base import resolve_device
        from flag_bench.tracking import Tracker, default_tracking_uri

        from flag_bench.executors import cell_device, executor_class, remote_cuda

        cfg = self.cfg
        engine = executor_class(cfg)
        device = cell_device(cfg)
        encode_device: str | None = device
        if remote_cuda(cfg):
            # cells run on the cluster's GPUs, which this (login) node need not have. Embeddings are
            # cached per device kind, so a CPU node encoding for CUDA cells would be wasted: the
            # cluster's tasks encode on their GPUs into the shared cache instead
            encode_device = device if resolve_device("auto").startswith("cuda") else None
        uri = cfg.tracking_uri or default_tracking_uri(cfg.results_dir)
        if device.startswith("cuda") and encode_device is None:
            prov = {**provenance("cpu"), "device": device, "device_name": f"{device} on a {cfg.executor} node"}
        else:
            prov = provenance(device)
        prov = code_provenance(prov)
        plan = plan_grid(cfg, device=device, provenance=prov, results_dir=cfg.results_dir, cache_dir=self.cache_dir)
        with self.store.creation_lock():
            tracker = Tracker(uri, Path(cfg.results_dir), cfg.suite, warn=self._warn)
        summary = RunSummary(planned=len(plan.tasks), tracking_uri=tracker.shown_uri)  # shown: no password
        # earlier detached submissions of this engine: their finished and lost tasks first
        summary.collected = engine.collect_detached(self.store,
                                                    lambda rec, parent: self.persist(rec, tracker, parent))["records"]
        tracker.safely("logging cells an earlier run left unlogged", tracker.sync, self.store)
        summary.parent_run_id = tracker.start_parent(plan.grid_spec, prov)
        self.store.write_plan(plan.grid_spec, [t.summary() for t in plan.tasks])
        todo = [t for t in plan.tasks if cfg.force or not self.store.finished(t.cell.cell_id)]
        summary.skipped = len(plan.tasks) - len(todo)
        where = f"{cfg.workers} worker(s)" if engine.runs_locally else f"executor {cfg.executor}"
        self.ui.print(f"flag-bench: {len(plan.tasks)} cells ({summary.skipped} already finished, {len(todo)} to run) "
                      f"on {device}, {where}; results in {cfg.results_dir}")
        if cfg.save_models and not cfg.force:
            # --save-models is not part of a cell: a cell finished without it is skipped, modelless
            running = {t.cell.cell_id for t in todo}
            done = (self.store.finished(t.cell.cell_id) for t in plan.tasks if t.cell.cell_id not in running)
            summary.unsaved_models = sum(1 for rec in done if rec is not None and "model" not in rec.artifacts)
        with self.ui.session():
            if encode_device is not None:
                summary.encoding_seconds = self._encode(plan, todo, encode_device)
            self._execute(todo, tracker, summary)
        finished = [r for r in (self.store.finished(t.cell.cell_id) for t in plan.tasks) if r]
        tracker.safely("logging curves", tracker.log_curves, summary.parent_run_id, finished)
        tracker.safely("logging the parent run", tracker.log_parent_metrics, summary.parent_run_id,
                       {"encoding_seconds": summary.encoding_seconds})
        status = "KILLED" if summary.interrupted else ("FAILED" if summary.failed else "FINISHED")
        tracker.safely("ending the parent run", tracker.end_parent, summary.parent_run_id, status)
        summary.tracking_offline = tracker.offline
        return summary

    def _warn(self, message: str) -> None:
        self.ui.print(f"[yellow]warning[/yellow]: {message}")

    def persist(self, rec: CellRecord, tracker, parent_run_id: str | None) -> Path:
        return persist(self.store, tracker, rec, parent_run_id)


    def _encode(self, plan: Plan, todo: list[CellTask], device: str) -> float:
        """Every slide's embeddings once, before any cell: workers then only read the cache."""
        from flag_bench import resolve
        from flag_bench.datasets.fold import prepare_embeddings

        wanted: dict[str, set[str]] = {}
        for t in todo:
            if t.needs_embeddings:
                f = t.fold.fold
                wanted.setdefault(t.dataset.key, set()).update((*f.train, *f.val, *f.test))
        seconds = 0.0
        for key, slides in wanted.items():
            ds = plan.datasets[key]
            encoder = resolve.encoder(self.cfg.encoder)
            order = [s for s in ds.slide_ids if s in slides]
            seconds += prepare_embeddings(ds, order, encoder, todo[0].patch, device=device, cache_dir=self.cache_dir,
                                          on_progress=self.ui.encoding(self.cfg.encoder))
        return seconds

    def _claimed(self, todo: list[CellTask], summary: RunSummary) -> Iterator[CellTask]:
        from flag_bench.cluster import job_holder

        for task in todo:
            cid = task.cell.cell_id
            if not self.store.claim(cid):
                summary.elsewhere += 1
                holder = self.store.holder(cid) or {}
                if job_holder(holder) is None and holder.get("host") and holder["host"] != _hostname():
                    summary.elsewhere_hosts[holder["host"]] = summary.elsewhere_hosts.get(holder["host"], 0) + 1
                self.ui.grid_advance()
                continue
            if not self.cfg.force and self.store.finished(cid):  # finished by another run meanwhile
                self.store.release(cid)
                summary.skipped += 1
                self.ui.grid_advance()
                continue
            self.ui.grid_describe(task.description)
            yield task

    def _execute(self, todo: list[CellTask], tracker, summary: RunSummary) -> None:
        from flag_bench.estimate import Estimator
        from flag_bench.executors import make_executor

        executor = make_executor(self.cfg, self.ui.on_event, todo[0].device if todo else "cpu", self.store)
        summary.executor = executor.name
        by_id = {t.cell.cell_id: t for t in todo}
        self._left = dict(by_id)
        self._estimator = Estimator(self.store.records())
        self.ui.grid(len(todo))
        self._show_eta()
        heartbeat = self.store.heartbeat()  # keeps this run's claims live for runs on other hosts
        heartbeat.__enter__()
        try:
            submitted = executor.submit(self._claimed(todo, summary), summary.parent_run_id)
            if submitted is not None:  # a scheduler took them as one job (which may outlive this run)
                summary.job, summary.detached, summary.job_note = submitted.job_id, submitted.detached, submitted.note
                if not submitted.detached:  # a detached run ends here: its summary says it
                    self.ui.print(submitted.note)
            for rec in executor.collect():
                self._record(rec, by_id[rec.cell_id], tracker, summary)
                if not rec.ok and self.cfg.fail_fast:
                    break
        except KeyboardInterrupt:
            summary.interrupted = True
            for rec in executor.cancel():  # finished in a worker, not collected yet: keep it
                self._record(rec, by_id[rec.cell_id], tracker, summary)
        finally:
            heartbeat.__exit__(None, None, None)
            executor.shutdown()
            for t in todo:
                self.store.release(t.cell.cell_id)

    def _record(self, rec: CellRecord, task: CellTask, tracker, summary: RunSummary) -> None:
        path = self.persist(rec, tracker, summary.parent_run_id)
        if rec.ok:
            summary.ok += 1
        else:
            assert rec.error is not None  # a failed record carries its error
            summary.failed.append((task.description, rec.error.message))
            self.ui.print(f"[red]FAILED[/red] {task.description}: {rec.error.message} (traceback in {path})")
        seconds = rec.costs.get("total_seconds")
        if rec.ok and seconds is not None:
            self._estimator.add(rec.cell, float(seconds), contended=bool(rec.costs.get("contended")))
        self._left.pop(rec.cell_id, None)
        self._show_eta()
        if self.after_cell:
            self.after_cell(rec)
        self.ui.grid_advance()

    def _show_eta(self) -> None:
        """Time left by the records of cells like the ones left (this run's and earlier ones)."""
        from flag_bench.estimate import human

        secs, unknown = self._estimator.total(list(self._left.values()))
        if not self._left:
            self.ui.grid_eta("")
        elif secs or unknown:
            text = f"~{human(secs)} left" if secs else "time left unknown"
            if secs and unknown:
                text += f" + {unknown} cell(s) never timed"
            self.ui.grid_eta(text)


def _hostname() -> str:
    import socket

    return socket.gethostname()


def persist(store: ResultsStore, tracker, rec: CellRecord, parent_run_id: str | None) -> Path:
    """Store first (the source of truth), then MLflow; the claim goes once both are done.

    A record already stored and logged (collected twice) is written nowhere again. A recomputed
    record (``--force``) replaces the stored one: the cell's MLflow markers are dropped before the
    write (a crash in between only means logging it again), the new run is logged, and the run
    that logged the old record is tagged superseded (the report no longer reads it)."""
    old = store.finished(rec.cell_id) if rec.ok else None
    old_run = store.logged_run_id(rec.cell_id, tracker.uri) if old is not None else None
    if old is not None and same_computation(old, rec):
        if old_run:
            store.release(rec.cell_id, force=True)
            return store.record_path(rec.cell_id)
    elif old is not None:
        store.forget_logged(rec.cell_id)
    path = store.write(rec)
    run_id = tracker.safely(f"logging cell {rec.cell_id}", tracker.log_record, rec,
                            store.artifact_dir(rec.cell_id) if rec.ok else None, parent_run_id)
    if rec.ok and run_id:
        store.mark_logged(rec.cell_id, tracker.uri, run_id)
        if old_run and old_run != run_id:
            tracker.safely(f"marking the old run of cell {rec.cell_id} superseded", tracker.supersede,
                           old_run, run_id)
    store.release(rec.cell_id, force=True)
    return path


def same_computation(a: CellRecord, b: CellRecord) -> bool:
    """Two copies of one computation (a cluster task collected twice: only the scheduler's
    accounting may differ), not a recomputation (whose timings always differ)."""
    def key(r: CellRecord) -> dict:
        d = r.to_json()
        d["provenance"] = {k: v for k, v in d["provenance"].items() if k != "scheduler"}
        return d

    return key(a) == key(b)


def code_provenance(prov: dict) -> dict:
    """``prov`` plus ``git_diff_sha256`` when the git checkout has uncommitted changes: two runs
    at one commit with different local edits (a method fixed but not committed) then carry
    different code versions, and the report can say its rows come from different code."""
    import hashlib
    import subprocess

    if not (prov.get("git_commit") and prov.get("git_dirty")):
        return prov
    src = Path(__file__).resolve().parent.parent
    try:
        diff = subprocess.run(["git", "-C", str(src), "diff", "HEAD", "--no-color", "--no-ext-diff"],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return prov
    if diff.returncode != 0:
        return prov
    return {**prov, "git_diff_sha256": hashlib.sha256(diff.stdout).hexdigest()}
