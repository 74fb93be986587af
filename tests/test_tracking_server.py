"""A real `mlflow server` with a PostgreSQL backend on loopback (tests/services.py starts both):
a grid logs to it (parent, children, params, metrics at step = G, artifacts), the report reads
from it, and killing the server mid-grid loses nothing once sync-tracking has run."""

from __future__ import annotations

from collections import Counter

import pytest
from typer.testing import CliRunner

from flag_bench.config import RunConfig
from flag_bench.driver import Driver
from flag_bench.store import ResultsStore

pytest_plugins = [__name__.rpartition(".")[0] + ".services" if "." in __name__ else "services"]
pytestmark = pytest.mark.slow

SYN = "synthetic:n_slides=3,spots_per_slide=60,n_genes=80,seed=3"
BASE = dict(datasets=(SYN,), methods=("mean", "ridge"), genes=(10,), encoder="color-stats", preset="tiny",
            device="cpu")


def _cli(*argv):
    from flag_bench.cli import app

    return CliRunner().invoke(app, list(argv))


def _cell_runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, "tags.`flag_bench.level` = 'cell'", max_results=1000)
    return client, [r for r in runs if r.info.status == "FINISHED"]


def test_server_down_mid_grid_then_sync_logs_every_cell_once(mlflow_server, tmp_path):
    rd = tmp_path / "res"
    seen = []

    def kill_after_two(rec):
        seen.append(rec.cell_id)
        if len(seen) == 2:
            mlflow_server.stop()

    s = Driver(RunConfig(**BASE, results_dir=str(rd), tracking_uri=mlflow_server.uri), after_cell=kill_after_two).run()
    assert s.ok == 6 and not s.failed  # the grid finished; logging failures were warnings
    assert s.tracking_offline
    store = ResultsStore(rd)
    assert len(list(store.records())) == 6
    assert sum(store.logged_run_id(c, mlflow_server.uri) is not None for c in seen) == 2

    mlflow_server.start()
    _, runs = _cell_runs(mlflow_server.uri)
    assert sorted(r.data.tags["flag_bench.cell_id"] for r in runs) == sorted(seen[:2])
    r = _cli("sync-tracking", "--results-dir", str(rd), "--tracking-uri", mlflow_server.uri)
    assert r.exit_code == 0 and "logged 4 cell(s)" in r.output, r.output
    again = _cli("sync-tracking", "--results-dir", str(rd), "--tracking-uri", mlflow_server.uri)
    assert again.exit_code == 0 and "logged 0 cell(s)" in again.output, again.output

    client, runs = _cell_runs(mlflow_server.uri)
    per_cell = Counter(r.data.tags["flag_bench.cell_id"] for r in runs)
    assert set(per_cell) == {rec.cell_id for rec in store.records()} and set(per_cell.values()) == {1}
    # params, metrics at step = G and artifacts reached the server (its artifact store)
    run = runs[0]
    assert run.data.params["method"] in ("mean", "ridge")
    history = client.get_metric_history(run.info.run_id, "pcc_mean")
    assert [m.step for m in history] == [10]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "record.json" in names
    assert any(mlflow_server.artifacts.rglob("record.json"))
    # parents: the interrupted invocation's parent exists on the server
    parents = client.search_runs([run.info.experiment_id], "tags.`flag_bench.level` = 'invocation'")
    assert len(parents) == 1

    rep = _cli("report", "--results-dir", str(rd), "--source", "mlflow", "--tracking-uri", mlflow_server.uri,
               "--format", "csv")
    assert rep.exit_code == 0, rep.output
    lines = [ln for ln in rep.output.splitlines() if ln.strip()]
    assert sum(ln.split(",")[0] != "dataset" and ("mean" in ln or "ridge" in ln) for ln in lines) >= 2, rep.output


def test_grid_logs_to_the_server_with_parent_and_children(mlflow_server, tmp_path):
    rd = tmp_path / "res"
    s = Driver(RunConfig(**{**BASE, "methods": ("mean",)}, results_dir=str(rd), tracking_uri=mlflow_server.uri)).run()
    assert s.ok == 3 and not s.tracking_offline
    client, runs = _cell_runs(mlflow_server.uri)
    mine = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == s.parent_run_id]
    assert len(mine) == 3
    parent = client.get_run(s.parent_run_id)
    assert parent.info.status == "FINISHED" and any(k.startswith("curve.") for k in parent.data.metrics)
    # the experiment stores artifacts through the server, not in a local path of this machine
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.artifact_location.startswith("mlflow-artifacts:")
