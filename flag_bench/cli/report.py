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
    ctx: typer.Context,
    results_dir: Path = typer.Option(Path(DEFAULT_RESULTS_DIR), "--results-dir", help="Results dir of `flag-bench run`."),
    fmt: ReportFormat = typer.Option(ReportFormat.TABLE, "--format", help="Output format: table (fits the terminal's width), markdown, csv (full precision, the table only), json (the board rows and every statistical test per dataset x G x metric over test folds, seeds averaged: n, p, Holm p, 95% CI of the difference, min p, MDE, Friedman, groups, variance split; NaN as null), html (one self-contained file with figures and statistics; needs --output FILE), png or svg (the figures as files; needs --output DIR)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file (a folder for png and svg) instead of the terminal."),
    metric: str = typer.Option("pcc_mean", "--metric", help="Sort key: a score name or its column header (pcc_mean or PCC, pcc_pooled, mse, gsc, gsc_cpm, ssc, ssc_spot, lee_l, ssc@32, ari, or a calibrated one such as gsc_cal)."),
    columns: Optional[str] = typer.Option(None, "--columns", help="Comma-separated score columns to show (names or headers), e.g. pcc_mean,pcc_pooled,mse for HEST's pooled PCC beside the per-slide mean."),
    ci: Optional[bool] = typer.Option(None, "--ci/--no-ci", help="Show the 95% bootstrap CI of each mean in the table (default: when it fits the width)."),
    costs: bool = typer.Option(False, "--costs", help="Add cost columns: fit s, predict s, peak MB, params (mean over folds and seeds)."),
    source: ResultSource = typer.Option(ResultSource.AUTO, "--source", help="Where to read: auto (MLflow if the results dir has mlflow.db, else the results store), mlflow or store."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="Read from this MLflow tracking URI."),
    suite: Optional[str] = typer.Option(None, "--suite", help="Only this suite's cells (the same with either source)."),
    datasets: Optional[str] = typer.Option(None, "--datasets", help="Only these datasets (names or full specs), comma-separated."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Only these methods, comma-separated."),
    genes: Optional[str] = typer.Option(None, "--genes", help="Only these panel sizes G, comma-separated."),
    split: Optional[str] = typer.Option(None, "--split", help="Only cells of these split kinds (slide, patient, hest, file), comma-separated: a board otherwise pools the folds of every split it holds."),
    encoder: Optional[str] = typer.Option(None, "--encoder", help="Only cells of these image encoders, comma-separated: a row otherwise pools a configuration's cells of every encoder."),
    since: Optional[str] = typer.Option(None, "--since", help="Only cells finished at or after this ISO date or time (UTC unless a zone is given), e.g. 2026-11-26 or 2026-11-26T03:00."),
    genes_to_plot: Optional[str] = typer.Option(None, "--genes-to-plot", help="html/png/svg: also map these genes (comma-separated symbols) in every mapped cell whose panel has them."),
    map_cells: Optional[str] = typer.Option(None, "--map-cells", help="html/png/svg: map these cells (ids or id prefixes, comma-separated) instead of each configuration's best-PCC cell at the largest G."),
    from_: Optional[list[Path]] = typer.Option(None, "--from", help="Read this bundle of `flag-bench export` (a folder or .tar.gz; repeat for one board from several labs' bundles), checked against its manifest first. Not with --results-dir, --source or --tracking-uri. Boards refuse bundles of different protocol versions, dataset versions or panels; rows computed on other hardware are marked."),
):
    """Print the leaderboard: one row per dataset x G x method configuration, mean ± std over folds and
    seeds; then a legend, and the failed and planned-but-missing cells."""
    try:
        from flag_bench.leaderboard.model import build
        from flag_bench.leaderboard.notes import gather
        from flag_bench.leaderboard.results import load_results

        from flag_bench.leaderboard.filters import make_filter

        figures = fmt in (ReportFormat.HTML, ReportFormat.PNG, ReportFormat.SVG)
        if figures and output is None:
            raise UserError(f"--format {fmt}: give --output {'FILE.html' if fmt is ReportFormat.HTML else 'DIR'}")
        flt = make_filter(csv_list(datasets, what="--datasets"), csv_list(methods, what="--methods"),
                          csv_list(genes, what="--genes"), since, csv_list(split, what="--split"),
                          csv_list(encoder, what="--encoder"))
        if from_:
            from flag_bench.leaderboard.results import bundle_notes, load_bundles

            _only_from(ctx)
            res = load_bundles(from_, suite=suite, flt=flt)
            bare = [b.name for b in res.bundles if not b.info.get("includes_predictions")]
            if figures and bare:
                raise UserError(f"--format {fmt} draws maps from predictions, which bundle {', '.join(bare)} does not "
                                "carry: ask for an export with --predictions, or use --format markdown")
            for remark in res.remarks:
                console(stderr=True).print(f"note: {remark}", markup=False, soft_wrap=True)
        else:
            res = load_results(results_dir, source=source, tracking_uri=tracking_uri, suite=suite)
        if not flt.empty:
            res = res.where(flt)
        if from_:
            notes = bundle_notes(res, suite)
        else:
            notes = gather(res, results_dir, suite=suite, tracking_uri=tracking_uri)
        frame = res.frame()
        if frame.empty:
            _nothing_finished(notes, suite)
        cols = csv_list(columns, what="--columns")
        if figures:
            lb = build(frame, metric=metric, columns=_with_pooled(cols, frame) if cols else _html_columns(frame),
                       costs=True, notes=notes, hardware=res.hardware())
            assert output is not None  # refused above without --output
            _emit_figures(res, lb, fmt, output, csv_list(genes_to_plot, what="--genes-to-plot") or (),
                          csv_list(map_cells, what="--map-cells") or ())
        else:
            from flag_bench.leaderboard.flags import all_flags

            lb = build(frame, metric=metric, columns=cols, costs=costs, notes=notes, flags=all_flags(res, frame),
                       hardware=res.hardware())
            _emit(lb, fmt, output, ci, _tests(frame, lb) if fmt is ReportFormat.JSON else ())
        _epilogue(res, lb, fmt, len(frame))
    except UserError as exc:
        fail(str(exc))


