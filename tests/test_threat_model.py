"""docs/threat-model.md, tested: each accidental path from a method to the test expression gets a
plugin that tries it through the real harness (``plan_grid`` + ``run_cell``) and must come away
without the test counts, or be flagged by ``flag-bench check``; the caller's frame, which no
in-process harness can close, is shown closed under ``--isolate``; and ``--isolate`` computes the
same numbers as in-process (a torch method with draws and ridge, tiny presets).

Every thief falls back to the mean control when its path leads nowhere and says in its summary
whether it found the truth (``leaked``), so a test reads both the record's scores and the claim.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from flag_bench.catalog import METHODS, RegisteredEncoders
from flag_bench.cell import run_cell
from flag_bench.check import fold_builder, fold_views, run_checks, synthetic_dataset
from flag_bench.check_walk import leaks
from flag_bench.config import RunConfig
from flag_bench.datasets import her2st_mini
from flag_bench.datasets.base import SpatialDataset
from flag_bench.methods.base import MethodCard
from flag_bench.methods.controls import MeanControl
from flag_bench.methods.oracles import NoiseConfig, OracleNoise, claims_truth, receives_truth
from flag_bench.plan import plan_grid
from flag_bench.roles import TRUTH_ROLES, Role

SYN = "synthetic:n_slides=4,spots_per_slide=40,n_genes=30,seed=5"


def _card(name: str) -> MethodCard:
    return MethodCard(name=name, description="test: tries a path to the test truth", needs=frozenset(),
                      default_run=False)


def _to_targets(panel_counts: np.ndarray, library: np.ndarray, test) -> np.ndarray:
    from flag_bench.datasets.fold import transform_counts

    return transform_counts(np.asarray(panel_counts, dtype=np.int32), library, test.target_transform)


class Thief(MeanControl):
    """The mean control, unless ``steal(test)`` finds the test expression."""

    def steal(self, test) -> list[np.ndarray] | None:
        raise NotImplementedError

    def predict(self, test):
        try:
            stolen = self.steal(test)
        except Exception as exc:  # the path is closed: say how
            stolen, self.summary["error"] = None, f"{type(exc).__name__}: {exc}"
        self.summary["leaked"] = stolen is not None
        return stolen if stolen is not None else super().predict(test)


def _from_dataset(ds: SpatialDataset, test) -> list[np.ndarray]:
    cols = [list(ds.genes).index(g) for g in test.genes]
    out = []
    for s in test.slides:
        counts = ds.slide(s.slide_id).counts
        out.append(_to_targets(counts[:, cols].toarray(), np.asarray(counts.sum(axis=1)).ravel(), test))
    return out


# -- (a) a plugin subclass claiming the oracles' module -------------------------------------------
class ModuleClaimant(OracleNoise):
    """An oracle subclass that sets ``__module__`` to the built-in oracles' module, under a card
    that does not say oracle: before the registry granted the role, it was handed the truth."""

    __module__ = "flag_bench.methods.oracles"
    card = _card("module-claimant")
    Config = NoiseConfig


# -- (b) the image reader's path: her2st-mini's HDF5 holds the counts too --------------------------
class ReaderPathThief(Thief):
    card = _card("reader-path-thief")

    def steal(self, test):
        import h5py
        import scipy.sparse as sp

        path = test.slides[0].image.reader.path
        out = []
        with h5py.File(path, "r") as f:
            pool = [g.decode() if isinstance(g, bytes) else str(g) for g in f["genes"][()]]
            cols = [pool.index(g) for g in test.genes]
            for s in test.slides:
                c = f["slides"][s.slide_id]["counts"]
                counts = sp.csr_matrix((c["data"][()], c["indices"][()], c["indptr"][()]),
                                       shape=tuple(int(v) for v in c.attrs["shape"]))
                out.append(_to_targets(counts[:, cols].toarray(), np.asarray(counts.sum(axis=1)).ravel(), test))
        return out


# -- (b, c) the resolver's globals, and anything else that reaches a loaded dataset --------------
def _reachable(root, limit: int = 400_000):
    """What a method can reach from ``root`` by following attributes, slots, containers,
    closures, defaults, bound methods and functions' ``__globals__`` (as the walker does)."""
    skip = (str, bytes, int, float, complex, bool, type(None), types.ModuleType, type, np.ndarray, np.generic)
    seen, stack = set(), [root]
    while stack and len(seen) < limit:
        o = stack.pop()
        if isinstance(o, skip) or id(o) in seen:
            continue
        seen.add(id(o))
        yield o
        if isinstance(o, dict):
            stack += list(o.values())
            continue
        if isinstance(o, (list, tuple, set, frozenset)):
            stack += list(o)
            continue
        if isinstance(o, types.FunctionType):
            stack += [c.cell_contents for c in (o.__closure__ or ()) if c.cell_contents is not None]
            stack += [o.__globals__, o.__defaults__ or (), o.__kwdefaults__ or {}]
            continue
        if isinstance(o, types.MethodType):
            stack += [o.__self__, o.__func__]
        with contextlib.suppress(Exception):
            d = object.__getattribute__(o, "__dict__")
            if isinstance(d, dict):
                stack += list(d.values())
        for klass in type(o).__mro__:
            for slot in getattr(klass, "__slots__", ()):
                with contextlib.suppress(Exception):
                    stack.append(getattr(o, slot))


