"""`flag-bench reproduce`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from flag_bench.cli import app
from flag_bench.cli.common import console, fail
from flag_bench.config import DEFAULT_RESULTS_DIR
from flag_bench.errors import UserError

_TOL = "defaults 0.0005 and 0.001"  # flag_bench.reproduce.DEFAULT_ATOL / DEFAULT_RTOL (kept torch-free here)
# per-slide disagreements shown one per row; the rest counted
_SHOWN_SLIDE_ROWS = 12


@app.command()
def reproduce(
    cell_id: str = typer.Argument(..., help="The cell's id (cells/<id>.json) or a unique prefix of it."),
    results_dir: Path = typer.Option(Path(DEFAULT_RESULTS_DIR), "--results-dir", help="Results dir of `flag-bench run` holding the cell's record."),
    bundle: Optional[Path] = typer.Option(None, "--from", help="Read the record from this bundle (a folder or .tar.gz of `flag-bench export`) instead of --results-dir, verified against its manifest first."),
    device: Optional[str] = typer.Option(None, "--device", help="Compute on this device (auto, cpu, cuda, cuda:N) instead of the record's; another device type is compared within the tolerance."),
    atol: Optional[float] = typer.Option(None, "--atol", help=f"Absolute tolerance: a metric agrees when |new - recorded| <= atol + rtol x |recorded| ({_TOL}). Without --atol/--rtol the values must be bit-identical when device type, torch thread count and code version are the record's; the tolerance applies otherwise."),
    rtol: Optional[float] = typer.Option(None, "--rtol", help="Relative tolerance (see --atol)."),
    allow_other_code: bool = typer.Option(False, "--allow-other-code", help="Compute even when this flag-bench version or commit differs from the record's (then compared within the tolerance, never bit-identical)."),
):
    """Recompute one recorded cell and compare every metric with its record.

    Before computing, checks that the code version, the encoder's and the method's weights files
    (sha256) and the dataset's content version are the record's (exit 2 otherwise). The cell is
    planned again from its record, computed here on the record's device and torch thread count
    (new artifacts go to a temporary folder), and each score is printed recorded, new and
    |difference|. Exit 0 when every score agrees, 1 when any does not (listed), 2 for a refusal.
    """
    try:
        from flag_bench.reproduce import reproduce as run_reproduction

        out = console()
        if bundle is not None:
            from flag_bench.bundle import open_bundle

            root, shown = open_bundle(bundle), f"--from {bundle}"
        else:
            root, shown = results_dir, f"--results-dir {results_dir}"
        from rich.markup import escape

        result = run_reproduction(root, cell_id, device=device, atol=atol, rtol=rtol,
                                  allow_other_code=allow_other_code, shown=shown,
                                  say=lambda line: out.print(escape(line), soft_wrap=True))
    except UserError as exc:
        fail(str(exc))
        return
    raise typer.Exit(_report(out, result))


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "nan"
    return f"{v:.10g}"


def _diff(v: float) -> str:
    return "0" if v == 0 else f"{v:.2e}"


def _report(out, result) -> int:
    from rich.markup import escape
    from rich.table import Table

    new = result.new
    if not new.ok:
        why = new.error.message if new.error else "no error recorded"
        out.print(f"[bold red]FAILED[/bold red]: the recomputed cell failed ({escape(why)}); the record's scores "
                  "were not reproduced", soft_wrap=True)
        return 1
    tol = result.tolerance
    table = Table(title=None, box=None, pad_edge=False, show_edge=False)
    table.add_column("metric", overflow="fold")
    table.add_column("recorded", justify="right")
    table.add_column("new", justify="right")
    table.add_column("|diff|", justify="right")
    table.add_column("", justify="left")
    for c in result.metrics:
        mark = "ok" if c.agrees else "[red]DIFF[/red]"
        if c.missing == "new":
            mark = "[red]missing[/red]"
        elif c.missing == "recorded":
            mark = "new only"
        table.add_row(escape(c.name), _fmt(c.recorded), _fmt(c.new), "" if c.missing else _diff(c.diff), mark)
    bad_slides = [c for c in result.per_slide if not c.agrees]
    for c in bad_slides[:_SHOWN_SLIDE_ROWS]:
        mark = "[red]missing[/red]" if c.missing == "new" else "[red]DIFF[/red]"
        table.add_row(escape(c.name), _fmt(c.recorded), _fmt(c.new), "" if c.missing else _diff(c.diff), mark)
    out.print(table)
    slides = {c.name.split(" / ", 1)[0] for c in result.per_slide}
    compared = [c for c in result.per_slide if not c.missing]
    worst = max((c.diff for c in compared), default=0.0)
    more = len(bad_slides) - _SHOWN_SLIDE_ROWS
    out.print(f"per-slide scores: {len(result.per_slide)} over {len(slides)} slide(s), "
              f"{len(result.per_slide) - len(bad_slides)} agree, max |diff| {_diff(worst)}"
              + (f" ({more} more disagreeing not shown)" if more > 0 else ""), soft_wrap=True)
    out.print(f"tolerance: {escape(tol.describe())}", soft_wrap=True)
    n_metrics = sum(1 for c in result.metrics if c.missing != "recorded")
    if result.ok:
        how = "bit-identical" if tol.exact else "within the tolerance"
        if not tol.exact and all(c.diff == 0 for c in (*result.metrics, *result.per_slide) if not c.missing):
            how += "; every value bit-identical"
        out.print(f"[bold green]REPRODUCED[/bold green]: all {n_metrics} metrics and {len(result.per_slide)} "
                  f"per-slide scores of cell {result.record.cell_id} agree ({how})", soft_wrap=True)
        return 0
    names = [c.name for c in result.disagreeing]
    shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
    out.print(f"[bold red]NOT REPRODUCED[/bold red]: {len(names)} score(s) of cell {result.record.cell_id} "
              f"disagree: {escape(shown)}", soft_wrap=True)
    return 1
