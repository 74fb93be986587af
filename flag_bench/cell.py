"""One grid cell as a pure function: ``run_cell(task, on_event) -> CellRecord``.

No runner, no terminal, no results store: the cell loads its data (memoised per process, so a
worker that computes many cells of one fold pays once), fits, predicts, scores, writes its
artifacts under the task's artifact folder and returns the record. The driver alone writes
records and MLflow. Progress leaves as events: ``on_event(kind, payload)`` with kinds
"stage", "task_start", "advance" and "task_end" (payloads are plain, picklable dicts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, cast

from flag_bench.errors import CellFailure, UserError
from flag_bench import resolve
from flag_bench.plan import CellTask, encoder_identity
from flag_bench.record import CellRecord, ErrorInfo, MethodInfo, PanelInfo, jsonable

if TYPE_CHECKING:
    from flag_bench.isolate import ChildTask  # what an isolated child hands _fit_predict

EventSink = Callable[[str, dict], None]


def _builders_memo():
    from flag_bench.datasets.memo import ByteMemo, nbytes

    # a builder holds its dataset (its memos count in the shared budget): bounded by the
    # dataset's bytes like the dataset memo, the builder used last always kept
    return ByteMemo("fold builders", size=lambda b: nbytes(b.ds), own_budget=True, keep_newest=True)


_BUILDERS = _builders_memo()
_KEYS = itertools.count()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def fold_builder(task: CellTask):
    """One FoldBuilder per (dataset, patch, encoder, device, cache) in this process."""
    from flag_bench.datasets.fold import FoldBuilder

    key = (task.dataset.key, task.patch, task.encoder, task.device, task.cache_dir)
    # the resolver methods reach through SlideImage: an object with no module globals (a closure
    # here would lead to this module's _BUILDERS and resolve's _DATASET_MEMO; docs/threat-model.md)
    return _BUILDERS.get_or_compute(key, lambda: FoldBuilder(
        resolve.dataset(task.dataset), patch=task.patch, encoder=run_encoder(task), device=task.device,
        cache_dir=task.cache_dir, encoder_resolver=resolve.encoder_resolver()))


def run_encoder(task: CellTask):
    """The task's encoder as this process resolves it, checked against the plan: a worker that
    finds other weights (another FLAG_BENCH_<NAME>_WEIGHTS, a changed file) would compute numbers
    the cell id does not describe."""
    info = task.protocol.get("encoder_info") or {}
    # a task without an encoder card (built by hand, not planned) has nothing to check against
    return recorded_encoder(task.encoder, task.cell.encoder, info, whose="the plan",
                            fix="give every worker the same weights file", check=bool(info))


def recorded_encoder(name: str, identity: str, info: Mapping[str, Any], *, whose: str, fix: str, check: bool = True):
    """Encoder ``name`` as this process resolves it, whose identity must be the recorded ``identity``
    (``info``: the protocol card's encoder_info, which also hands over the planning process's hash
    of the weights file, so a worker need not read a multi-GB file again); else one line naming
    both weights files, ``whose`` record used the other, and the ``fix``."""
    from flag_bench.datasets.encoders import remember_sha256

    w = info.get("weights") or {}
    if w.get("path") and w.get("sha256") and "mtime_ns" in w:
        remember_sha256(w["path"], int(w["bytes"]), int(w["mtime_ns"]), str(w["sha256"]))
    encoder = resolve.encoder(name)
    if check and encoder_identity(encoder) != identity:
        found = getattr(encoder, "weights_file", lambda: None)()
        raise UserError(f"encoder {name}: this process finds weights {found} ({encoder_identity(encoder)}), "
                        f"{whose} used {w.get('path')} ({identity}); {fix}")
    return encoder


def progress_hook(on_event: EventSink, cell_id: str):
    """The Method.progress_hook protocol, speaking events."""

    @contextlib.contextmanager
    def hook(total: int, description: str):
        key = f"{cell_id}:{next(_KEYS)}"
        on_event("task_start", {"key": key, "total": int(total), "description": description})
        try:
            yield lambda n=1: on_event("advance", {"key": key, "n": int(n)})
        finally:
            on_event("task_end", {"key": key})

    return hook


def _fit_predict(task: CellTask | ChildTask, views, on_event: EventSink, stage: list[str]):
    from flag_bench.measure import PeakRSS, sync
    from flag_bench.methods.base import seed_everything
    from flag_bench.methods.oracles import Oracle, receives_truth

    if getattr(task, "isolate", False) and not receives_truth(task.method_cls):
        from flag_bench.isolate import fit_predict_isolated  # a fresh process runs this function

        return fit_predict_isolated(task, views, on_event, stage)
    seed_everything(task.cell.seed)
    method = task.method_cls(task.config, seed=task.cell.seed, device=task.device)
    method.progress_hook = progress_hook(on_event, task.cell.cell_id)
    cuda = task.device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as mem:
        t1 = time.perf_counter()
        method.fit(views.train, views.val)
        sync(task.device)
        t2 = time.perf_counter()
        stage[0] = "predict"
        on_event("stage", {"cell_id": task.cell.cell_id, "stage": "predict"})
        # a built-in oracle reads the answer by design (methods/oracles.py); nothing else gets it
        samples = None
        preds: list | None  # None with samples: their mean is the prediction
        if receives_truth(type(method)):
            preds = cast(Oracle, method).predict_from_truth(views.test, views.truths)
        else:
            # draws, when the method keeps them: their mean is the prediction (_compute), so one
            # sampling pass serves both
            samples = method.predict_samples(views.test)
            preds = method.predict(views.test) if samples is None else None
        sync(task.device)
        t3 = time.perf_counter()
    import torch

    # float32 reductions split across threads: same seed and device give the same numbers at the
    # same thread count (a pool worker runs on its share of the CPUs), so the count is recorded
    costs = {"fit_seconds": t2 - t1, "predict_seconds": t3 - t2, "peak_rss_mb": mem.peak_mb,
             "n_parameters": method.n_parameters(), "torch_threads": torch.get_num_threads()}
    if cuda:
        costs["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return method, preds, samples, costs


def _compute(task: CellTask, on_event: EventSink, stage: list[str]) -> dict[str, Any]:
    from flag_bench.artifacts import write_artifacts
    from flag_bench.scoring import check_predictions, check_samples, score_cell, score_samples

    t0 = time.perf_counter()
    cell = task.cell
    builder = fold_builder(task)
    views = builder.build(task.fold, _selector(task), embeddings=task.needs_embeddings)
    panel = views.panel
    stage[0] = "fit"
    on_event("stage", {"cell_id": cell.cell_id, "stage": "fit"})
    t_data = time.perf_counter() - t0
    from flag_bench.cluster.load import CellLoad

    # threads sized to the load first; then the CPU (children's too: an isolated fit), wall and load
    # of fit + predict, and whether other processes contended for the cores (cluster/load.py)
    with CellLoad() as load:
        method, preds, samples, costs = _fit_predict(task, views, on_event, stage)
    costs.update(load.costs())
    stage[0] = "score"
    t3 = time.perf_counter()
    if samples is not None:
        samples = check_samples(cell.method, samples, views.test)
        preds = [s.mean(axis=0) for s in samples]
    preds = check_predictions(cell.method, preds, views.test)
    scores, per_slide, per_gene, notes = score_cell(preds, views.truths, views.test, cell.seed, views.annotations,
                                                    counts=views.truth_counts, libraries=views.truth_libraries,
                                                    target_transform=views.test.target_transform,
                                                    gene_sets=task.gene_sets)
    if samples is not None:
        scores.update(score_samples(samples, views.truths, views.test, cell.seed, views.annotations,
                                    target_transform=views.test.target_transform))
    costs["score_seconds"] = time.perf_counter() - t3
    costs["data_seconds"] = t_data
    stage[0] = "artifacts"
    artifacts = write_artifacts(
        Path(task.artifact_dir), cell_json={"cell_id": cell.cell_id, **dataclasses.asdict(cell)},
        config_json=jsonable(dataclasses.asdict(task.config)), test=views.test, genes=panel.genes,
        preds=preds, per_gene=per_gene)  # no truth beside the predictions: a later cell could read it
    if task.save_models:
        stage[0] = "save model"
        t4 = time.perf_counter()
        artifacts = (*artifacts, _save_model(task, method, panel.genes, views.test.gene_ids))
        costs["save_model_seconds"] = time.perf_counter() - t4
    costs["total_seconds"] = time.perf_counter() - t0
    costs["overhead_seconds"] = costs["total_seconds"] - costs["fit_seconds"] - costs["predict_seconds"]
    return dict(
        scores=scores, scores_per_slide=per_slide, notes=jsonable(notes), costs=costs, artifacts=tuple(artifacts),
        summary=jsonable(method.summary),
        panel=PanelInfo(panel.panel_id, tuple(panel.genes), panel.selector, tuple(panel.train_slides),
                        jsonable(panel.stats)),
    )


def _save_model(task: CellTask, method, genes, gene_ids) -> str:
    """``--save-models``: the fitted method (or, under --isolate, the state its child sent back)
    in ``<artifact_dir>/model``; the name the record's artifacts list."""
    from flag_bench.models import MODEL_DIR, save_model

    save_model(method, Path(task.artifact_dir) / MODEL_DIR, task=task, panel_genes=genes, gene_ids=gene_ids)
    return MODEL_DIR


