"""The Gene-Dimension-Curse sweep through the command line: the diffusion family over several
panel sizes on `synthetic`, curves in MLflow at step = G, and the metric-vs-G table in the report."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flag_bench.cli import app

SYN = "synthetic:n_slides=3,spots_per_slide=60,n_genes=80,seed=3"
METHODS = ("flag", "flag-joint", "stem")
GENES = (5, 10, 20)


@pytest.mark.slow
def test_diffusion_sweep_logs_curves_and_reports_metric_vs_g(tmp_path):
    from mlflow.tracking import MlflowClient

    rd = tmp_path / "r"
    res = CliRunner().invoke(app, [
        "run", "--datasets", SYN, "--encoder", "color-stats", "--preset", "tiny", "--device", "cpu",
        "--no-progress", "--results-dir", str(rd), "--folds", "0",
        "--methods", ",".join(METHODS), "--genes", ",".join(map(str, GENES))])
    assert res.exit_code == 0, res.output
    assert f"{len(METHODS) * len(GENES)} computed" in res.output and "0 failed" in res.output

    client = MlflowClient(f"sqlite:///{rd}/mlflow.db")
    (exp,) = [e for e in client.search_experiments() if e.name.startswith("flag-bench/default/")]
    runs = client.search_runs([exp.experiment_id])
    cells = [r for r in runs if r.data.tags.get("flag_bench.level") == "cell"]
    (parent,) = [r for r in runs if r.data.tags.get("flag_bench.level") == "invocation"]
    assert len(cells) == len(METHODS) * len(GENES)
    for r in cells:  # each cell's scores sit at step = its panel size
        (m,) = client.get_metric_history(r.info.run_id, "pcc_mean")
        assert m.step == int(r.data.params["n_genes"])
    for method in METHODS:
        (key,) = [k for k in parent.data.metrics if k.startswith("curve.") and k.endswith(f".{method}.pcc_mean")]
        assert sorted(m.step for m in client.get_metric_history(parent.info.run_id, key)) == list(GENES)

    res = CliRunner().invoke(app, ["report", "--results-dir", str(rd), "--format", "markdown"])
    assert res.exit_code == 0, res.output
    curve = res.output[res.output.index("Gene-Dimension-Curse"):]
    header = next(line for line in curve.splitlines() if line.startswith("|"))
    assert all(f"G={g} " in header for g in GENES), header
    for method in METHODS:
        assert any(line.startswith(f"| {method} (tiny) |") for line in curve.splitlines()), curve
