"""End-to-end grid behaviour on the synthetic dataset (CPU, seconds), through the Driver."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from flag_bench.catalog import METHODS
from flag_bench.config import RunConfig
from flag_bench.driver import Driver
from flag_bench.errors import UserError
from flag_bench.methods.base import MethodCard
from flag_bench.methods.controls import MeanConfig, MeanControl
from flag_bench.store import ResultsStore

SYN = "synthetic:n_slides=3,spots_per_slide=60,n_genes=80,seed=3"


def cfg(tmp_path, **kw):
    base = dict(datasets=(SYN,), methods=("mean", "ridge"), genes=(10,), encoder="color-stats",
                preset="tiny", device="cpu", results_dir=str(tmp_path / "res"))
    base.update(kw)
    return RunConfig(**base)


def scores(results_dir):
    return {r.cell_id: dict(r.scores) for r in ResultsStore(results_dir).records()}


class Exploding(MeanControl):
    card = MethodCard(name="exploding", description="test: always fails in fit", needs=frozenset(), default_run=False)
    Config = MeanConfig

    def fit(self, train, val=None):
        raise RuntimeError("boom")


class MeanWithValidation(MeanControl):
    """Asks for a validation slide, as flag does: it must still be scored on the fold's panel."""

    card = MethodCard(name="mean-val", description="test: mean control that asks for validation",
                      needs=frozenset(), uses_validation=True, default_run=False)
    Config = MeanConfig

    def fit(self, train, val=None):
        assert val is not None and val.slides and val.genes == train.genes
        return super().fit(train, val)


@pytest.fixture
def extra_methods():
    METHODS.register("exploding", Exploding)
    METHODS.register("mean-val", MeanWithValidation)
    yield
    METHODS.unregister("exploding")
    METHODS.unregister("mean-val")


@pytest.mark.slow
def test_grid_runs_logs_and_resumes(tmp_path):
    c = cfg(tmp_path)
    s = Driver(c).run()
    assert (s.ok, s.skipped, s.failed, s.exit_code) == (6, 0, [], 0)  # 2 methods x 3 folds
    recs = list(ResultsStore(c.results_dir).records())
    assert len(recs) == 6
    r = recs[0]
    for key in ("pcc_mean", "pcc_top10", "pcc_top50", "mse", "mae", "pcc_pooled"):
        assert key in r.scores
    for key in ("fit_seconds", "predict_seconds", "peak_rss_mb", "overhead_seconds"):
        assert r.costs[key] >= 0
    assert r.provenance["packages"]["torch"] and r.panel.panel_id
    assert r.method.card["name"] == r.cell.method and r.method.config is not None
    import anndata as ad

    art = tmp_path / "res" / "artifacts" / r.cell_id
    a = ad.read_h5ad(art / "predictions.h5ad")
    assert tuple(a.var_names) == r.panel.genes and "barcode" in a.obs
    assert a.obsm["spatial"].shape == (a.n_obs, 2) and a.uns["spatial_unit"] == "um"
    assert (art / "per_gene_metrics.csv").read_text().startswith("slide,gene,")
    db = sqlite3.connect(tmp_path / "res" / "mlflow.db")
    n_cells = db.execute("select count(*) from tags where key='flag_bench.cell_id'").fetchone()[0]
    assert n_cells == 6
    s2 = Driver(c).run()
    assert (s2.ok, s2.skipped) == (0, 6)
    before = scores(c.results_dir)
    s3 = Driver(c.replace(force=True)).run()
    assert s3.ok == 6 and scores(c.results_dir) == before


@pytest.mark.slow
def test_every_method_of_a_fold_is_scored_on_the_same_panel(tmp_path, extra_methods):
    c = cfg(tmp_path, methods=("mean", "ridge", "mean-val"), genes=(10, 20))
    s = Driver(c).run()
    assert s.ok == 18 and not s.failed
    panels: dict[tuple, set] = {}
    for r in ResultsStore(c.results_dir).records():
        panels.setdefault((r.cell.fold, r.cell.n_genes), set()).add(r.panel.panel_id)
        if r.cell.method == "mean-val":
            assert r.cell.fold_val and set(r.panel.train_slides) == {*r.cell.fold_train, *r.cell.fold_val}
    assert len(panels) == 6 and all(len(ids) == 1 for ids in panels.values())


@pytest.mark.slow
def test_mean_control_scores_zero_and_ridge_beats_it(tmp_path):
    c = cfg(tmp_path, datasets=("synthetic:n_slides=4,spots_per_slide=120,n_genes=60,image_signal=1.0,seed=1",))
    Driver(c).run()
    by: dict[str, list] = {}
    for r in ResultsStore(c.results_dir).records():
        by.setdefault(r.cell.method, []).append(r.scores["pcc_mean"])
    assert np.allclose(by["mean"], 0.0)
    assert np.mean(by["ridge"]) > 0.2


def test_failing_cell_is_recorded_and_grid_continues(tmp_path, extra_methods):
    c = cfg(tmp_path, methods=("exploding", "mean"))
    s = Driver(c).run()
    assert s.ok == 3 and len(s.failed) == 3 and s.exit_code == 1
    failed = [r for r in ResultsStore(c.results_dir).records(include_failed=True) if not r.ok]
    assert len(failed) == 3 and "boom" in failed[0].error.traceback
    assert "exploding" in failed[0].error.message
    s2 = Driver(c.replace(results_dir=str(tmp_path / "ff"), fail_fast=True)).run()
    assert len(s2.failed) == 1 and s2.ok == 0


