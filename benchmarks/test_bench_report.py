"""`flag-bench report` in process: the terminal table, Markdown and the HTML page (statistics and
figures) from one small results store.

The store is written once (``tests/report_demo.py: write_demo_store``, setup, not timed): 4
methods x G 20, 50 x 6 test slides = 48 finished cells with artifacts, enough test slides for
every statistic and figure of the page. ``bench_report.py`` times the 500-cell grid of issue 14;
this is the quick version for comparing runs. Each benchmark checks the report it rendered.
"""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from flag_bench.cli import app
from flag_bench.leaderboard.html import section_ids
from report_demo import write_demo_store

METHODS, GENES, FOLDS, SIDE = ("mean", "ridge", "flag", "stem"), (20, 50), 6, 10
runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rd = tmp_path_factory.mktemp("bench-report") / "res"
    ids = write_demo_store(rd, methods=METHODS, genes=GENES, folds=FOLDS, side=SIDE)
    assert len(ids) == len(METHODS) * len(GENES) * FOLDS
    return rd


def report(rd, out, fmt: str) -> str:
    res = runner.invoke(app, ["report", "--results-dir", str(rd), "--format", fmt, "--output", str(out)],
                        env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    return out.read_text()


def rows_per_method(text: str) -> dict[str, int]:
    return {m: len(re.findall(rf"\b{m}\b", text)) for m in METHODS}


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_text_report(benchmark, store, tmp_path, fmt):
    text = benchmark(report, store, tmp_path / f"report.{fmt}", fmt)
    # one row per method and G, at least
    assert all(n >= len(GENES) for n in rows_per_method(text).values()), text
    for g in GENES:
        assert re.search(rf"\b{g}\b", text)


def test_html_report(benchmark, store, tmp_path):
    # a few seconds a page: a fixed number of rounds rather than pytest-benchmark's calibration
    text = benchmark.pedantic(report, args=(store, tmp_path / "report.html", "html"), rounds=2, warmup_rounds=1)
    for sid in section_ids():
        assert f'<section id="{sid}" data-section="{sid}">' in text
    assert all(n >= len(GENES) for n in rows_per_method(text).values())
    assert f"{len(METHODS) * len(GENES) * FOLDS} finished, 0 failed" in text
