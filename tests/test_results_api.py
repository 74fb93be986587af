"""The results API over a real results store and a real MLflow SQLite store holding the same cells.

Synthetic CellRecords (mean; knn in three configurations: small, small with k=50, tiny; two panel
sizes; three folds; a NaN and an infinite score; a failed ridge cell; a cell that failed and then
finished; a cell logged twice) go through ResultsStore.write and Tracker.log_record, then both
sources must give the same frame, per-slide scores, curves and reports, text for text.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from flag_bench.grid import Cell
from flag_bench.hashing import short_hash
from flag_bench.record import CellRecord, ErrorInfo, MethodInfo, PanelInfo
from flag_bench.spec import ReportFormat, ResultSource

SLIDES = ("S0", "S1", "S2")
GENES = (5, 10)
KNN = {"small": {"k": 5, "weights": "distance"}, "tiny": {"k": 3, "weights": "distance"}}


def protocol(suite: str = "default", **extra) -> dict:
    return {"protocol_version": "p1", "suite": suite, "target_transform": "log1p", "split": "slide",
            "split_description": "leave one slide out", "patient_overlap": False, "panel_selector": "hmhvg",
            "encoder": "color-stats", "patch": "112 um", "pcc_aggregation": "mean over genes", **extra}


def make_record(method: str, preset: str, config: dict, g: int, fold: int, *, overrides=None, status="ok",
                suite="default", seed=0, protocol_extra=None) -> CellRecord:
    test = SLIDES[fold]
    cell = Cell(dataset="synthetic", dataset_spec="synthetic:n_genes=50", dataset_version="v1", n_genes=g,
                panel="hmhvg", panel_params=(("flavor", "seurat"),), method=method, preset=preset,
                config_hash=short_hash({"method": method, "config": config}), split="slide", fold=f"fold{fold}",
                fold_train=tuple(s for s in SLIDES if s != test), fold_val=(), fold_test=(test,), seed=seed,
                target_transform="log1p", encoder="color-stats", patch="112um")
    rng = np.random.default_rng(int(short_hash([method, preset, config, g, fold, seed]), 16))
    scores = {"pcc_mean": float(rng.uniform(0.3, 0.6)), "mse": float(rng.uniform(0.5, 2.0)),
              "gsc": float(rng.uniform(0, 1)), "ssc": float(rng.uniform(0, 1)), "ssc@32": float(rng.uniform(0, 1)),
              "ari": float(rng.uniform(0, 1)), "ari_annot": math.nan, "rvd": float(rng.uniform(0, 3))}
    per_slide = {test: {k: v for k, v in scores.items() if k != "rvd"}}
    info = MethodInfo(method, preset, config, overrides or {}, {"name": method}, {"epochs": 3, "stopped@": "early"})
    base = dict(cell=cell, method=info, protocol=protocol(suite, **(protocol_extra or {})),
                provenance={"git_commit": "abc"}, device="cpu", started="2026-01-01T00:00:00+0000",
                finished=f"2026-01-01T00:{g:02d}:{fold:02d}+0000",
                panel=PanelInfo(f"panel-{g}-{fold}", tuple(f"G{i}" for i in range(g)), "hmhvg", cell.fold_train))
    if status == "failed":
        return CellRecord(status="failed", error=ErrorInfo("fit", "RuntimeError", "boom in fit\nsecond line",
                                                           "Traceback (most recent call last):\nRuntimeError: boom"),
                          **base)
    costs = {"fit_seconds": 0.25 + fold, "predict_seconds": 0.125, "peak_rss_mb": 100.5,
             "n_parameters": None if method == "mean" else 1000 * g, "overhead_seconds": 0.5}
    return CellRecord(status="ok", scores=scores, scores_per_slide=per_slide, costs=costs, **base)


def write_artifacts(store, rec: CellRecord, h5ad: bool) -> None:
    import anndata as ad

    out = store.artifact_dir(rec.cell_id)
    out.mkdir(parents=True, exist_ok=True)
    genes = list(rec.panel.genes)
    pd.DataFrame({"slide": rec.cell.fold_test[0], "gene": genes, "pcc": np.linspace(0, 1, len(genes))}
                 ).to_csv(out / "per_gene_metrics.csv", index=False)
    if h5ad:
        x = np.arange(4 * len(genes), dtype=np.float32).reshape(4, len(genes))
        obs = pd.DataFrame({"slide": ["S0"] * 4, "barcode": [f"b{i}" for i in range(4)]}, index=[f"S0:b{i}" for i in range(4)])
        a = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=genes))
        a.layers["truth"] = x + 1
        a.obsm["spatial"] = np.zeros((4, 2))
        a.write_h5ad(out / "predictions.h5ad")


def default_records() -> list[CellRecord]:
    recs = []
    for g in GENES:
        for fold in range(3):
            recs.append(make_record("mean", "small", {}, g, fold))
            recs.append(make_record("knn", "small", KNN["small"], g, fold))
            recs.append(make_record("knn", "small", {**KNN["small"], "k": 50}, g, fold, overrides={"k": 50}))
            recs.append(make_record("knn", "tiny", KNN["tiny"], g, fold))
    recs[1] = _with_score(recs[1], "ssc", math.nan)
    recs[2] = _with_score(recs[2], "rvd", math.inf)
    return recs


def big_record() -> CellRecord:
    """Over every MLflow batch cap: 150 config fields, 120 summary entries, 900 extra costs."""
    import dataclasses

    rec = make_record("ridge", "small", {f"f{i}": i / 7 for i in range(150)}, 20, 0, suite="other")
    info = dataclasses.replace(rec.method, summary={f"s{i}": [i] for i in range(120)})
    return dataclasses.replace(rec, method=info, costs={**rec.costs, **{f"c{i}": float(i) for i in range(900)}})


def _with_score(rec: CellRecord, name: str, value: float) -> CellRecord:
    import dataclasses

    return dataclasses.replace(rec, scores={**rec.scores, name: value})


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    from flag_bench.store import ResultsStore
    from flag_bench.tracking import Tracker, default_tracking_uri

    rd = tmp_path_factory.mktemp("results")
    store, uri = ResultsStore(rd), default_tracking_uri(rd)
    with store.creation_lock():
        tracker = Tracker(uri, rd, "default")
    other = Tracker(uri, rd, "other")
    parent = tracker.start_parent({"genes": list(GENES)}, {"git_commit": "abc", "packages": {}})
    recs = default_records()
    retried = make_record("mean", "small", {}, 5, 0, status="failed")  # failed first, finished later
    failed = make_record("ridge", "small", {"alpha": 1.0}, 5, 0, status="failed")
    for rec in [retried, *recs[:-1], failed]:
        store.write(rec)
        if rec.ok:
            write_artifacts(store, rec, h5ad=rec is recs[0])
        run_id = tracker.log_record(rec, store.artifact_dir(rec.cell_id) if rec.ok else None, parent)
        if rec.ok:
            store.mark_logged(rec.cell_id, uri, run_id)
    tracker.log_record(recs[3], store.artifact_dir(recs[3].cell_id), None)  # a cell logged twice
    store.write(recs[-1])  # finished, but the run died before MLflow: sync logs it
    synced = [tracker.sync(store), tracker.sync(store)]
    tracker.log_curves(parent, recs)
    tracker.end_parent(parent, "FINISHED")
    huge = big_record()
    # the suite is not part of a cell's identity: suite "other" gets cells of its own
    long_protocol = make_record("mean", "small", {}, 20, 1, suite="other", protocol_extra={"note": "x" * 7000})
    for rec in (huge, long_protocol):
        store.write(rec)
        other.log_record(rec, None, None)
    return {"dir": rd, "uri": uri, "records": recs, "failed": failed, "synced": synced, "parent": parent,
            "huge": huge, "long": long_protocol, "tracker": tracker}


@pytest.fixture(scope="module")
def both(grid):
    from flag_bench.leaderboard.results import load_results

    return {s: load_results(grid["dir"], source=s, suite="default") for s in (ResultSource.STORE, ResultSource.MLFLOW)}


def test_store_and_mlflow_give_the_same_frame(both, grid):
    store, mlflow = both[ResultSource.STORE], both[ResultSource.MLFLOW]
    assert (store.source, mlflow.source) == (ResultSource.STORE, ResultSource.MLFLOW)
    df = store.frame()
    assert_frame_equal(df, mlflow.frame())
    assert len(df) == len(grid["records"]) and df["cell_id"].is_unique  # the twice-logged cell counts once
    assert {"ssc@32", "ari_annot"} <= set(df.columns) and df["ari_annot"].isna().all()
    assert df["ssc"].isna().sum() == 1 and np.isinf(df["rvd"]).sum() == 1
    assert df["n_genes"].dtype == np.int64 and df["n_parameters"].dtype == np.float64  # mean has no count
    assert list(df.columns[:3]) == ["dataset", "dataset_spec", "n_genes"] and df.columns[-1] == "n_parameters"
    assert "overhead_seconds" not in df.columns  # costs outside COST_COLUMNS are MLflow-only
    assert_frame_equal(store.per_slide(), mlflow.per_slide())
    assert_frame_equal(store.curves("ssc@32"), mlflow.curves("ssc@32"))
    assert grid["synced"] == [1, 0]


def test_reports_are_identical_text_from_both_sources(both):
    from flag_bench.leaderboard.model import build
    from flag_bench.leaderboard.render import RENDERERS, render

    for fmt in RENDERERS:  # html/png/svg draw artifacts too: tests/test_report_html.py
        for metric in ("pcc_mean", "mse"):
            texts = [render(build(r.frame(), metric=metric), fmt, width=200) for r in both.values()]
            assert texts[0] == texts[1], fmt
    table = render(build(both[ResultSource.STORE].frame()), ReportFormat.TABLE, width=200)
    assert "─" in table and "|---|" not in table  # a table, not markdown


def test_finish_times_and_panel_stats_agree_across_sources(both, grid):
    store, mlflow = both[ResultSource.STORE], both[ResultSource.MLFLOW]
    by_id = {r.cell_id: r for r in grid["records"]}
    for cid in store.frame()["cell_id"]:
        assert store.finished_at(cid) == mlflow.finished_at(cid) == by_id[cid].finished
        assert store.panel_stats(cid) == mlflow.panel_stats(cid) == dict(by_id[cid].panel.stats)


def test_each_knn_configuration_is_its_own_row(both, grid):
    from flag_bench.leaderboard.model import build

    lb = build(both[ResultSource.MLFLOW].frame(), metric="pcc_mean")
    (board,) = lb.datasets
    knn5 = {r.label: r for r in board.rows if r.method == "knn" and r.n_genes == 5}
    assert sorted(knn5) == ["knn (small k=50)", "knn (small)", "knn (tiny)"]
    for label, row in knn5.items():
        want = [r.scores["pcc_mean"] for r in grid["records"]
                if r.cell.method == "knn" and r.cell.n_genes == 5 and f"knn ({r.method.label})" == label]
        assert row.cells == 3 and row.stats["pcc_mean"].mean == pytest.approx(np.mean(want))
    means = [r.stats["pcc_mean"].mean for r in board.rows if r.n_genes == 5]
    assert means == sorted(means, reverse=True)  # higher is better: best first
    mse = [r.stats["mse"].mean for r in build(both[ResultSource.STORE].frame(), metric="mse").datasets[0].rows
           if r.n_genes == 5]
    assert mse == sorted(mse)  # lower is better


def test_curves_are_per_configuration(both, grid):
    from flag_bench.leaderboard.model import build

    cur = both[ResultSource.STORE].curves("pcc_mean")
    assert len(cur) == 4 * len(GENES) and set(cur["n"]) == {3}
    tiny = cur[(cur.method == "knn") & (cur.config_label == "tiny") & (cur.n_genes == 10)].iloc[0]
    vals = [r.scores["pcc_mean"] for r in grid["records"]
            if r.cell.preset == "tiny" and r.cell.n_genes == 10]
    assert tiny["mean"] == pytest.approx(np.mean(vals)) and tiny["std"] == pytest.approx(np.std(vals, ddof=1))
    (board,) = build(both[ResultSource.STORE].frame()).datasets
    assert board.genes == GENES and len(board.curve) == 4
    ssc = both[ResultSource.STORE].curves("ssc")  # the NaN cell is left out of its mean, and counted out
    assert sorted(ssc["n"]) == [2] + [3] * (len(ssc) - 1)


def test_same_label_two_configs_get_the_short_hash():
    from flag_bench.leaderboard.model import config_labels
    from flag_bench.leaderboard.results import results_frame

    a = make_record("knn", "small", {"k": 5}, 5, 0)
    b = make_record("knn", "small", {"k": 7}, 5, 1)  # another config, same preset, no override named
    labels = config_labels(results_frame([a.to_row(), b.to_row()]))
    assert len(set(labels.values())) == 2
    assert all(v.startswith("knn (small) #") for v in labels.values())


def test_per_gene_and_predictions_round_trip_from_both_sources(both, grid):
    rec = grid["records"][0]
    for res in both.values():
        pg = res.per_gene(rec.cell_id)
        assert list(pg.columns) == ["slide", "gene", "pcc"] and len(pg) == rec.cell.n_genes
        ad = res.predictions(rec.cell_id)
        assert ad.shape == (4, rec.cell.n_genes) and np.array_equal(ad.layers["truth"], ad.X + 1)
    from flag_bench.errors import UserError

    with pytest.raises(UserError, match="predictions.h5ad"):
        both[ResultSource.STORE].predictions(grid["records"][1].cell_id)
    with pytest.raises(UserError, match="not a finished cell"):
        both[ResultSource.MLFLOW].per_gene(grid["failed"].cell_id)


def test_failed_cells_are_listed_with_error_and_traceback(both, grid):
    from pathlib import Path

    store, mlflow = both[ResultSource.STORE].failed(), both[ResultSource.MLFLOW].failed()
    assert list(store["cell_id"]) == [grid["failed"].cell_id]  # the retried mean cell finished: not listed
    assert_frame_equal(store.drop(columns="traceback"), mlflow.drop(columns="traceback"))
    row = store.iloc[0]
    assert row["error"] == "boom in fit" and row["stage"] == "fit" and row["method"] == "ridge"
    assert "RuntimeError: boom" in Path(row["traceback"]).read_text()
    assert mlflow.iloc[0]["traceback"].endswith("/traceback.txt")


def test_suite_means_the_same_for_both_sources(grid):
    from flag_bench.leaderboard.results import load_results

    other = [load_results(grid["dir"], source=s, suite="other") for s in (ResultSource.STORE, ResultSource.MLFLOW)]
    assert_frame_equal(other[0].frame(), other[1].frame())  # one row read from record.json (long protocol)
    assert_frame_equal(other[0].per_slide(), other[1].per_slide())
    assert len(other[0].frame()) == 2
    every = [load_results(grid["dir"], source=s) for s in (ResultSource.STORE, ResultSource.MLFLOW)]
    assert_frame_equal(every[0].frame(), every[1].frame())
    assert len(every[0].frame()) == len(grid["records"]) + 2


def test_auto_source_and_errors(grid, tmp_path):
    from flag_bench.errors import UserError
    from flag_bench.leaderboard.model import build
    from flag_bench.leaderboard.results import load_results

    assert load_results(grid["dir"]).source is ResultSource.MLFLOW
    with pytest.raises(UserError, match="no results here"):
        load_results(tmp_path, source="store")
    with pytest.raises(UserError, match="no mlflow.db"):
        load_results(tmp_path, source="mlflow")
    with pytest.raises(UserError, match="--source nope"):
        load_results(grid["dir"], source="nope")
    res = load_results(grid["dir"], source="store")
    with pytest.raises(UserError, match="--metric nope: no such score"):
        build(res.frame(), metric="nope")
    with pytest.raises(UserError, match="--columns: zzz"):
        build(res.frame(), columns=["zzz"])
    with pytest.raises(UserError, match="no finished cells"):
        build(res.frame().iloc[:0])