def _only_from(ctx: typer.Context) -> None:
    """--from reads bundles only: a results dir, source or tracking URI given too is a mistake."""
    def typed(name: str) -> bool:  # by the source's name: typer ships its own click
        source = ctx.get_parameter_source(name)
        return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")

    given = [opt for name, opt in (("results_dir", "--results-dir"), ("source", "--source"),
                                   ("tracking_uri", "--tracking-uri")) if typed(name)]
    if given:
        raise UserError(f"--from reads bundles only; drop {', '.join(given)} (or report the results dir "
                        "without --from)")


def _nothing_finished(notes, suite: Optional[str]) -> None:
    from flag_bench.leaderboard.notes import text_lines

    err = console(stderr=True)
    for line in text_lines(notes, err.width):  # what did fail, and how to finish the plan
        err.print(line, markup=False)
    raise UserError(f"no finished cells{f' in suite {suite}' if suite else ''} to report"
                    + (f" ({len(notes.failed)} failed, listed above)" if notes.failed else "")
                    + "; run `flag-bench run` first")


def _tests(frame, lb) -> tuple:
    """JSON: the tests of every score the board shows, per dataset x G, methods only."""
    from flag_bench.leaderboard.calibration import add_calibration
    from flag_bench.leaderboard.model import config_labels, metric_direction
    from flag_bench.leaderboard.stats import ranked_tests

    frame = add_calibration(frame)  # a calibrated column shown (gsc_cal) is tested like any score
    return ranked_tests(frame, [c for c in lb.columns if c in frame.columns], metric_direction(), config_labels(frame))


def _emit(lb, fmt: ReportFormat, output: Optional[Path], ci: Optional[bool], tests: tuple = ()) -> None:
    from flag_bench.leaderboard.render import render
    from flag_bench.leaderboard.terminal import print_leaderboard

    out = console()
    if fmt is ReportFormat.TABLE and output is None:
        print_leaderboard(lb, out, ci=ci)
        return
    # a table written to a file is laid out for this terminal, as it would have printed
    text = render(lb, fmt, width=out.width, ci=ci, tests=tests)
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text)
    except OSError as exc:
        raise UserError(f"--output {output}: cannot write ({exc.strerror})") from None


