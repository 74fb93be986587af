"""Units on the page: an MSE on ln(1 + count) is not one on log2(1 + count), so every header and
legend of a score in the target's units names the transform ("MSE (log1p)"), in the terminal,
Markdown, CSV and HTML reports and the curve figures; a board that pools cells of several
transforms says "mixed" and is flagged. Before, every format printed a bare "MSE".
"""

from __future__ import annotations

import csv
import dataclasses
import io

from typer.testing import CliRunner

from flag_bench.cli import app
from flag_bench.leaderboard.flags import all_flags
from flag_bench.leaderboard.model import build, transform_tag, unit_header
from flag_bench.leaderboard.render import render
from flag_bench.leaderboard.results import results_frame
from test_results_api import KNN, make_record


def _with(rec, transform: str):
    return dataclasses.replace(rec, cell=dataclasses.replace(rec.cell, target_transform=transform),
                               protocol={**rec.protocol, "target_transform": transform})


def _frame(transforms=("log1p",)):
    recs = [_with(make_record("knn", "small", KNN["small"], 5, fold), t) for t in transforms for fold in (0, 1)]
    recs += [_with(make_record("mean", "small", {}, 5, fold), transforms[0]) for fold in (0, 1)]
    return results_frame(r.to_row() for r in recs)


class _Res:
    def panel_stats(self, cell_id):
        return {}


def test_header_names_the_transform_of_scores_in_its_units():
    assert unit_header("mse", "MSE", ["log2p1", "log2p1"]) == "MSE (log2p1)"
    assert unit_header("mae", "MAE", ["log1p", "log2p1"]) == "MAE (mixed: log1p, log2p1)"
    assert unit_header("pcc_mean", "PCC", ["log1p"]) == "PCC"  # scale-free: the caption says it
    assert unit_header("mse", "MSE", []) == "MSE" and transform_tag(["", "log1p_cpm"]) == "log1p_cpm"


def test_every_text_format_carries_the_transform():
    lb = build(_frame(("log2p1",)), columns=["pcc_mean", "mse"])
    table = render(lb, "table", width=80)
    assert "MSE (log2p1)↓" in table and "PCC↑" in table and "; target log2p1" in table
    assert all(len(ln) <= 80 for ln in table.splitlines())
    legend = " ".join(table.split())
    assert "mse, lower is better: mean squared error over spots x genes, in target units (log2p1 = log2(1 + count))" \
        in legend
    md = render(lb, "markdown")
    assert "| G | method | cells | PCC ↑ | MSE (log2p1) ↓ |" in md
    assert "- **MSE (log2p1)** ↓ (`mse`, lower is better): mean squared error over spots x genes, in target" in md
    rows = list(csv.DictReader(io.StringIO(render(lb, "csv"))))
    assert {r["target_transform"] for r in rows} == {"log2p1"} and "mse" in rows[0]  # machine names stay


def test_a_board_pooling_two_transforms_says_mixed_and_is_flagged():
    frame = _frame(("log1p", "log2p1"))
    flags = all_flags(_Res(), frame)
    (line,) = [f for f in flags["synthetic"] if "target transforms" in f]
    assert line.startswith("cells of 2 target transforms (log1p, log2p1) on one board") and "mixed" in line
    lb = build(frame, metric="mse", columns=["pcc_mean", "mse"], flags=flags)
    table = render(lb, "table", width=80)
    assert all(len(ln) <= 80 for ln in table.splitlines()), max(table.splitlines(), key=len)
    flat = " ".join(table.split())
    assert "MSE (mixed: log1p, log2p1)↓" in flat and "target mixed: log1p, log2p1" in flat
    assert "values of different transforms are not comparable" in flat
    assert "MSE (mixed: log1p, log2p1) ↓" in render(lb, "markdown")
    rows = {r["label"]: r for r in csv.DictReader(io.StringIO(render(lb, "csv")))}
    assert rows["knn (small)"]["target_transform"] == "mixed: log1p, log2p1"  # the row pooled both
    assert rows["mean (small)"]["target_transform"] == "log1p"
    assert not any("target transforms" in f for f in all_flags(_Res(), _frame(("log1p",))).get("synthetic", ()))


def test_html_headers_legend_and_curve_axes_carry_the_transform(tmp_path, monkeypatch):
    from report_demo import write_demo_store

    from flag_bench.leaderboard import figures

    drawn = []
    real = figures.gdc_curves

    def spy(panels, colors, title):
        fig = real(panels, colors, title)
        drawn.append((title, [(p["metric"], p.get("units")) for p in panels],
                      [ax.get_ylabel() for ax in fig.axes if ax.get_visible()]))
        return fig

    monkeypatch.setattr(figures, "gdc_curves", spy)
    rd = tmp_path / "res"
    write_demo_store(rd, methods=("mean", "ridge"), genes=(20, 50), folds=2, side=6, target_transform="log2p1")
    out = tmp_path / "board.html"
    res = CliRunner().invoke(app, ["report", "--results-dir", str(rd), "--format", "html", "--source", "store",
                                   "--output", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert ">MSE (log2p1) ↓</th>" in page and "<h3>demo, G = 20, target log2p1</h3>" in page
    assert "<li><b>MSE (log2p1)</b>" in page and "in target units (log2p1 = log2(1 + count))" in page
    ((title, panels, ylabels),) = drawn
    assert title.startswith("demo, target log2p1: metrics vs G")
    assert ("MSE", "log2p1") in panels and ("PCC", "") in panels
    assert "MSE (log2p1; lower is better)" in ylabels and "PCC" in ylabels