def test_interrupt_keeps_finished_cells_and_resume(tmp_path):
    c = cfg(tmp_path)
    seen = []

    def stop_after_two(rec):
        seen.append(rec.cell_id)
        if len(seen) == 2:
            raise KeyboardInterrupt

    s = Driver(c, after_cell=stop_after_two).run()
    assert s.interrupted and s.exit_code == 130
    assert len(list(ResultsStore(c.results_dir).records())) == 2
    assert not list((tmp_path / "res" / "claims").glob("*.claim"))  # claims released
    s2 = Driver(c).run()
    assert (s2.skipped, s2.ok) == (2, 4)


@pytest.mark.slow
def test_cell_results_do_not_depend_on_the_rest_of_the_grid(tmp_path):
    big = cfg(tmp_path, methods=("mean", "ridge", "knn"), genes=(10, 20), results_dir=str(tmp_path / "big"))
    Driver(big).run()
    small = cfg(tmp_path, methods=("knn",), genes=(20,), folds=(1,), results_dir=str(tmp_path / "small"))
    Driver(small).run()
    b, s = scores(big.results_dir), scores(small.results_dir)
    assert len(s) == 1
    (cid, sc), = s.items()
    assert b[cid] == sc


@pytest.mark.slow
def test_dataset_parameter_order_does_not_make_new_cells(tmp_path):
    c = cfg(tmp_path, methods=("mean",), folds=(0,))
    Driver(c).run()
    swapped = c.replace(datasets=("synthetic:seed=3,n_genes=80,spots_per_slide=60,n_slides=3",))
    s = Driver(swapped).run()
    assert (s.ok, s.skipped) == (0, 1)


def test_stale_claim_of_a_dead_process_is_taken_over(tmp_path):
    import json

    c = cfg(tmp_path, methods=("mean",), folds=(0,))
    store = ResultsStore(c.results_dir)
    store.ensure_writable()
    from flag_bench.measure import provenance
    from flag_bench.plan import plan_grid

    (task,) = plan_grid(c, device="cpu", provenance=provenance("cpu"), results_dir=c.results_dir).tasks
    claim = store.claims / f"{task.cell.cell_id}.claim"
    claim.write_text(json.dumps({"pid": 2**22 + 12345, "host": __import__("socket").gethostname(), "time": 0}))
    s = Driver(c).run()
    assert s.ok == 1 and s.elsewhere == 0 and not claim.exists()


def test_live_claim_is_left_to_its_owner(tmp_path):
    import json
    import os
    import socket

    c = cfg(tmp_path, methods=("mean",), folds=(0, 1))
    from flag_bench.measure import provenance
    from flag_bench.plan import plan_grid

    tasks = plan_grid(c, device="cpu", provenance=provenance("cpu"), results_dir=c.results_dir).tasks
    store = ResultsStore(c.results_dir)
    store.ensure_writable()
    # a live process (the parent of this one) holds fold 0
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "time": 0}
    (store.claims / f"{tasks[0].cell.cell_id}.claim").write_text(json.dumps(holder))
    s = Driver(c).run()
    assert (s.ok, s.elsewhere) == (1, 1)


def test_corrupt_store_record_and_db_are_reported_not_deleted(tmp_path):
    c = cfg(tmp_path, methods=("mean",), folds=(0,))
    Driver(c).run()
    rec = next((tmp_path / "res" / "cells").glob("*.json"))
    rec.write_text("{truncated")
    with pytest.raises(UserError, match=rec.name):
        Driver(c).run()
    assert rec.exists()
    rec.unlink()
    db = tmp_path / "res" / "mlflow.db"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="mlflow.db"):
        Driver(c).run()
    assert db.read_bytes().startswith(b"this is not sqlite")


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="did you mean 'ridge'"):
        Driver(cfg(tmp_path, methods=("ridg",))).run()
    with pytest.raises(UserError, match="only 80 candidate genes"):
        Driver(cfg(tmp_path, genes=(100,))).run()
    with pytest.raises(UserError, match="no CUDA"):
        Driver(cfg(tmp_path, device="cuda")).run()
    with pytest.raises(UserError, match="unknown dataset"):
        Driver(cfg(tmp_path, datasets=("her2st-min",))).run()
    with pytest.raises(UserError, match="--preset huge"):
        cfg(tmp_path, preset="huge")
    with pytest.raises(UserError, match="knn"):
        Driver(cfg(tmp_path, methods=("knn",), method_overrides={"knn": {"k": "5"}})).run()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not writable"):
        Driver(cfg(tmp_path, results_dir=str(blocker / "sub"))).run()


def _synthetic_without_images(**params):
    import dataclasses

    from flag_bench.datasets.synthetic import load

    ds = load(**params)
    slides = tuple(dataclasses.replace(s, tile_reader=None) for s in ds.slides)
    return dataclasses.replace(ds, name="no-images", slides=slides)


def test_a_method_whose_needs_the_dataset_cannot_serve_fails_at_plan_time(tmp_path):
    from flag_bench.catalog import DATASETS

    class NeedsTiles(MeanControl):
        card = MethodCard(name="needs-tiles", description="test", needs=frozenset({"tiles"}), default_run=False)
        Config = MeanConfig

    METHODS.register("needs-tiles", NeedsTiles)
    DATASETS.register("no-images", _synthetic_without_images)
    try:
        with pytest.raises(UserError, match="method 'needs-tiles' needs tiles"):
            Driver(cfg(tmp_path, methods=("needs-tiles",), datasets=("no-images:n_slides=3",))).run()
        assert not (tmp_path / "res").exists()
    finally:
        METHODS.unregister("needs-tiles")
        DATASETS.unregister("no-images")


def test_atomic_write_honours_the_umask(tmp_path):
    """A results file or report is as readable as any file the user makes (mkstemp alone gives 0600)."""
    import stat

    from flag_bench import io

    p = io.atomic_write_bytes(tmp_path / "leaderboard.html", b"<html></html>")
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~io._UMASK