class ResolverGlobalsThief(Thief):
    """The path the issue names: ``image.encoders.resolver.__globals__`` (the cell module's)."""

    card = _card("resolver-globals-thief")

    def steal(self, test):
        for o in _reachable(test.slides[0].image.encoders.resolver.__globals__):
            if isinstance(o, SpatialDataset) and o.name == test.dataset:
                return _from_dataset(o, test)
        return None


class ReachableMemoThief(Thief):
    """Everything reachable from TestData, as the walker follows it, searched for a loaded dataset
    (``plan._DATASET_MEMO``, ``cell._BUILDERS``, the check dataset's registration...)."""

    card = _card("reachable-memo-thief")

    def steal(self, test):
        for o in _reachable(test):
            if isinstance(o, SpatialDataset) and o.name == test.dataset:
                return _from_dataset(o, test)
        return None


# -- (d) earlier cells' artifacts -----------------------------------------------------------------
class ArtifactThief(Thief):
    """Opens the predictions an earlier cell left in the results folder and takes their truth."""

    card = _card("artifact-thief")

    def steal(self, test):
        import anndata as ad

        for path in sorted(Path(os.environ["THIEF_RESULTS"]).glob("artifacts/*/predictions.h5ad")):
            a = ad.read_h5ad(path)
            if "truth" not in a.layers or list(a.var_names) != list(test.genes):
                continue
            out = []
            for s in test.slides:
                rows = {b: i for i, b in enumerate(a.obs_names)}
                idx = [rows.get(f"{s.slide_id}:{b}") for b in s.barcodes]
                if None in idx:
                    break
                out.append(np.asarray(a.layers["truth"])[idx].astype(np.float32))
            else:
                return out
        return None


# -- the caller's frame: open in-process, closed under --isolate ----------------------------------
class FrameThief(Thief):
    card = _card("frame-thief")

    def steal(self, test):
        f = sys._getframe(1)
        while f is not None:
            for v in list(f.f_locals.values()):
                truths = getattr(v, "truths", None)
                if isinstance(truths, tuple) and len(truths) == len(test.slides):
                    return [np.asarray(t, dtype=np.float32) for t in truths]
            f = f.f_back
        return None


class Broken(MeanControl):
    card = _card("broken")

    def fit(self, train, val=None):
        raise ValueError("boom in fit")


@contextlib.contextmanager
def registered(*classes):
    for cls in classes:
        METHODS.register(cls.card.name, cls)
    try:
        yield
    finally:
        for cls in classes:
            METHODS.unregister(cls.card.name)


