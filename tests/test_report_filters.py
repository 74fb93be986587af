"""--datasets, --methods, --genes, --split, --suite and --since narrow every report format the same way, and
a value matching nothing is a one-line error, not an empty report."""

from __future__ import annotations

import csv
import io

import pytest
from typer.testing import CliRunner

from flag_bench.cli import app
from flag_bench.leaderboard.filters import make_filter
from report_demo import write_demo_store
from flag_bench.store import ResultsStore

runner = CliRunner()


@pytest.fixture(scope="module")
def rd(tmp_path_factory):
    root = tmp_path_factory.mktemp("filters") / "res"
    # three folds finish on 2026-01-01, -02 and -03 (the demo's record times)
    write_demo_store(root, methods=("mean", "ridge", "flag"), genes=(20, 50), folds=3, side=8)
    ResultsStore(root).write_plan({"datasets": ["demo"], "methods": ["knn"], "genes": [20], "preset": "tiny"},
                                  [{"cell_id": "feedfeedfeedfeed", "dataset": "demo", "method": "knn", "n_genes": 20,
                                    "preset": "tiny", "fold": "test=S01", "seed": 0,
                                    "description": "demo G=20 knn test=S01 seed=0"}])
    return str(root)


def _csv(rd, *args):
    res = runner.invoke(app, ["report", "--results-dir", rd, "--format", "csv", *args])
    assert res.exit_code == 0, res.output
    return list(csv.DictReader(io.StringIO(res.stdout)))


def _one_line_error(res, *needles):
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    for n in needles:
        assert n in lines[0], lines[0]


def test_unfiltered_baseline(rd):
    rows = _csv(rd)
    assert {(r["method"], r["n_genes"]) for r in rows} == {(m, g) for m in ("mean", "ridge", "flag")
                                                          for g in ("20", "50")}
    assert {r["cells"] for r in rows} == {"3"}


def test_methods_and_genes(rd):
    rows = _csv(rd, "--methods", "ridge,flag", "--genes", "20")
    assert {(r["method"], r["n_genes"]) for r in rows} == {("ridge", "20"), ("flag", "20")}


def test_split_keeps_that_split_kind_and_planned_cells_of_unknown_split(rd):
    assert len(_csv(rd, "--split", "slide")) == 6
    flt = make_filter(splits=["patient"])
    assert flt.keep("d", "d", "m", 20, "", "patient") and not flt.keep("d", "d", "m", 20, "", "slide")
    assert flt.keep("d", "d", "m", 20, None, None)  # a planned cell of a --split default grid
    assert flt.describe() == "split patient"
    assert len(_csv(rd, "--encoder", "color-stats")) == 6
    assert not make_filter(encoders=["uni"]).keep("d", "d", "m", 20, "", "slide", "color-stats")


def test_a_board_pooling_two_split_kinds_says_so():
    import pandas as pd

    from flag_bench.leaderboard.flags import dataset_flags

    g = pd.DataFrame({"protocol": ["{}", "{}"], "panel_id": ["p", "p"], "cell_id": ["a", "b"],
                      "method": ["ridge", "ridge"], "split": ["slide", "patient"]})
    res = type("R", (), {"panel_stats": lambda self, cell_id: {}})()
    assert dataset_flags(res, g) == ("folds of 2 split kinds (patient, slide) pooled in one mean: "
                                     "report each with --split patient",)
    assert dataset_flags(res, g.iloc[:1]) == ()
    g = g.assign(split="slide", encoder=["color-stats", "uni"])
    assert dataset_flags(res, g) == ("cells of 2 image encoders (color-stats, uni) pooled in one row per method "
                                     "configuration: report each with --encoder color-stats",)


def test_datasets_by_name_or_spec(rd):
    assert len(_csv(rd, "--datasets", "demo")) == 6


def test_since_keeps_cells_finished_from_then(rd):
    rows = _csv(rd, "--since", "2026-01-02")
    assert rows and {r["cells"] for r in rows} == {"2"}
    rows = _csv(rd, "--since", "2026-01-03T00:00:00+00:00")
    assert {r["cells"] for r in rows} == {"1"}


def test_metric_sorts(rd):
    rows = _csv(rd, "--metric", "mse", "--genes", "50")
    assert [r["method"] for r in rows] == ["flag", "ridge", "mean"]  # lower MSE first


def test_table_and_markdown_filtered_notes_too(rd):
    res = runner.invoke(app, ["report", "--results-dir", rd, "--format", "markdown"])
    assert res.exit_code == 0 and "knn (tiny): 1" in res.stdout  # the planned-but-missing cell
    res = runner.invoke(app, ["report", "--results-dir", rd, "--format", "markdown", "--methods", "ridge"])
    assert res.exit_code == 0, res.output
    assert "| ridge (tiny) |" in res.stdout and "flag (tiny)" not in res.stdout
    assert "knn" not in res.stdout  # the missing knn cell is outside the filter
    res = runner.invoke(app, ["report", "--results-dir", rd, "--methods", "flag", "--genes", "50"])
    assert res.exit_code == 0 and "flag" in res.stdout and "ridge" not in res.stdout


@pytest.mark.slow
def test_figures_filtered(rd, tmp_path):
    out = tmp_path / "figs"
    res = runner.invoke(app, ["report", "--results-dir", rd, "--format", "svg", "--output", str(out),
                              "--methods", "mean,ridge", "--genes", "20,50"])
    assert res.exit_code == 0, res.output
    maps = sorted(p.name for p in out.glob("map-*.svg"))
    assert len(maps) == 2  # one mapped cell per configuration shown
    assert all(p.read_text().lstrip().startswith(("<?xml", "<svg")) for p in out.glob("*.svg"))
    page = tmp_path / "f.html"
    res = runner.invoke(app, ["report", "--results-dir", rd, "--format", "html", "--output", str(page),
                              "--methods", "ridge,mean"])
    assert res.exit_code == 0, res.output
    text = page.read_text()
    assert "ridge (tiny)" in text and "flag (tiny)" not in text and "showing methods ridge,mean" in text


@pytest.mark.parametrize("args,needles", [
    (["--datasets", "nope"], ["--datasets nope", "demo"]),
    (["--methods", "ridge,bleep"], ["--methods bleep", "flag, mean, ridge"]),
    (["--genes", "30"], ["--genes 30", "20, 50"]),
    (["--genes", "x"], ["--genes x"]),
    (["--split", "patient"], ["--split patient", "slide"]),
    (["--encoder", "uni"], ["--encoder uni", "color-stats"]),
    (["--since", "yesterday"], ["--since", "ISO"]),
    (["--suite", "other"], ["suite other"]),
])
def test_filter_errors_are_one_line(rd, args, needles):
    _one_line_error(runner.invoke(app, ["report", "--results-dir", rd, *args]), *needles)


def test_since_after_everything_is_an_error_not_an_empty_table(rd):
    res = runner.invoke(app, ["report", "--results-dir", rd, "--since", "2030-01-01"])
    assert res.exit_code == 2 and "no finished cells" in res.output
