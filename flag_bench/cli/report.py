"""`flag-bench report`: the leaderboard from the results store or MLflow."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from flag_bench.cli import app
from flag_bench.cli.common import console, csv_list, fail
from flag_bench.config import DEFAULT_RESULTS_DIR
from flag_bench.errors import UserError
from flag_bench.spec import ReportFormat, ResultSource


@app.command()
def report(
    results_dir: Path = typer.Option(Path(DEFAULT_RESULTS_DIR), "--results-dir", help="Results dir of `flag-bench run`."),
    fmt: ReportFormat = typer.Option(ReportFormat.TABLE, "--format", help="Output format: table (fits the terminal's width), markdown, or csv (full precision, the table only)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead of the terminal."),
    metric: str = typer.Option("pcc_mean", "--metric", help="Sort key: a score name or its column header (pcc_mean or PCC, mse, gsc, ssc, ssc@32, ari)."),
    columns: Optional[str] = typer.Option(None, "--columns", help="Comma-separated score columns to show (names or headers)."),
    ci: Optional[bool] = typer.Option(None, "--ci/--no-ci", help="Show the 95% bootstrap CI of each mean in the table (default: when it fits the width)."),
    costs: bool = typer.Option(False, "--costs", help="Add cost columns: fit s, predict s, peak MB, params (mean over folds and seeds)."),
    source: ResultSource = typer.Option(ResultSource.AUTO, "--source", help="Where to read: auto (MLflow if the results dir has mlflow.db, else the results store), mlflow or store."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="Read from this MLflow tracking URI."),
    suite: Optional[str] = typer.Option(None, "--suite", help="Only this suite's cells (the same with either source)."),
):
    """Print the leaderboard: one row per dataset x G x method configuration, mean ± std over folds and
    seeds; then a legend, and the failed and planned-but-missing cells."""
    try:
        from flag_bench.leaderboard.model import build
        from flag_bench.leaderboard.notes import gather
        from flag_bench.leaderboard.results import load_results

        res = load_results(results_dir, source=source, tracking_uri=tracking_uri, suite=suite)
        notes = gather(res, results_dir, suite=suite, tracking_uri=tracking_uri)
        frame = res.frame()
        if frame.empty:
            _nothing_finished(notes, suite)
        lb = build(frame, metric=metric, columns=csv_list(columns, what="--columns"), costs=costs, notes=notes)
        _emit(lb, fmt, output, ci)
        _epilogue(res, lb, fmt, len(frame))
    except UserError as exc:
        fail(str(exc))


def _nothing_finished(notes, suite: Optional[str]) -> None:
    from flag_bench.leaderboard.notes import text_lines

    err = console(stderr=True)
    for line in text_lines(notes, err.width):  # what did fail, and how to finish the plan
        err.print(line, markup=False)
    raise UserError(f"no finished cells{f' in suite {suite}' if suite else ''} to report"
                    + (f" ({len(notes.failed)} failed, listed above)" if notes.failed else "")
                    + "; run `flag-bench run` first")


def _emit(lb, fmt: ReportFormat, output: Optional[Path], ci: Optional[bool]) -> None:
    from flag_bench.leaderboard.render import render
    from flag_bench.leaderboard.terminal import print_leaderboard

    out = console()
    if fmt is ReportFormat.TABLE and output is None:
        print_leaderboard(lb, out, ci=ci)
        return
    # a table written to a file is laid out for this terminal, as it would have printed
    text = render(lb, fmt, width=out.width, ci=ci)
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text)
    except OSError as exc:
        raise UserError(f"--output {output}: cannot write ({exc.strerror})") from None


def _epilogue(res, lb, fmt: ReportFormat, n_cells: int) -> None:
    """On stderr, so what --source store and --source mlflow print on stdout is byte-identical."""
    from flag_bench.leaderboard.notes import traceback_lines

    err = console(stderr=True)
    for line in traceback_lines(lb.notes, str(res.source)):
        err.print(line, markup=False, soft_wrap=True)  # a path stays whole, to copy
    notes = lb.notes
    if fmt is ReportFormat.CSV and (notes.failed or notes.missing):
        err.print(f"{len(notes.failed)} failed and {notes.n_missing} planned-but-missing cells are not in the CSV; "
                  "`--format table` or `markdown` lists them", markup=False)
    err.print(f"(read from {res.source}: {n_cells} cells" + (f", {len(notes.failed)} failed" if notes.failed else "")
              + (f", {notes.n_missing} planned but missing" if notes.n_missing else "") + ")", markup=False)
