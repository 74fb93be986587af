"""`flag-bench report` as a person reads it: a real 3-method x 2-G x 5-fold grid at 80 columns.

Issue 9 found headers cut to `meth…`, values to `-0.0…` and every row wrapped over five lines. The
grid here also has one failed cell (a method that raises in fit) and one planned cell whose record
was deleted (from the store and from MLflow), so the notes under the table have something to say.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flag_bench.catalog import METHODS
from flag_bench.cli import app
from flag_bench.config import RunConfig
from flag_bench.driver import Driver
from flag_bench.leaderboard import fmt
from flag_bench.leaderboard.model import TINY_WARNING, build, metric_outputs
from flag_bench.leaderboard.results import load_results
from flag_bench.methods.base import MethodCard
from flag_bench.methods.controls import MeanConfig, MeanControl
from flag_bench.store import ResultsStore

SYN = "synthetic:n_slides=5,spots_per_slide=40,n_genes=40,seed=3"
runner = CliRunner()


class Exploding(MeanControl):
    card = MethodCard(name="exploding", description="test: always fails in fit", needs=frozenset(), default_run=False)
    Config = MeanConfig

    def fit(self, train, val=None):
        raise RuntimeError("boom in fit")


def _forget(rd: Path, cell_id: str) -> None:
    """A cell as if its run had been killed before it finished: no record in the store nor MLflow."""
    from flag_bench.tracking import default_tracking_uri, open_client

    (rd / "cells" / f"{cell_id}.json").unlink()
    client = open_client(default_tracking_uri(rd))
    exps = [e.experiment_id for e in client.search_experiments()]
    for run in client.search_runs(exps, filter_string=f"tags.`flag_bench.cell_id` = '{cell_id}'"):
        client.delete_run(run.info.run_id)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    rd = tmp_path_factory.mktemp("report") / "res"
    base = dict(datasets=(SYN,), genes=(5, 10), encoder="color-stats", preset="tiny", device="cpu",
                results_dir=str(rd))
    assert Driver(RunConfig(methods=("mean", "ridge", "knn"), **base)).run().ok == 30
    METHODS.register("exploding", Exploding)
    try:
        assert len(Driver(RunConfig(methods=("exploding",), folds=(0,), **{**base, "genes": (5,)})).run().failed) == 1
    finally:
        METHODS.unregister("exploding")
    gone = next(r for r in ResultsStore(rd).records() if r.cell.method == "knn" and r.cell.n_genes == 10)
    _forget(rd, gone.cell_id)
    return {"dir": rd, "gone": gone}


def report(grid, *args, columns: int = 80):
    res = runner.invoke(app, ["report", "--results-dir", str(grid["dir"]), *args], env={"COLUMNS": str(columns)})
    assert res.exit_code == 0, res.output
    return res


def _row_lines(text: str, g: int, method: str) -> list[str]:
    return [ln for ln in text.splitlines() if re.match(rf"^\s*{g}\s+{method}†\s", ln)]


def test_80_columns_nothing_cut_no_row_wrapped(grid):
    out = report(grid, "--source", "store").stdout
    assert all(len(ln) <= 80 for ln in out.splitlines()), max(out.splitlines(), key=len)
    assert "…" not in out and "..." not in out
    lb = build(load_results(grid["dir"], source="store").frame())
    (board,) = lb.datasets
    assert [r.cells for r in board.rows].count(4) == 1  # the forgotten knn G=10 cell
    for r in board.rows:
        lines = _row_lines(out, r.n_genes, r.method)
        assert lines, (r.label, out)
        joined = " ".join(lines)
        for c in lb.columns:  # every value whole, on one of the row's lines (one line per block)
            assert fmt.compact(r.stats[c]) in joined, (r.label, c)
        assert re.search(rf"^\s*{r.n_genes}\s+{r.method}†\s+{r.cells}\s", lines[0])
    for c in lb.columns:  # MSE with its units: "MSE (log1p)↓"
        assert re.search(rf"\s{re.escape(lb.header(c, board))}[↑↓]\s", out), c
    assert "sorted by PCC↑, preset tiny; target log1p" in out


def test_legend_tiny_warning_failed_and_missing_cells(grid):
    res = report(grid, "--source", "store")
    out = " ".join(res.stdout.split())  # the legend wraps its descriptions
    for c in ("pcc_mean", "mse", "gsc", "ssc", "ssc_spot", "lee_l", "ari"):
        o = metric_outputs()[c]
        assert f"{c}, {'higher' if o.higher_is_better else 'lower'} is better: {o.description}" in out
    for c in ("gsc_frobenius", "gsc_cpm", "ssc@32"):  # recorded, not shown: described all the same
        assert f"{c}, not shown (--columns {c}): {metric_outputs()[c].description}" in out
    assert f"† {TINY_WARNING}" in res.stdout
    assert "1 planned cell never finished" in out and "knn (tiny): 1" in out
    assert grid["gone"].cell.fold in out and f"G=10 knn {grid['gone'].cell.fold}" in out
    assert "1 failed cell" in out and "in fit of method 'exploding': boom in fit" in out and "exploding (tiny)" in out
    tb = [ln for ln in res.stderr.splitlines() if "exploding" in ln and ".failed-" in ln]
    assert len(tb) == 1 and "boom in fit" in Path(tb[0].split(": ", 1)[1]).read_text()
    mlflow = report(grid, "--source", "mlflow").stderr
    assert any(ln.strip().endswith("/traceback.txt") and "exploding" in ln for ln in mlflow.splitlines())


def test_rerun_command_finishes_the_plan(grid):
    out = report(grid, "--source", "store").stdout
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("to finish them, rerun")) + 1
    cmd = []
    for ln in lines[start:]:
        cmd.append(ln.rstrip(" \\"))
        if not ln.endswith("\\"):
            break
    assert all(len(ln) <= 80 for ln in lines[start:start + len(cmd)])
    argv = shlex.split(" ".join(cmd))
    assert argv[:2] == ["flag-bench", "run"]
    opts = dict(zip(argv[2::2], argv[3::2]))
    assert opts["--results-dir"] == str(grid["dir"]) and opts["--preset"] == "tiny"
    assert opts["--genes"] == "5,10" and opts["--methods"] == "mean,ridge,knn" and opts["--encoder"] == "color-stats"


@pytest.mark.slow
def test_store_and_mlflow_print_the_same_bytes(grid):
    for args in ([], ["--format", "markdown"], ["--format", "csv"], ["--costs"], ["--ci"], ["--suite", "default"]):
        texts = [report(grid, "--source", s, *args).stdout for s in ("store", "mlflow")]
        assert texts[0] == texts[1], args
    other = [runner.invoke(app, ["report", "--results-dir", str(grid["dir"]), "--source", s, "--suite", "nope"])
             for s in ("store", "mlflow")]
    assert [r.exit_code for r in other] == [2, 2] and other[0].output == other[1].output
    assert "no finished cells in suite nope" in other[0].output


def test_costs_ci_and_wide_terminal(grid):
    out = report(grid, "--source", "store", "--costs").stdout
    assert all(len(ln) <= 80 for ln in out.splitlines()) and "…" not in out
    assert "params" in out and "fit s" in out and "peak MB" in out
    ridge = [ln for ln in out.splitlines() if re.match(r"^\s*5\s+ridge†", ln) and "params" not in ln]
    assert any(re.search(r"\s\d+\s*$", ln) and not re.search(r"\d\.0\s*$", ln) for ln in ridge)
    csv_text = report(grid, "--source", "store", "--costs", "--format", "csv").stdout
    head, *rows = csv_text.splitlines()
    k = head.split(",").index("n_parameters")
    assert any(r.split(",")[k].isdigit() for r in rows)  # an integer, not 455.0
    ci = report(grid, "--source", "store", "--ci").stdout
    assert all(len(ln) <= 80 for ln in ci.splitlines()) and re.search(r"±\d\.\d{3} \[-?\d\.\d{3},", ci)
    by_header = report(grid, "--source", "store", "--metric", "MSE", "--columns", "pcc,SSC@32").stdout
    assert "sorted by MSE (log1p)↓" in by_header and "continued" not in by_header and "GSC" not in by_header
    wide = report(grid, "--source", "store", columns=240).stdout
    assert "continued" not in wide and "95% bootstrap CI" in wide  # one block, with the CI: there is room


def test_table_to_a_file_is_a_table(grid, tmp_path):
    f = tmp_path / "board.txt"
    res = report(grid, "--source", "store", "--format", "table", "--output", str(f))
    text = f.read_text()
    assert res.stdout == "" and "─" in text and "|---|" not in text and TINY_WARNING in text
    md = report(grid, "--source", "store", "--format", "markdown").stdout
    assert "| G | method | cells | PCC ↑ |" in md and "- **PCC** ↑ (`pcc_mean`, higher is better)" in md
    assert f"rows labelled (tiny): {TINY_WARNING}" in md and "1 failed cell" in md


def test_numbers():
    assert [fmt.num(v) for v in (0.5961, -0.0001, -0.2071, 1234.56, 3.3e7)] == ["0.596", "0.000", "-0.207",
                                                                             "1235", "3.3e+07"]
    assert [fmt.cost_value("fit_seconds", v) for v in (0.0001, 0.0123, 5.9, 26.4, 123.4)] == \
        ["<0.001", "0.012", "5.90", "26.4", "123"]
    assert fmt.cost_value("n_parameters", 154495.0) == "154495"


def test_table_and_markdown_warn_of_test_informed_panels_and_pretraining_overlap(tmp_path):
    """The flags of the HTML protocol card reach the text formats too, and only when the records have them."""
    from report_demo import write_demo_store
    from typer.testing import CliRunner

    from flag_bench.cli import app

    flagged, clean = tmp_path / "flagged", tmp_path / "clean"
    write_demo_store(flagged, methods=("mean", "ridge"), genes=(20,), folds=2, side=6, test_informed=True,
                     pretraining_overlap=["HEST-1k"])
    write_demo_store(clean, methods=("mean", "ridge"), genes=(20,), folds=2, side=6, test_informed=False)
    for form in ("table", "markdown"):
        out = CliRunner().invoke(app, ["report", "--results-dir", str(flagged), "--format", form, "--source", "store"])
        assert out.exit_code == 0, out.output
        text = " ".join(out.output.split())
        assert "test-informed gene panel (2 of 2 panels" in text and "pretraining overlap" in text and "HEST-1k" in text
        out = CliRunner().invoke(app, ["report", "--results-dir", str(clean), "--format", form, "--source", "store"])
        assert out.exit_code == 0 and "test-informed" not in out.output and "pretraining overlap" not in out.output
