"""Harness overhead per cell: one `mean`-control cell on her2st-mini at G = 200, end to end.

What is timed is what the driver does for a cell besides fit and predict (the `mean` control's fit
and predict are a column mean): the fold's data views and panel, scoring with every registered
metric, the artifacts (h5ad, CSV), the atomic record write and the MLflow child run, through the
harness's own ``plan_grid``, ``run_cell`` and ``driver.persist``. The plan, the results store and the
MLflow store are made once (setup, not timed); each round computes and persists a new cell (one seed
each), so no round rewrites a finished record. ``bench_harness_overhead.py`` measures the same
thing from a whole ``Driver.run`` with the default encoder.

``extra_info`` keeps fit + predict and the overhead (round wall time minus fit + predict) per round.
"""

from __future__ import annotations

from pathlib import Path

import pytest

DATASET, GENES, METHOD = "her2st-mini", 200, "mean"
ROUNDS, WARMUP = 5, 1


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    from flag_bench.config import RunConfig
    from flag_bench.driver import code_provenance
    from flag_bench.measure import provenance
    from flag_bench.plan import plan_grid
    from flag_bench.store import ResultsStore
    from flag_bench.tracking import Tracker, default_tracking_uri

    rd = tmp_path_factory.mktemp("bench-harness") / "res"
    cfg = RunConfig(datasets=(DATASET,), methods=(METHOD,), genes=(GENES,), encoder="color-stats", device="cpu",
                    results_dir=str(rd), folds=(0,), seeds=tuple(range(ROUNDS + WARMUP)))
    prov = code_provenance(provenance("cpu"))
    plan = plan_grid(cfg, device="cpu", provenance=prov, results_dir=str(rd))
    store = ResultsStore(rd)
    with store.creation_lock():
        tracker = Tracker(default_tracking_uri(rd), rd, cfg.suite)
    parent = tracker.start_parent(plan.grid_spec, prov)
    return plan.tasks, store, tracker, parent


def test_cell_overhead(benchmark, harness):
    from flag_bench.cell import run_cell
    from flag_bench.driver import persist

    tasks, store, tracker, parent = harness
    todo = list(tasks)
    done = []

    def one_cell():
        task = todo.pop(0)
        rec = run_cell(task)
        persist(store, tracker, rec, parent)
        done.append(rec)
        return rec

    benchmark.pedantic(one_cell, rounds=ROUNDS, warmup_rounds=WARMUP)
    assert done, "no cell ran"  # under --benchmark-disable pedantic runs the function once
    for rec in done:
        assert rec.ok, rec.error
        # a constant prediction scores Pearson r = 0 by the metrics' convention (metrics/kernels.py)
        assert rec.scores["pcc_mean"] == 0.0
        assert store.finished(rec.cell_id) is not None
        assert store.logged_run_id(rec.cell_id, tracker.uri), "no MLflow child run marked"
        assert (Path(store.artifact_dir(rec.cell_id)) / "predictions.h5ad").is_file()
    timed = done[WARMUP:] or done
    benchmark.extra_info["fit_predict_seconds_max"] = max(r.costs["fit_seconds"] + r.costs["predict_seconds"]
                                                          for r in timed)
    benchmark.extra_info["overhead_seconds_in_record"] = [r.costs["overhead_seconds"] for r in timed]
