"""End-to-end grid behaviour on the synthetic dataset (CPU, seconds)."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from flag_bench.catalog import METHODS
from flag_bench.config import RunConfig
from flag_bench.errors import UserError
from flag_bench.methods.controls import MeanControl, MeanConfig
from flag_bench.methods.base import MethodCard
from flag_bench.runner import Runner
from flag_bench.store import ResultsStore

SYN = "synthetic:n_slides=3,spots_per_slide=60,n_genes=80,seed=3"


def cfg(tmp_path, **kw):
    base = dict(datasets=(SYN,), methods=("mean", "ridge"), genes=(10,), encoder="color-stats",
                preset="tiny", device="cpu", results_dir=str(tmp_path / "res"))
    base.update(kw)
    return RunConfig(**base)


def scores(results_dir):
    return {r["cell_id"]: r["scores"] for r in ResultsStore(results_dir).records()}


class Exploding(MeanControl):
    card = MethodCard(name="exploding", description="test: always fails in fit", needs=frozenset(), default_run=False)
    Config = MeanConfig

    def fit(self, train, val=None):
        raise RuntimeError("boom")


@pytest.fixture
def exploding():
    METHODS.register("exploding", Exploding)
    yield
    METHODS.unregister("exploding")


def test_grid_runs_logs_and_resumes(tmp_path):
    c = cfg(tmp_path)
    s = Runner(c).run()
    assert (s.ok, s.skipped, s.failed, s.exit_code) == (6, 0, [], 0)  # 2 methods x 3 folds
    recs = list(ResultsStore(c.results_dir).records())
    assert len(recs) == 6
    r = recs[0]
    for key in ("pcc_mean", "pcc_top10", "pcc_top50", "mse", "mae", "pcc_pooled"):
        assert key in r["scores"]
    for key in ("fit_seconds", "predict_seconds", "peak_rss_mb", "overhead_seconds"):
        assert r["costs"][key] >= 0
    assert r["provenance"]["packages"]["torch"] and r["panel"]["panel_id"]
    # artifacts: per-gene CSV, predictions with barcodes and gene names
    import anndata as ad

    art = tmp_path / "res" / "artifacts" / r["cell_id"]
    a = ad.read_h5ad(art / "predictions.h5ad")
    assert list(a.var_names) == r["panel"]["genes"] and "barcode" in a.obs
    assert (art / "per_gene_metrics.csv").read_text().startswith("slide,gene,")
    # MLflow: one parent + 6 child runs, tagged with cell ids
    db = sqlite3.connect(tmp_path / "res" / "mlflow.db")
    n_cells = db.execute("select count(*) from tags where key='flag_bench.cell_id'").fetchone()[0]
    assert n_cells == 6
    # rerun: nothing recomputed
    s2 = Runner(c).run()
    assert (s2.ok, s2.skipped) == (0, 6)
    # --force recomputes and gives identical numbers (same seed, same device)
    before = scores(c.results_dir)
    s3 = Runner(c.replace(force=True)).run()
    assert s3.ok == 6 and scores(c.results_dir) == before


def test_mean_control_scores_zero_and_ridge_beats_it(tmp_path):
    c = cfg(tmp_path, datasets=("synthetic:n_slides=4,spots_per_slide=120,n_genes=60,image_signal=1.0,seed=1",))
    Runner(c).run()
    by = {}
    for r in ResultsStore(c.results_dir).records():
        by.setdefault(r["cell"]["method"], []).append(r["scores"]["pcc_mean"])
    assert np.allclose(by["mean"], 0.0)
    assert np.mean(by["ridge"]) > 0.2


def test_failing_cell_is_recorded_and_grid_continues(tmp_path, exploding):
    c = cfg(tmp_path, methods=("exploding", "mean"))
    s = Runner(c).run()
    assert s.ok == 3 and len(s.failed) == 3 and s.exit_code == 1
    failed = [r for r in ResultsStore(c.results_dir).records(include_failed=True) if r["status"] == "failed"]
    assert len(failed) == 3 and "boom" in failed[0]["error"]["traceback"]
    assert "exploding" in failed[0]["error"]["message"]
    # fail-fast stops after the first failure
    s2 = Runner(c.replace(results_dir=str(tmp_path / "ff"), fail_fast=True)).run()
    assert len(s2.failed) == 1 and s2.ok == 0


def test_interrupt_keeps_finished_cells_and_resume(tmp_path):
    c = cfg(tmp_path)
    seen = []

    def stop_after_two(rec):
        seen.append(rec["cell_id"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    s = Runner(c, after_cell=stop_after_two).run()
    assert s.interrupted and s.exit_code == 130
    assert len(list(ResultsStore(c.results_dir).records())) == 2
    s2 = Runner(c).run()
    assert (s2.skipped, s2.ok) == (2, 4)


def test_cell_results_do_not_depend_on_the_rest_of_the_grid(tmp_path):
    big = cfg(tmp_path, methods=("mean", "ridge", "knn"), genes=(10, 20), results_dir=str(tmp_path / "big"))
    Runner(big).run()
    small = cfg(tmp_path, methods=("knn",), genes=(20,), folds=(1,), results_dir=str(tmp_path / "small"))
    Runner(small).run()
    b, s = scores(big.results_dir), scores(small.results_dir)
    assert len(s) == 1
    (cid, sc), = s.items()
    assert b[cid] == sc


def test_corrupt_store_record_and_db_are_reported_not_deleted(tmp_path):
    c = cfg(tmp_path, methods=("mean",), folds=(0,))
    Runner(c).run()
    rec = next((tmp_path / "res" / "cells").glob("*.json"))
    rec.write_text("{truncated")
    with pytest.raises(UserError, match=rec.name):
        Runner(c).run()
    assert rec.exists()
    rec.unlink()
    db = tmp_path / "res" / "mlflow.db"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="mlflow.db"):
        Runner(c).run()
    assert db.read_bytes().startswith(b"this is not sqlite")


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="did you mean 'ridge'"):
        Runner(cfg(tmp_path, methods=("ridg",))).run()
    with pytest.raises(UserError, match="only 80 candidate genes"):
        Runner(cfg(tmp_path, genes=(100,))).run()
    with pytest.raises(UserError, match="no CUDA"):
        Runner(cfg(tmp_path, device="cuda")).run()
    with pytest.raises(UserError, match="unknown dataset"):
        Runner(cfg(tmp_path, datasets=("her2st-min",))).run()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not writable"):
        Runner(cfg(tmp_path, results_dir=str(blocker / "sub"))).run()
