"""What a cell's MLflow run holds (R5: method hyper-parameters as params), the batch caps, failed
cells, per-configuration curves on the parent run, and experiment creation racing another process."""

from __future__ import annotations

import math

import test_results_api

# the shared module fixture (store + MLflow); bound by assignment, not imported, so the tests'
# `grid` parameters do not read as redefinitions of an unused import
grid = test_results_api.grid


def _run(grid, rec):
    from flag_bench.tracking import experiment_name

    client = grid["tracker"].client
    exp = client.get_experiment_by_name(experiment_name(rec.protocol["suite"]))
    runs = client.search_runs([exp.experiment_id], f"tags.`flag_bench.cell_id` = '{rec.cell_id}'")
    return client, runs[0]


def test_method_config_fields_are_params_and_summary_is_tags(grid):
    rec = next(r for r in grid["records"] if r.method.overrides == {"k": 50})
    client, run = _run(grid, rec)
    p, tags, m = run.data.params, run.data.tags, run.data.metrics
    assert p["method.k"] == "50" and p["method.weights"] == "distance"
    assert p["method"] == "knn" and p["config_label"] == "small k=50" and p["panel_id"] == rec.panel.panel_id
    assert p["fold"] == rec.cell.fold and p["device"] == "cpu" and '"suite": "default"' in p["protocol"]
    assert tags["summary.epochs"] == "3" and tags["summary.stopped_at_"] == "early"
    assert not any(k.startswith("summary.") for k in p)
    assert math.isnan(m["ari_annot"]) and m["ssc_at_32"] == rec.scores["ssc@32"]
    assert m[f"slide.{rec.cell.fold_test[0]}.pcc_mean"] == rec.scores_per_slide[rec.cell.fold_test[0]]["pcc_mean"]
    (point,) = client.get_metric_history(run.info.run_id, "pcc_mean")
    assert point.step == rec.cell.n_genes and run.info.status == "FINISHED"
    assert {"per_gene_metrics.csv", "record.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_every_batch_cap_is_respected(grid):
    rec = grid["huge"]
    _, run = _run(grid, rec)
    assert sum(k.startswith("method.") for k in run.data.params) == 150
    assert sum(k.startswith("summary.") for k in run.data.tags) == 120
    assert sum(k.startswith("c") and k[1:].isdigit() for k in run.data.metrics) == 900
    assert run.data.tags["flag_bench.row_source"] == "params"


def test_a_value_over_mlflow_limits_is_read_from_record_json(grid):
    _, run = _run(grid, grid["long"])
    assert run.data.tags["flag_bench.row_source"] == "record.json"
    assert len(run.data.params["protocol"]) <= 6000


def test_failed_cell_has_error_tag_and_traceback(grid):
    client, run = _run(grid, grid["failed"])
    assert run.info.status == "FAILED" and run.data.tags["flag_bench.status"] == "failed"
    assert run.data.tags["flag_bench.error"] == "boom in fit" and run.data.tags["flag_bench.error_stage"] == "fit"
    text = client.download_artifacts(run.info.run_id, "traceback.txt", str(grid["dir"] / "tb"))
    assert "RuntimeError: boom" in open(text).read()


def test_curves_on_the_parent_run_are_per_configuration(grid):
    client = grid["tracker"].client
    parent = client.get_run(grid["parent"])
    keys = [k for k in parent.data.metrics if k.startswith("curve.") and k.endswith(".knn.pcc_mean")]
    assert len(keys) == 3  # small, small k=50, tiny: never one mean over them
    for k in keys:
        assert sorted(m.step for m in client.get_metric_history(parent.info.run_id, k)) == [5, 10]
    labels = {v for k, v in parent.data.tags.items() if k.startswith("curve_label.knn.")}
    assert labels == {"knn (small)", "knn (small k=50)", "knn (tiny)"}


def test_experiment_created_meanwhile_by_another_process_is_reused(grid):
    from flag_bench.tracking import Tracker, _experiment_id, experiment_name

    client = grid["tracker"].client
    name = experiment_name("default")

    class Late:  # the lookup misses the experiment another process creates just after
        def __init__(self):
            self.first = True

        def get_experiment_by_name(self, n):
            if self.first:
                self.first = False
                return None
            return client.get_experiment_by_name(n)

        def create_experiment(self, n, artifact_location):
            return client.create_experiment(n, artifact_location=artifact_location)

    assert _experiment_id(Late(), name, "file:///nowhere") == grid["tracker"].experiment_id
    assert Tracker(grid["uri"], grid["dir"], "default").experiment_id == grid["tracker"].experiment_id
