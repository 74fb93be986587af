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
    fmt: ReportFormat = typer.Option(ReportFormat.TABLE, "--format", help="Output format."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead of the terminal."),
    metric: str = typer.Option("pcc_mean", "--metric", help="Sort key (a score name, e.g. pcc_mean, mse, gsc, ssc)."),
    columns: Optional[str] = typer.Option(None, "--columns", help="Comma-separated score columns to show."),
    source: ResultSource = typer.Option(ResultSource.AUTO, "--source", help="Where to read: auto (MLflow if the results dir has mlflow.db, else the results store), mlflow or store."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="Read from this MLflow tracking URI."),
    suite: Optional[str] = typer.Option(None, "--suite", help="Only this suite's cells."),
):
    """Print the leaderboard: one row per dataset x G x method configuration, mean ± std over folds and seeds."""
    try:
        from flag_bench.leaderboard.model import build
        from flag_bench.leaderboard.render import print_leaderboard, render
        from flag_bench.leaderboard.results import load_results

        res = load_results(results_dir, source=source, tracking_uri=tracking_uri, suite=suite)
        frame = res.frame()
        lb = build(frame, metric=metric, columns=csv_list(columns, what="--columns"))
        if fmt is ReportFormat.TABLE and output is None:
            print_leaderboard(lb, console())
        else:
            text = render(lb, fmt, width=None)
            if output is None:
                sys.stdout.write(text)
            else:
                try:
                    output.write_text(text)
                except OSError as exc:
                    raise UserError(f"--output {output}: cannot write ({exc.strerror})") from None
        n_failed = len(res.failed())
        # on stderr, so the tables from --source store and --source mlflow are byte-identical
        console(stderr=True).print(f"(read from {res.source}: {len(frame)} cells"
                                    + (f", {n_failed} failed" if n_failed else "") + ")")
    except UserError as exc:
        fail(str(exc))
