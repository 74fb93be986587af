"""Runs a grid: datasets x panel sizes x methods x folds x seeds, one isolated cell at a time.

Cell life: load data -> fit the panel on the fold's training slides -> build TrainData/TestData
-> method.fit -> method.predict -> score -> write the record atomically -> log to MLflow.
The driver is the only writer (results store and MLflow), so SQLite stays safe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from flag_bench import PROTOCOL_VERSION, __version__
from flag_bench.catalog import DATASETS, ENCODERS, METHODS, METRICS
from flag_bench.config import RunConfig
from flag_bench.errors import CellFailure, UserError
from flag_bench.grid import Cell
from flag_bench.store import ResultsStore, atomic_write_bytes, atomic_write_json


# ---------------------------------------------------------------------------------------------
# dataset specs and data preparation (memoised per process: cells share loads and panels)
# ---------------------------------------------------------------------------------------------

def parse_dataset_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """'name' or 'name:key=value,key=value' (values parsed as int, float, bool or str)."""
    name, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"--datasets {spec}: parameter '{item}' must be key=value")
        params[key.strip()] = _parse_value(value.strip())
    return name, params


def _parse_value(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


_DATASET_MEMO: dict[str, Any] = {}


def load_dataset(spec: str):
    if spec not in _DATASET_MEMO:
        name, params = parse_dataset_spec(spec)
        loader = DATASETS.get(DATASETS.check(name))
        try:
            _DATASET_MEMO[spec] = loader(**params)
        except TypeError as exc:
            raise UserError(f"--datasets {spec}: {exc}") from None
    return _DATASET_MEMO[spec]


def transform_counts(counts: np.ndarray, library: np.ndarray, how: str) -> np.ndarray:
    """Raw counts (N, G) -> float32 targets. ``library`` (N,) is the spot's total over the pool."""
    c = counts.astype(np.float64)
    if how == "log1p":
        out = np.log1p(c)
    elif how == "log2p1":  # FLAG's and Stem's log2(1 + count)
        out = np.log2(1.0 + c)
    elif how == "log1p_cpm":
        out = np.log1p(c / np.maximum(library, 1.0)[:, None] * 1e6)
    else:  # pragma: no cover - validated in RunConfig
        raise ValueError(how)
    return out.astype(np.float32)


@dataclass
class FoldData:
    panel: Any  # GenePanel
    targets: dict[str, np.ndarray]  # slide -> (N, G) float32
    counts: dict[str, np.ndarray]  # slide -> (N, G) int32
    embeddings: dict[str, np.ndarray | None]


class DataCache:
    """Per-process memo of panels, targets and embeddings so cells only pay for what is new."""

    def __init__(self, cfg: RunConfig, device: str, cache_dir: str | None = None):
        self.cfg = cfg
        self.device = device
        self.cache_dir = cache_dir
        self._panels: dict[tuple, Any] = {}
        self._emb: dict[tuple, np.ndarray] = {}

    def patch(self):
        from flag_bench.datasets.base import PatchSpec

        return PatchSpec(self.cfg.patch_um, self.cfg.patch_px)

    def embeddings(self, ds, slide_id: str) -> np.ndarray:
        key = (ds.version, slide_id, self.cfg.encoder, self.patch().key())
        if key not in self._emb:
            from flag_bench.datasets.embed_cache import get_embeddings

            self._emb[key] = get_embeddings(
                ds, slide_id, self.cfg.encoder, self.patch(), device=self.device, cache_dir=self.cache_dir
            )
        return self._emb[key]

    def panel(self, ds, panel_spec: str, n_genes: int, train: tuple[str, ...]):
        key = (ds.version, panel_spec, n_genes, tuple(sorted(train)))
        if key not in self._panels:
            from flag_bench.datasets.panels import make_selector

            sel = make_selector(panel_spec)
            self._panels[key] = sel.fit(
                [ds.slide(s).counts for s in train], ds.genes, n_genes,
                train_slides=train, dataset_version=ds.version,
            )
        return self._panels[key]

    def fold_data(self, ds, cell: Cell, needs_embeddings: bool) -> FoldData:
        panel = self.panel(ds, cell.panel, cell.n_genes, cell.fold_train)
        idx = np.asarray(panel.index)
        targets, counts, emb = {}, {}, {}
        for sid in (*cell.fold_train, *cell.fold_val, *cell.fold_test):
            s = ds.slide(sid)
            library = np.asarray(s.counts.sum(axis=1)).ravel()
            c = s.counts[:, idx].toarray().astype(np.int32)
            counts[sid] = c
            targets[sid] = transform_counts(c, library, cell.target_transform)
            emb[sid] = self.embeddings(ds, sid) if needs_embeddings else None
        return FoldData(panel, targets, counts, emb)