def _html_columns(frame) -> tuple[str, ...]:
    """The HTML table's scores: the default columns with HEST's pooled PCC beside the per-slide mean
    PCC, the distance and depth-normalised GSC beside GSC, and the Moran's I error, where the results
    have them."""
    from flag_bench.leaderboard.model import DEFAULT_COLUMNS

    beside = {"pcc_mean": ("pcc_pooled",), "gsc": ("gsc_frobenius", "gsc_cpm")}
    cols = []
    for c in DEFAULT_COLUMNS:
        cols += [c, *beside.get(c, ())]
    cols.append("moran_abs_err")
    return tuple(c for c in cols if c in frame.columns)


def _with_pooled(cols, frame) -> tuple[str, ...]:
    """The HTML shows HEST's pooled PCC wherever it shows the per-slide mean PCC."""
    from flag_bench.leaderboard.model import resolve

    out = [resolve(frame, c) for c in cols]
    if "pcc_mean" in out and "pcc_pooled" not in out and "pcc_pooled" in frame.columns:
        out.insert(out.index("pcc_mean") + 1, "pcc_pooled")
    return tuple(out)


def _emit_figures(res, lb, fmt: ReportFormat, output: Path, genes_to_plot, map_cells) -> None:
    """Everything is drawn before anything is written: a failure leaves no half-written report."""
    from flag_bench.io import atomic_write_bytes
    from flag_bench.leaderboard.content import build_content
    from flag_bench.thumbnails import thumbnail

    kind = "svg" if fmt is ReportFormat.SVG else "png"
    content = build_content(res, lb, kind=kind, genes_to_plot=genes_to_plot, map_cells=map_cells, thumbnail=thumbnail)
    if fmt is ReportFormat.HTML:
        from flag_bench.leaderboard.html import render_html

        if output.is_dir():
            raise UserError(f"--output {output}: is a folder; give a file name such as {output / 'leaderboard.html'}")
        text = render_html(content)
        try:
            atomic_write_bytes(output, text.encode("utf-8"))
        except OSError as exc:
            raise UserError(f"--output {output}: cannot write ({exc.strerror})") from None
        console(stderr=True).print(f"wrote {output} ({len(text.encode()) / 1e6:.1f} MB, {len(content.figures)} figures)",
                                   markup=False)
        return
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output}: is a file; --format {fmt} writes one file per figure into a folder")
    try:
        output.mkdir(parents=True, exist_ok=True)
        for f in content.figures:
            atomic_write_bytes(output / f"{f.key}.{kind}", f.data)
    except OSError as exc:
        raise UserError(f"--output {output}: cannot write ({exc.strerror})") from None
    console(stderr=True).print(f"wrote {len(content.figures)} {kind} figures to {output}", markup=False)


def _epilogue(res, lb, fmt: ReportFormat, n_cells: int) -> None:
    """On stderr, so what --source store and --source mlflow print on stdout is byte-identical."""
    from flag_bench.leaderboard.notes import traceback_lines

    err = console(stderr=True)
    source = str(res.source)
    if res.bundles:  # --from: the bundles as the user named them
        source = f"bundle{'s' if len(res.bundles) > 1 else ''} {', '.join(b.name for b in res.bundles)}"
    for line in traceback_lines(lb.notes, source):
        err.print(line, markup=False, soft_wrap=True)  # a path stays whole, to copy
    notes = lb.notes
    if fmt is ReportFormat.CSV and (notes.failed or notes.missing):
        err.print(f"{len(notes.failed)} failed and {notes.n_missing} planned-but-missing cells are not in the CSV; "
                  "`--format table` or `markdown` lists them", markup=False)
    err.print(f"(read from {source}: {n_cells} cells" + (f", {len(notes.failed)} failed" if notes.failed else "")
              + (f", {notes.n_missing} planned but missing" if notes.n_missing else "") + ")", markup=False)