def run_cells(tmp_path: Path, classes, dataset: str = SYN, genes: int = 10, isolate: bool = False,
              methods: tuple[str, ...] = ()) -> dict:
    """method -> CellRecord of fold 0, through plan_grid and run_cell (the harness's cell path)."""
    with registered(*classes):
        cfg = RunConfig(datasets=(dataset,), methods=methods + tuple(c.card.name for c in classes), genes=(genes,),
                        encoder="color-stats", preset="tiny", device="cpu", results_dir=str(tmp_path), folds=(0,),
                        isolate=isolate)
        plan = plan_grid(cfg, device="cpu", provenance={"flag_bench": "test"}, results_dir=str(tmp_path))
        return {t.cell.method: run_cell(t) for t in plan.tasks}


def _stole_nothing(rec) -> None:
    assert rec.ok, rec.error
    assert rec.method.summary["leaked"] is False, rec.method.summary
    assert rec.scores["mse"] > 1e-3 and rec.scores["pcc_mean"] < 0.9, rec.scores


# ---------------------------------------------------------------------------------------------------
def test_a_the_truth_is_granted_by_the_registry_not_by_module(tmp_path):
    assert ModuleClaimant.__module__ == "flag_bench.methods.oracles"
    assert not receives_truth(ModuleClaimant) and claims_truth(ModuleClaimant)
    assert receives_truth(OracleNoise) and not claims_truth(OracleNoise)
    rec = run_cells(tmp_path, [ModuleClaimant])["module-claimant"]
    assert rec.status == "failed" and "oracle" in rec.error.message, rec  # predict raises; no truth
    results = {r.name: r for r in run_checks("module-claimant", ModuleClaimant)}
    assert results["card"].status == "FAIL" and "never handed the truth" in results["card"].detail


class RoleClaimant(OracleNoise):
    """An oracle subclass whose card declares the oracle role in its typed field: a role is what a
    card says about itself, so it grants nothing."""

    card = dataclasses.replace(_card("role-claimant"), role=Role.ORACLE)
    Config = NoiseConfig


class TruthNullClaimant(MeanControl):
    """Not an oracle subclass: a method whose card declares the truth-built null role."""

    card = dataclasses.replace(_card("truth-null-claimant"), role=Role.TRUTH_NULL)


def test_a_a_card_declaring_a_truth_role_is_handed_no_truth(tmp_path):
    for cls in (RoleClaimant, TruthNullClaimant):
        assert cls.card.role in TRUTH_ROLES and not receives_truth(cls) and claims_truth(cls)
    recs = run_cells(tmp_path, [RoleClaimant, TruthNullClaimant])
    rec = recs["role-claimant"]
    assert rec.status == "failed" and "oracle" in rec.error.message, rec  # predict raises; no truth
    assert rec.method.role is Role.ORACLE  # recorded as declared: a board shows it as a reference, unranked
    assert recs["truth-null-claimant"].ok and recs["truth-null-claimant"].method.role is Role.TRUTH_NULL
    for name, cls in (("role-claimant", RoleClaimant), ("truth-null-claimant", TruthNullClaimant)):
        results = {r.name: r for r in run_checks(name, cls)}
        assert results["card"].status == "FAIL" and "never handed the truth" in results["card"].detail


def test_b_the_test_image_holds_no_path_to_the_counts_file(tmp_path):
    rec = run_cells(tmp_path, [ReaderPathThief], dataset="her2st-mini", genes=20)["reader-path-thief"]
    _stole_nothing(rec)
    assert "has no attribute 'path'" in rec.method.summary["error"]


def test_b_c_no_resolver_globals_or_dataset_memo_reachable_from_test_inputs(tmp_path):
    recs = run_cells(tmp_path, [ResolverGlobalsThief, ReachableMemoThief])
    _stole_nothing(recs["resolver-globals-thief"])
    assert "has no attribute '__globals__'" in recs["resolver-globals-thief"].method.summary["error"]
    _stole_nothing(recs["reachable-memo-thief"])


