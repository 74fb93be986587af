"""The `flag-bench` command line (typer). Heavy imports (torch, MLflow, anndata) happen inside
commands, so `--help` and `list` stay fast."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from flag_bench.errors import UserError

app = typer.Typer(
    name="flag-bench",
    help="Benchmark H&E -> spatial gene expression methods (FLAG, Stem, controls) on leakage-safe grids.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _fail(msg: str, code: int = 2) -> None:
    # one line, no traceback: the user can act on it
    _console(stderr=True).print(f"[bold red]error:[/bold red] {msg}", soft_wrap=True)
    raise typer.Exit(code)


def _csv(value: Optional[str], cast=str, what: str = "") -> Optional[tuple]:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise UserError(f"{what}: empty list")
    try:
        return tuple(cast(v) for v in items)
    except ValueError:
        raise UserError(f"{what} {value}: expected comma-separated {cast.__name__}s, e.g. {what} 50,200") from None


def _dataset_list(value: Optional[str]) -> Optional[tuple]:
    """Datasets are comma-separated and so are their parameters: a 'key=value' chunk without
    a ':' continues the previous dataset (synthetic:n_slides=3,n_genes=500,her2st-mini)."""
    if value is None:
        return None
    out: list[str] = []
    for chunk in filter(None, (c.strip() for c in value.split(","))):
        if "=" in chunk and ":" not in chunk and out:
            out[-1] += "," + chunk
        else:
            out.append(chunk)
    if not out:
        raise UserError("--datasets: empty list")
    return tuple(out)


@app.command()
def run(
    datasets: Optional[str] = typer.Option(None, "--datasets", "-d", help="Comma-separated datasets; parameters as name:key=value (default her2st-mini)."),
    methods: Optional[str] = typer.Option(None, "--methods", "-m", help="Comma-separated methods (default: every built-in method marked for the default run)."),
    genes: Optional[str] = typer.Option(None, "--genes", "-g", help="Comma-separated panel sizes G (default 50)."),
    panel: Optional[str] = typer.Option(None, "--panel", help="Panel selector: hmhvg (default), hvg or file:PATH. Fitted on training slides only."),
    split: Optional[str] = typer.Option(None, "--split", help="slide (leave-one-slide-out, default), patient, or file:PATH."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Comma-separated fold indices to run (default all)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds (default 0)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="tiny | small (default) | paper."),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default), cpu, cuda, cuda:N."),
    encoder: Optional[str] = typer.Option(None, "--encoder", help="Image encoder (default efficientnet-lite0)."),
    target_transform: Optional[str] = typer.Option(None, "--target-transform", help="log1p (default), log1p_cpm or log2p1."),
    results_dir: Optional[Path] = typer.Option(None, "--results-dir", help="Where results, artifacts and mlflow.db go (default ./flag-bench-results)."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default sqlite:///<results-dir>/mlflow.db)."),
    suite: Optional[str] = typer.Option(None, "--suite", help="Suite name: one MLflow experiment per suite (default 'default')."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML config file ([run] keys, [methods.NAME] overrides); the command line wins."),
    allow_patient_overlap: Optional[bool] = typer.Option(None, "--allow-patient-overlap/--no-allow-patient-overlap", help="Allow folds whose test patient is also in train (default: only where the dataset documents it)."),
    force: bool = typer.Option(False, "--force", help="Recompute finished cells."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first failed cell."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
):
    """Run a benchmark grid: datasets x G x methods x folds x seeds. Finished cells are skipped."""
    try:
        from flag_bench.config import build_config

        cli = dict(
            datasets=_dataset_list(datasets), methods=_csv(methods, what="--methods"),
            genes=_csv(genes, int, "--genes"), panel=panel, split=split, folds=_csv(folds, int, "--folds"),
            seeds=_csv(seeds, int, "--seeds"), preset=preset, device=device, encoder=encoder,
            target_transform=target_transform, results_dir=str(results_dir) if results_dir else None,
            tracking_uri=tracking_uri, suite=suite, allow_patient_overlap=allow_patient_overlap,
            force=force or None, fail_fast=fail_fast or None,
        )
        cfg = build_config(config, cli)
        from flag_bench.runner import Runner

        console = _console()
        summary = Runner(cfg, console=console, progress=not no_progress).run()
    except UserError as exc:
        _fail(str(exc))
        return
    n_fail = len(summary.failed)
    console.print(
        f"done: {summary.ok} computed, {summary.skipped} already finished, {n_fail} failed"
        + (" (interrupted: finished cells are saved; rerun to resume)" if summary.interrupted else "")
    )
    for desc, msg in summary.failed:
        console.print(f"  [red]failed[/red] {desc}: {msg}")
    console.print(f"MLflow: {summary.tracking_uri} (parent run {summary.parent_run_id}); "
                  f"`flag-bench report --results-dir {cfg.results_dir}` prints the leaderboard")
    raise typer.Exit(summary.exit_code)


@app.command()
def report(
    results_dir: Path = typer.Option(Path("flag-bench-results"), "--results-dir", help="Results dir of `flag-bench run`."),
    fmt: str = typer.Option("table", "--format", help="table | markdown | csv."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead of the terminal."),
    metric: str = typer.Option("pcc_mean", "--metric", help="Sort key (a score name, e.g. pcc_mean, mse, gsc, ssc)."),
    columns: Optional[str] = typer.Option(None, "--columns", help="Comma-separated score columns to show."),
    source: str = typer.Option("auto", "--source", help="auto (MLflow if present, else the results store) | mlflow | store."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="Read from this MLflow tracking URI."),
    suite: Optional[str] = typer.Option(None, "--suite", help="Only this suite's experiment."),
):
    """Print the leaderboard: one row per dataset x G x method, mean ± std over folds and seeds."""
    try:
        if fmt not in ("table", "markdown", "csv"):
            raise UserError(f"--format {fmt}: use table, markdown or csv")
        from flag_bench.leaderboard import report as rep
        from flag_bench.leaderboard.results import load_results

        df, used = load_results(results_dir, source=source, tracking_uri=tracking_uri, suite=suite)
        lb = rep.build(df, metric=metric, columns=_csv(columns, what="--columns"))
        if fmt == "table" and output is None:
            rep.print_table(lb, _console())
            _console().print(f"(read from {used}: {len(df)} cells)")
            return
        text = rep.to_markdown(lb) if fmt in ("markdown", "table") else rep.to_csv(lb)
        if output is None:
            sys.stdout.write(text)
        else:
            try:
                output.write_text(text)
            except OSError as exc:
                raise UserError(f"--output {output}: cannot write ({exc.strerror})") from None
    except UserError as exc:
        _fail(str(exc))


@app.command("list")
def list_(
    kind: Optional[str] = typer.Argument(None, help="methods, datasets, metrics, encoders or panels (default all)."),
):
    """List registered methods, datasets, metrics, encoders and panel selectors (built-ins and plugins)."""
    from flag_bench.catalog import ALL

    try:
        kinds = [kind] if kind else list(ALL)
        for k in kinds:
            if k not in ALL:
                raise UserError(f"unknown kind '{k}'; use one of {', '.join(ALL)}")
        out = []
        for k in kinds:
            reg = ALL[k]
            out.append(f"{k}:")
            for name in reg.names():
                origin = reg.origin(name)
                out.append(f"  {name}" + ("" if origin == "built-in" else f"  [{origin}]"))
        sys.stdout.write("\n".join(out) + "\n")
    except UserError as exc:
        _fail(str(exc))


def main() -> None:
    try:
        app()
    except UserError as exc:  # pragma: no cover - commands catch their own
        _fail(str(exc))


if __name__ == "__main__":
    main()