def build_views(ds, fd: FoldData, cell: Cell, patch, gene_ids: tuple[str, ...]):
    from flag_bench.datasets.views import SlideInput, TestData, TrainData, TrainSlide

    def inputs(sid: str) -> dict[str, Any]:
        s = ds.slide(sid)
        tiles = (lambda s=s: s.tiles(patch)) if s.tile_reader is not None else None
        return dict(
            slide_id=sid, patient=s.patient, barcodes=np.asarray(s.barcodes),
            coords_um=np.asarray(s.coords_um, dtype=np.float32), embeddings=fd.embeddings[sid],
            tiles=tiles, spot_diameter_um=float(s.spot_diameter_um),
        )

    common = dict(genes=fd.panel.genes, gene_ids=gene_ids, target_transform=cell.target_transform,
                  dataset=cell.dataset)

    def train_data(ids):
        return TrainData(**common, slides=tuple(
            TrainSlide(**inputs(s), targets=fd.targets[s], counts=fd.counts[s]) for s in ids))

    train = train_data(cell.fold_train)
    val = train_data(cell.fold_val) if cell.fold_val else None
    test = TestData(**common, slides=tuple(SlideInput(**inputs(s)) for s in cell.fold_test))
    return train, val, test


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------

class PeakRSS:
    """Samples the process RSS every 20 ms on a thread; ``peak_mb`` after exit."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * self._page
        except OSError:  # not Linux: fall back to the lifetime maximum
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _loop(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self.peak = self._rss()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------

def check_predictions(method: str, preds: Any, test) -> list[np.ndarray]:
    if not isinstance(preds, (list, tuple)) or len(preds) != len(test.slides):
        raise CellFailure(
            f"method '{method}' returned {type(preds).__name__} of length "
            f"{len(preds) if hasattr(preds, '__len__') else '?'}; expected a list of {len(test.slides)} arrays"
        )
    out = []
    for p, s in zip(preds, test.slides):
        p = np.asarray(p)
        if p.shape != (s.n_spots, test.n_genes):
            raise CellFailure(
                f"method '{method}' predicted shape {p.shape} for slide {s.slide_id}; expected {(s.n_spots, test.n_genes)}"
            )
        bad = int((~np.isfinite(p)).sum())
        if bad:
            raise CellFailure(f"method '{method}' predicted {bad} non-finite value(s) on slide {s.slide_id}")
        out.append(p.astype(np.float32, copy=False))
    return out


def score_cell(preds, truths, test, seed: int, annotations: dict[str, np.ndarray | None]):
    """Returns (cell scores, per-slide scores, per-gene table rows, notes)."""
    from flag_bench.metrics.base import SlideContext

    metrics = METRICS.load_all()
    per_slide: dict[str, dict[str, float]] = {}
    per_gene: dict[str, dict[str, np.ndarray]] = {}
    notes: dict[str, Any] = {}
    for p, y, s in zip(preds, truths, test.slides):
        ctx = SlideContext(s.slide_id, np.asarray(s.coords_um, dtype=np.float64), test.genes, seed,
                           annotations.get(s.slide_id))
        vals: dict[str, float] = {}
        genes: dict[str, np.ndarray] = {}
        for name, m in metrics.items():
            if m.scope != "slide":
                continue
            sc = m.compute(y.astype(np.float64), p.astype(np.float64), ctx)
            vals.update(sc.values)
            genes.update(sc.per_gene)
            for k, v in sc.notes.items():
                notes[f"{s.slide_id}.{name}.{k}"] = v
        per_slide[s.slide_id] = vals
        per_gene[s.slide_id] = genes
    cell: dict[str, float] = {}
    keys = sorted({k for v in per_slide.values() for k in v})
    for k in keys:
        arr = np.array([per_slide[s].get(k, np.nan) for s in per_slide], dtype=np.float64)
        cell[k] = float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")
    yp = np.concatenate([p.astype(np.float64) for p in preds])
    yt = np.concatenate([y.astype(np.float64) for y in truths])
    pooled_ctx = SlideContext("pooled", None, test.genes, seed, None)
    for name, m in metrics.items():
        if m.scope == "pooled":
            sc = m.compute(yt, yp, pooled_ctx)
            cell.update(sc.values)
    return cell, per_slide, per_gene, notes


# ---------------------------------------------------------------------------------------------
# provenance
# ---------------------------------------------------------------------------------------------

def provenance(device: str) -> dict[str, Any]:
    import platform
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    vers = {}
    for pkg in ("torch", "torch-geometric", "numpy", "scipy", "scikit-learn", "anndata", "mlflow", "pandas"):
        try:
            vers[pkg] = version(pkg)
        except PackageNotFoundError:
            vers[pkg] = None
    commit, dirty = None, None
    src = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
        if commit:
            dirty = bool(subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                                        capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    dev_name = device
    if device.startswith("cuda"):
        import torch

        dev_name = torch.cuda.get_device_name(torch.device(device))
    return {
        "flag_bench": __version__, "protocol_version": PROTOCOL_VERSION, "git_commit": commit,
        "git_dirty": dirty, "python": platform.python_version(), "platform": platform.platform(),
        "packages": vers, "device": device, "device_name": dev_name,
    }


# ---------------------------------------------------------------------------------------------
# the grid
# ---------------------------------------------------------------------------------------------

@dataclass
class PlannedCell:
    cell: Cell
    method_cls: Any
    config: Any


@dataclass
class RunSummary:
    planned: int = 0
    skipped: int = 0
    ok: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (cell description, message)
    interrupted: bool = False
    parent_run_id: str | None = None
    tracking_uri: str | None = None

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed else 0


def default_methods() -> tuple[str, ...]:
    names = []
    for name in METHODS.names():
        if METHODS.origin(name) != "built-in":
            continue
        if METHODS.get(name).card.default_run:
            names.append(name)
    return tuple(names)


def plan_grid(cfg: RunConfig) -> tuple[list[PlannedCell], dict[str, Any]]:
    """Validate everything that can be validated up front and expand the grid."""
    from flag_bench.datasets.base import PatchSpec
    from flag_bench.datasets.panels import make_selector
    from flag_bench.datasets.splits import make_split

    methods = cfg.methods or default_methods()
    for m in methods:
        METHODS.check(m)
    ENCODERS.check(cfg.encoder)
    for m in cfg.method_overrides:
        METHODS.check(m)
    selector = make_selector(cfg.panel)  # validates the spec (and a panel file) early
    patch = PatchSpec(cfg.patch_um, cfg.patch_px)
    classes = {m: METHODS.get(m) for m in methods}
    configs = {m: classes[m].make_config(cfg.preset, cfg.method_overrides.get(m)) for m in methods}
    plan: list[PlannedCell] = []
    splits: dict[str, Any] = {}
    for spec in cfg.datasets:
        ds = load_dataset(spec)
        for g in cfg.genes:
            if g > len(ds.genes):
                raise UserError(
                    f"--genes {g}: dataset {ds.name} has only {len(ds.genes)} candidate genes; use --genes {len(ds.genes)} or fewer"
                )
        for m in methods:
            cls = classes[m]
            split = make_split(ds, cfg.split, with_val=cls.card.uses_validation,
                               allow_patient_overlap=cfg.allow_patient_overlap)
            splits[(spec, cls.card.uses_validation)] = split
            folds = split.folds
            if cfg.folds is not None:
                bad = [i for i in cfg.folds if not 0 <= i < len(folds)]
                if bad:
                    raise UserError(f"--folds {bad[0]}: the {cfg.split} split of {ds.name} has folds 0..{len(folds) - 1}")
                folds = tuple(folds[i] for i in cfg.folds)
            for g in cfg.genes:
                for fold in folds:
                    for seed in cfg.seeds:
                        cell = Cell(
                            dataset=ds.name, dataset_spec=spec, dataset_version=ds.version, n_genes=int(g),
                            panel=cfg.panel, panel_params=tuple(sorted(selector.params.items())),
                            method=m, preset=cfg.preset, config_hash=cls.config_hash(configs[m]),
                            split=cfg.split, fold=fold.name, fold_train=fold.train, fold_val=fold.val,
                            fold_test=fold.test, seed=int(seed), target_transform=cfg.target_transform,
                            encoder=cfg.encoder, patch=patch.key(),
                        )
                        plan.append(PlannedCell(cell, cls, configs[m]))
    return plan, splits


def protocol_card(cfg: RunConfig, split_desc: str, overlap: bool) -> dict[str, Any]:
    return {
        "protocol_version": PROTOCOL_VERSION,
        "target_transform": cfg.target_transform,
        "split": cfg.split,
        "split_description": split_desc,
        "patient_overlap": overlap,
        "panel_selector": cfg.panel.split(":")[0],
        "encoder": cfg.encoder,
        "patch": f"{cfg.patch_um:g} um @ {cfg.patch_um / cfg.patch_px:g} um/px ({cfg.patch_px} px)",
        "pcc_aggregation": "per-gene r over spots of each test slide, mean over genes, then mean over test slides",
    }


class Runner:
    def __init__(self, cfg: RunConfig, *, console=None, progress: bool = True,
                 cache_dir: str | None = None, after_cell: Callable[[dict], None] | None = None):
        self.cfg = cfg
        self.console = console
        self.show_progress = progress
        self.cache_dir = cache_dir
        self.after_cell = after_cell  # test hook
        self.store = ResultsStore(cfg.results_dir)

    def _print(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg, highlight=False)

    def run(self) -> RunSummary:
        from flag_bench.methods.base import resolve_device

        cfg = self.cfg
        device = resolve_device(cfg.device)
        self.store.ensure_writable()
        plan, splits = plan_grid(cfg)
        uri = cfg.tracking_uri or f"sqlite:///{Path(cfg.results_dir).resolve() / 'mlflow.db'}"
        summary = RunSummary(planned=len(plan), tracking_uri=uri)

        from flag_bench.tracking import Tracker

        tracker = Tracker(uri, Path(cfg.results_dir), cfg.suite)
        grid_spec = {k: v for k, v in dataclasses.asdict(cfg).items()
                     if k not in ("results_dir", "tracking_uri", "force", "fail_fast", "device")}
        prov = provenance(device)
        # cells logged by an earlier, interrupted invocation but missing from MLflow
        tracker.sync(self.store)
        summary.parent_run_id = tracker.start_parent(grid_spec, prov)
        data = DataCache(cfg, device, self.cache_dir)
        todo = []
        for pc in plan:
            if not cfg.force and self.store.finished(pc.cell.cell_id):
                summary.skipped += 1
            else:
                todo.append(pc)
        self._print(
            f"flag-bench: {len(plan)} cells ({summary.skipped} already finished, {len(todo)} to run) "
            f"on {device}; results in {cfg.results_dir}"
        )
        with self._progress() as prog:
            grid_task = prog.add_task("grid", total=len(todo)) if prog else None
            try:
                for pc in todo:
                    desc = f"{pc.cell.dataset} G={pc.cell.n_genes} {pc.cell.method} {pc.cell.fold} seed={pc.cell.seed}"
                    if prog:
                        prog.update(grid_task, description=desc)
                    rec = self._run_cell(pc, data, device, prov, splits, prog)
                    if rec["status"] == "ok":
                        summary.ok += 1
                        self.store.write_ok(rec)
                        tracker.log_cell(rec, self.store, summary.parent_run_id)
                    else:
                        path = self.store.write_failed(rec)
                        summary.failed.append((desc, rec["error"]["message"]))
                        tracker.log_failed(rec, summary.parent_run_id)
                        self._print(f"[red]FAILED[/red] {desc}: {rec['error']['message']} (traceback in {path})")
                    if self.after_cell:
                        self.after_cell(rec)
                    if prog:
                        prog.advance(grid_task)
                    if rec["status"] != "ok" and cfg.fail_fast:
                        break
            except KeyboardInterrupt:
                summary.interrupted = True
        finished = [r for r in (self.store.finished(pc.cell.cell_id) for pc in plan) if r]
        tracker.log_curves(summary.parent_run_id, finished)
        status = "KILLED" if summary.interrupted else ("FAILED" if summary.failed else "FINISHED")
        tracker.end_parent(summary.parent_run_id, status)
        return summary

    @contextlib.contextmanager
    def _progress(self):
        if not self.show_progress or self.console is None:
            yield None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=self.console, transient=False) as prog:
            yield prog

    def _hook(self, prog):
        if prog is None:
            return None

        @contextlib.contextmanager
        def hook(total: int, description: str):
            tid = prog.add_task(f"  {description}", total=total)
            try:
                yield lambda n=1: prog.advance(tid, n)
            finally:
                prog.remove_task(tid)

        return hook

    def _run_cell(self, pc: PlannedCell, data: DataCache, device: str, prov: dict, splits, prog) -> dict:
        from flag_bench.methods.base import seed_everything

        cell = pc.cell
        cfg = self.cfg
        t0 = time.perf_counter()
        split = splits[(cell.dataset_spec, pc.method_cls.card.uses_validation)]
        rec: dict[str, Any] = {
            "cell_id": cell.cell_id, "cell": dataclasses.asdict(cell), "device": device,
            "config": dataclasses.asdict(pc.config), "provenance": prov,
            "protocol": protocol_card(cfg, split.description, split.patient_overlap),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        stage = "data"
        try:
            ds = load_dataset(cell.dataset_spec)
            needs = pc.method_cls.card.needs
            fd = data.fold_data(ds, cell, needs_embeddings="embeddings" in needs)
            train, val, test = build_views(ds, fd, cell, data.patch(), tuple(ds.gene_ids[i] for i in fd.panel.index))
            rec["panel"] = {"panel_id": fd.panel.panel_id, "genes": list(fd.panel.genes),
                            "selector": fd.panel.selector, "stats": fd.panel.stats}
            stage = "fit"
            seed_everything(cell.seed)
            method = pc.method_cls(pc.config, seed=cell.seed, device=device)
            method.progress_hook = self._hook(prog)
            t_data = time.perf_counter() - t0
            if device.startswith("cuda"):
                import torch

                torch.cuda.reset_peak_memory_stats()
            with PeakRSS() as mem:
                t1 = time.perf_counter()
                method.fit(train, val)
                _sync(device)
                t2 = time.perf_counter()
                stage = "predict"
                preds = method.predict(test)
                _sync(device)
                t3 = time.perf_counter()
            stage = "score"
            preds = check_predictions(cell.method, preds, test)
            truths = [fd.targets[s] for s in cell.fold_test]
            ann = {s: ds.slide(s).meta.get("annotations") for s in cell.fold_test}
            scores, per_slide, per_gene, notes = score_cell(preds, truths, test, cell.seed, ann)
            t4 = time.perf_counter()
            costs = {
                "fit_seconds": t2 - t1, "predict_seconds": t3 - t2, "score_seconds": t4 - t3,
                "data_seconds": t_data, "peak_rss_mb": mem.peak_mb,
                "n_parameters": method.n_parameters(),
            }
            if device.startswith("cuda"):
                import torch

                costs["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
            stage = "artifacts"
            artifacts = self._write_artifacts(cell, ds, test, preds, truths, per_gene, fd, pc.config)
            costs["total_seconds"] = time.perf_counter() - t0
            costs["overhead_seconds"] = costs["total_seconds"] - costs["fit_seconds"] - costs["predict_seconds"]
            rec.update(status="ok", scores=scores, scores_per_slide=per_slide, notes=notes, costs=costs,
                       method_summary=_jsonable(method.summary), artifacts=artifacts,
                       finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one failing cell never stops the grid
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not isinstance(exc, (CellFailure, UserError)):
                msg = f"{type(exc).__name__} in {stage} of method '{cell.method}': {msg}"
            rec.update(status="failed", error={"stage": stage, "type": type(exc).__name__, "message": msg,
                                               "traceback": traceback.format_exc()},
                       finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        return rec

    def _write_artifacts(self, cell, ds, test, preds, truths, per_gene, fd, config) -> list[str]:
        import anndata as ad
        import pandas as pd

        out = self.store.artifact_dir(cell.cell_id)
        out.mkdir(parents=True, exist_ok=True)
        rows = []
        for sid, cols in per_gene.items():
            df = pd.DataFrame({k: np.asarray(v) for k, v in cols.items()})
            df.insert(0, "gene", list(fd.panel.genes))
            df.insert(0, "slide", sid)
            rows.append(df)
        atomic_write_bytes(out / "per_gene_metrics.csv", pd.concat(rows).to_csv(index=False).encode())
        obs = pd.DataFrame({
            "slide": np.concatenate([[s.slide_id] * s.n_spots for s in test.slides]),
            "barcode": np.concatenate([np.asarray(s.barcodes) for s in test.slides]),
        })
        obs.index = (obs["slide"] + ":" + obs["barcode"]).to_numpy()
        adata = ad.AnnData(X=np.concatenate(preds), obs=obs, var=pd.DataFrame(index=list(fd.panel.genes)))
        adata.layers["truth"] = np.concatenate(truths)
        adata.obsm["spatial_um"] = np.concatenate([np.asarray(s.coords_um) for s in test.slides])
        adata.uns["cell_id"] = cell.cell_id
        adata.uns["target_transform"] = cell.target_transform
        tmp = out / ".predictions.h5ad.tmp"
        adata.write_h5ad(tmp)
        os.replace(tmp, out / "predictions.h5ad")
        atomic_write_json(out / "config.json", {"cell": dataclasses.asdict(cell), "method_config": dataclasses.asdict(config)})
        atomic_write_bytes(out / "genes.txt", ("\n".join(fd.panel.genes) + "\n").encode())
        return ["per_gene_metrics.csv", "predictions.h5ad", "config.json", "genes.txt"]


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