def test_d_predictions_left_by_earlier_cells_hold_no_truth(tmp_path, monkeypatch):
    monkeypatch.setenv("THIEF_RESULTS", str(tmp_path))
    recs = run_cells(tmp_path, [ArtifactThief], methods=("mean",))  # mean's cell runs (and writes) first
    assert recs["mean"].ok and list(recs) == ["mean", "artifact-thief"]
    _stole_nothing(recs["artifact-thief"])


@pytest.mark.slow
def test_the_caller_frame_is_open_in_process_and_closed_isolated(tmp_path):
    """No in-process harness can close it (docs/threat-model.md): the thief reads the truths
    from _fit_predict's frame. Under --isolate the child's frames hold only the method's inputs."""
    here = run_cells(tmp_path / "here", [FrameThief])["frame-thief"]
    assert here.method.summary["leaked"] is True and here.scores["mse"] == 0.0
    isolated = run_cells(tmp_path / "isolated", [FrameThief], isolate=True)["frame-thief"]
    assert isolated.provenance["isolation"]["isolated"] is True
    _stole_nothing(isolated)


# -- check's walker follows what the thieves followed ------------------------------------------------
@pytest.mark.slow
def test_walker_flags_resolver_globals_that_lead_to_the_harness_memos():
    from flag_bench import cell, plan  # noqa: F401  (their memos exist)
    from flag_bench.datasets.fold import FoldBuilder

    ds = synthetic_dataset()
    ok = fold_views(METHODS.get("ridge"), ds, fold_builder(ds))
    assert isinstance(ok.test.slides[0].image.encoders.resolver, RegisteredEncoders)
    assert leaks(ds, ok) == []
    # the resolver cell.py used to hand over: a function of the cell module
    old = fold_builder(ds)
    leaky = FoldBuilder(ds, patch=old.patch, encoder=old.encoder, device="cpu", cache_dir=None,
                        encoder_resolver=cell.run_encoder)
    found = leaks(ds, fold_views(METHODS.get("ridge"), ds, leaky))
    assert any("resolver.__globals__._BUILDERS is a process-wide memo ('fold builders')" in f for f in found), found
    assert any("resolver.__globals__" in f and "process-wide memo ('datasets')" in f for f in found), found


def test_walker_flags_a_reader_holding_the_counts_file(tmp_path):
    ds = her2st_mini.load()
    from flag_bench.datasets.fold import FoldSpec
    from flag_bench.datasets.panels import HMHVG
    from flag_bench.datasets.splits import make_split
    from flag_bench.spec import PanelSpec, SplitSpec, TargetTransform

    split = make_split(ds, SplitSpec("slide"), allow_patient_overlap=True)
    views = fold_builder(ds).build(FoldSpec(PanelSpec("hmhvg"), 20, split.folds[0], TargetTransform.LOG1P), HMHVG(),
                                   embeddings=False)
    first = views.test.slides[0]
    assert not hasattr(first.image.reader, "path") and leaks(ds, views) == []
    raw = ds.slide(first.slide_id).tile_reader  # what the fold builder handed methods before
    leaky = dataclasses.replace(first, image=dataclasses.replace(first.image, reader=raw))
    found = leaks(ds, dataclasses.replace(views, test=dataclasses.replace(views.test, slides=(leaky,))))
    assert any("image.reader.path is the path of" in f and "holds the dataset's counts" in f for f in found), found
    # the image-only reader serves the same pixels
    assert np.array_equal(first.image.tiles(), raw(first.slide_id, first.image.patch))