def _selector(task: CellTask):
    return resolve.panel_selector(task.fold.panel)


def run_cell(task: CellTask, on_event: EventSink | None = None) -> CellRecord:
    """Compute one cell; a failure inside it becomes a failed record, never an exception."""
    on_event = on_event or (lambda kind, payload: None)
    started = _now()
    stage = ["data"]
    on_event("stage", {"cell_id": task.cell.cell_id, "stage": "data"})
    base: dict[str, Any]
    info: dict[str, Any]
    base = dict(cell=task.cell, protocol=task.protocol, provenance=task.provenance, device=task.device,
                started=started)
    info = dict(name=task.cell.method, preset=task.cell.preset, config=jsonable(dataclasses.asdict(task.config)),
                overrides=jsonable(task.overrides), card=_card(task.method_cls))
    try:
        out = _compute(task, on_event, stage)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one failing cell never stops the grid
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, (CellFailure, UserError)):
            msg = f"{type(exc).__name__} in {stage[0]} of method '{task.cell.method}': {msg}"
        err = ErrorInfo(stage[0], type(exc).__name__, msg, traceback.format_exc())
        return CellRecord(status="failed", method=MethodInfo(**info), finished=_now(), error=err, **base)
    summary = out.pop("summary")
    return CellRecord(status="ok", method=MethodInfo(**info, summary=summary), finished=_now(), **out, **base)


def _card(cls) -> dict[str, Any]:
    card = cls.card
    if hasattr(card, "to_dict"):
        return jsonable(card.to_dict())
    return jsonable(dataclasses.asdict(card))


def crashed_record(task: CellTask, exc: BaseException) -> CellRecord:
    """A worker process that died mid-cell still leaves a failed record naming why."""
    msg = f"worker process died while computing the cell ({type(exc).__name__}: {exc})"
    return CellRecord(
        cell=task.cell, status="failed", protocol=task.protocol, provenance=task.provenance, device=task.device,
        started=_now(), finished=_now(),
        method=MethodInfo(task.cell.method, task.cell.preset, jsonable(dataclasses.asdict(task.config)),
                          jsonable(task.overrides), _card(task.method_cls)),
        error=ErrorInfo("worker", type(exc).__name__, msg, "".join(traceback.format_exception(exc))),
    )
