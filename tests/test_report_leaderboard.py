"""The leaderboard model and its renderers, on results frames built from synthetic records (no MLflow).

Defect 4: knn with k = 5 and, in the same results dir, [methods.knn] k = 50 once printed as one row
"2 cells, 0.489 ± 0.043", and the metric-vs-G table merged presets. A row is one configuration.
"""

from __future__ import annotations

import csv
import io

import pytest

from flag_bench.leaderboard.model import build
from flag_bench.errors import UserError
from flag_bench.leaderboard.render import FIGURE_FORMATS, RENDERERS, render
from flag_bench.leaderboard.results import results_frame
from flag_bench.spec import ReportFormat
from test_results_api import KNN, make_record


def _frame(genes=(5,)):
    recs = []
    for g in genes:
        for fold in (0, 1):
            recs.append(make_record("knn", "small", KNN["small"], g, fold))
            recs.append(make_record("knn", "small", {**KNN["small"], "k": 50}, g, fold, overrides={"k": 50}))
            recs.append(make_record("knn", "tiny", KNN["tiny"], g, fold))
    return recs, results_frame(r.to_row() for r in recs)


def test_two_configurations_of_one_method_are_two_rows():
    recs, frame = _frame()
    (board,) = build(frame).datasets
    assert {r.label: r.cells for r in board.rows} == {"knn (small)": 2, "knn (small k=50)": 2, "knn (tiny)": 2}
    k50 = next(r for r in board.rows if r.label == "knn (small k=50)")
    want = [r.scores["pcc_mean"] for r in recs if r.method.overrides]
    assert k50.stats["pcc_mean"].mean == pytest.approx(sum(want) / 2) and k50.stats["pcc_mean"].n == 2
    md = render(build(frame), ReportFormat.MARKDOWN)
    assert "| 5 | knn (small k=50) | 2 |" in md and "| 5 | knn (small) | 2 |" in md


def test_curve_table_keeps_presets_apart():
    recs, frame = _frame(genes=(5, 10))
    (board,) = build(frame).datasets
    assert board.genes == (5, 10) and [c.label for c in board.curve] == ["knn (small k=50)", "knn (small)", "knn (tiny)"]
    tiny = next(c for c in board.curve if c.label == "knn (tiny)")
    want = [r.scores["pcc_mean"] for r in recs if r.cell.preset == "tiny" and r.cell.n_genes == 10]
    assert tiny.points[10].mean == pytest.approx(sum(want) / 2) and tiny.points[10].n == 2
    assert "Gene-Dimension-Curse curve" in render(build(frame), ReportFormat.TABLE)


def test_every_format_has_a_renderer_and_table_is_a_table():
    _, frame = _frame()
    lb = build(frame, metric="mse", columns=["mse", "ssc@32"])
    assert set(RENDERERS) == set(ReportFormat) - FIGURE_FORMATS
    with pytest.raises(UserError, match="--format html: needs the results"):
        render(lb, "html")  # drawn from the results by content.build_content, not from the model alone
    table = render(lb, "table", width=120)
    assert "─" in table and "|---|" not in table and "MSE (log1p)↓" in table  # MSE in the target's units
    rows = list(csv.DictReader(io.StringIO(render(lb, ReportFormat.CSV))))
    assert [r["label"] for r in rows] == [r.label for r in lb.datasets[0].rows]
    assert float(rows[0]["mse"]) == lb.datasets[0].rows[0].stats["mse"].mean  # full precision
    means = [float(r["mse"]) for r in rows]
    assert means == sorted(means)  # lower is better: best first


def test_labels_are_text_not_markup():
    rec = make_record("knn", "small", {"k": 5, "names": ["bold"]}, 5, 0, overrides={"names": "[bold]x"})
    table = render(build(results_frame([rec.to_row()])), ReportFormat.TABLE, width=200)
    assert "config small names=[bold]x" in table  # one configuration: said once, in the heading
    two = [rec, make_record("knn", "tiny", {"k": 3}, 5, 0)]
    table = render(build(results_frame([r.to_row() for r in two])), ReportFormat.TABLE, width=200)
    assert "knn (small names=[bold]x)" in table