# -- the truth rebuilt for the results API ------------------------------------------------------------
def test_results_api_rebuilds_the_truth_the_file_no_longer_holds(tmp_path):
    import anndata as ad

    from flag_bench.cell import _selector
    from flag_bench.cell import fold_builder as cell_builder
    from flag_bench.leaderboard.results import load_results
    from flag_bench.store import ResultsStore

    cfg = RunConfig(datasets=("her2st-mini",), methods=("mean",), genes=(20,), encoder="color-stats",
                    preset="tiny", device="cpu", results_dir=str(tmp_path), folds=(0,), target_transform="log1p_cpm")
    (task,) = plan_grid(cfg, device="cpu", provenance={"flag_bench": "test"}, results_dir=str(tmp_path)).tasks
    rec = run_cell(task)
    ResultsStore(tmp_path).write(rec)
    path = tmp_path / "artifacts" / rec.cell_id / "predictions.h5ad"
    assert "truth" not in ad.read_h5ad(path).layers
    a = load_results(tmp_path, source="store").predictions(rec.cell_id)
    views = cell_builder(task).build(task.fold, _selector(task), embeddings=False)
    assert np.array_equal(a.layers["truth"], np.concatenate(views.truths))
    # a file written before the change keeps its stored layer
    old = ad.read_h5ad(path)
    old.layers["truth"] = old.X + 1
    old.write_h5ad(path)
    again = load_results(tmp_path, source="store").predictions(rec.cell_id)
    assert np.array_equal(again.layers["truth"], again.X + 1)


# -- --isolate: same numbers, draws, errors ----------------------------------------------------------
@pytest.mark.slow
def test_isolate_gives_the_same_numbers_draws_and_errors(tmp_path, monkeypatch):
    """ridge and stem (torch, returns draws) at the tiny preset, in-process and isolated, same seed
    and thread count (FLAG_BENCH_ADAPT_THREADS=0: the load does not change it between the runs)."""
    import anndata as ad

    monkeypatch.setenv("FLAG_BENCH_ADAPT_THREADS", "0")
    here = run_cells(tmp_path / "here", [Broken], methods=("ridge", "stem"))
    isolated = run_cells(tmp_path / "isolated", [Broken], methods=("ridge", "stem"), isolate=True)
    assert any(k.startswith("sample.") for k in here["stem"].scores)  # the draws path is exercised
    for m in ("ridge", "stem"):
        a, b = here[m], isolated[m]
        assert a.ok and b.ok, (a.error, b.error)
        assert b.provenance["isolation"]["isolated"] is True and "isolation" not in a.provenance
        assert a.costs["torch_threads"] == b.costs["torch_threads"]
        assert a.scores.keys() == b.scores.keys()
        assert all(a.scores[k] == b.scores[k] or (np.isnan(a.scores[k]) and np.isnan(b.scores[k])) for k in a.scores)
        untimed = [{k: v for k, v in r.method.summary.items() if not k.endswith("_seconds")} for r in (a, b)]
        assert untimed[0] == untimed[1] and a.costs["n_parameters"] == b.costs["n_parameters"]
        xa, xb = (ad.read_h5ad(Path(r) / "artifacts" / a.cell_id / "predictions.h5ad").X
                  for r in (tmp_path / "here", tmp_path / "isolated"))
        assert np.array_equal(xa, xb)
        assert b.costs["isolate_seconds"] > 0 and "isolate_seconds" not in a.costs
    # a method's exception reads the same in the record, the child's traceback chained under it
    a, b = here["broken"], isolated["broken"]
    assert a.status == b.status == "failed" and a.error.message == b.error.message
    assert a.error.stage == b.error.stage == "fit" and "boom in fit" in b.error.message
    assert "in the isolated process" in b.error.traceback


def test_isolate_is_a_run_option_not_part_of_the_cell(tmp_path):
    from flag_bench.config import grid_spec

    a, b = RunConfig(isolate=False), RunConfig(isolate=True)
    assert grid_spec(a) == grid_spec(b)
    plans = [plan_grid(RunConfig(datasets=(SYN,), methods=("mean", "oracle-noise"), genes=(10,), encoder="color-stats",
                                 preset="tiny", device="cpu", folds=(0,), isolate=iso), device="cpu",
                       provenance={}, results_dir=str(tmp_path)) for iso in (False, True)]
    assert [t.cell.cell_id for t in plans[0].tasks] == [t.cell.cell_id for t in plans[1].tasks]
    prov = {t.cell.method: t.provenance.get("isolation") for t in plans[1].tasks}
    assert prov["mean"]["isolated"] is True
    assert prov["oracle-noise"]["isolated"] is False  # a built-in truth reference runs in the harness
