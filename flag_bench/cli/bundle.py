"""`flag-bench export`: a results dir as a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import typer

from flag_bench.cli import app
from flag_bench.cli.common import console, fail
from flag_bench.errors import UserError


@app.command()
def export(
    results_dir: Path = typer.Argument(..., help="Results dir of `flag-bench run` to export."),
    output: Path = typer.Option(..., "--output", "-o", help="Bundle to write: a folder (new or empty), or one archive when the name ends in .tar.gz or .tgz. Never overwritten."),
    predictions: bool = typer.Option(False, "--predictions", help="Also carry each cell's predictions.h5ad (large)."),
    models: bool = typer.Option(False, "--models", help="Also carry each cell's saved model (artifacts/<cell_id>/model/, written by `flag-bench run --save-models`)."),
    suite: Optional[str] = typer.Option(None, "--suite", help="Only this suite's cells and plans (the report's rule: cells its plans name, plus cells computed under it)."),
):
    """Write a results dir as a bundle another lab can check and report: every record (with its
    protocol card, resolved config and provenance), failed attempts, plans, per-gene metrics, the
    exporting machine's environment and a sha256 manifest (docs/bundles.md)."""
    try:
        from flag_bench.bundle import export as write_bundle

        select, plan_filter = _suite_filters(results_dir, suite) if suite is not None else (None, None)
        summary = write_bundle(results_dir, output, predictions=predictions, models=models, select=select,
                               plan_filter=plan_filter, suite=suite)
        if summary.cells == 0 and summary.failed_attempts == 0:
            console(stderr=True).print(f"note: {results_dir} holds no records"
                                       + (f" of suite {suite}" if suite else "") + "; the bundle is empty",
                                       markup=False, soft_wrap=True)
        if summary.home_paths:
            console(stderr=True).print(
                f"note: {summary.home_paths} copied file(s) name your home folder (a dataset spec, a panel "
                "file, a traceback); records travel as they were written", markup=False, soft_wrap=True)
        typer.echo(summary.line())
    except UserError as exc:
        fail(str(exc))


def _suite_filters(results_dir: Path, suite: str) -> tuple[Callable[[Any], bool], Callable[[dict], bool]]:
    """A suite's records and plans, by the rule every report applies (leaderboard.sources)."""
    from flag_bench.leaderboard.sources import in_suite, suite_cells

    planned = suite_cells(results_dir, suite)

    def select(rec) -> bool:
        return in_suite(suite, planned, rec.cell_id, rec.protocol.get("suite"))

    def plan_filter(plan: dict) -> bool:
        return str((plan.get("grid_spec") or {}).get("suite", "default")) == suite

    return select, plan_filter
