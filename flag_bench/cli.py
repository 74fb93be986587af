"""The `flag-bench` command line (typer). Heavy imports (torch, MLflow, anndata) happen inside
commands, so `--help` and `list` stay fast."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from flag_bench.config import DEFAULT_RESULTS_DIR
from flag_bench.errors import UserError
from flag_bench.spec import Preset, ReportFormat, ResultSource, TargetTransform

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
    from rich.markup import escape

    # escaped: messages quote TOML tables like [methods.knn], which rich would eat as markup
    _console(stderr=True).print(f"[bold red]error:[/bold red] {escape(msg)}", soft_wrap=True)
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


def _default(name: str) -> str:
    """A RunConfig default as the help text shows it (one source of truth for defaults)."""
    import dataclasses

    from flag_bench.config import RunConfig

    value = {f.name: f.default for f in dataclasses.fields(RunConfig)}[name]
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


@app.command()
def run(
    datasets: Optional[str] = typer.Option(None, "--datasets", "-d", help=f"Comma-separated datasets; parameters as name:key=value (default {_default('datasets')})."),
    methods: Optional[str] = typer.Option(None, "--methods", "-m", help="Comma-separated methods (default: every built-in method marked for the default run)."),
    genes: Optional[str] = typer.Option(None, "--genes", "-g", help=f"Comma-separated panel sizes G (default {_default('genes')})."),
    panel: Optional[str] = typer.Option(None, "--panel", help=f"Panel selector: hmhvg, hvg or file:PATH (default {_default('panel')}). Fitted once per fold on its non-test slides."),
    split: Optional[str] = typer.Option(None, "--split", help=f"slide (leave-one-slide-out), patient, or file:PATH (default {_default('split')})."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Comma-separated fold indices to run (default all)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help=f"Comma-separated seeds (default {_default('seeds')})."),
    preset: Optional[Preset] = typer.Option(None, "--preset", help=f"Method preset (default {_default('preset')}); tiny is for tests only."),
    device: Optional[str] = typer.Option(None, "--device", help=f"auto, cpu, cuda, cuda:N (default {_default('device')})."),
    encoder: Optional[str] = typer.Option(None, "--encoder", help=f"Image encoder (default {_default('encoder')})."),
    target_transform: Optional[TargetTransform] = typer.Option(None, "--target-transform", help=f"Target transform (default {_default('target_transform')})."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="Worker processes; each gets an equal share of the CPUs, or one GPU each (default 1: in this process)."),
    results_dir: Optional[Path] = typer.Option(None, "--results-dir", help=f"Where results, artifacts and mlflow.db go (default ./{_default('results_dir')})."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default sqlite:///<results-dir>/mlflow.db)."),
    suite: Optional[str] = typer.Option(None, "--suite", help=f"Suite name: one MLflow experiment per suite (default {_default('suite')})."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML config file with a run table and methods.NAME override tables; the command line wins."),
    allow_patient_overlap: Optional[bool] = typer.Option(None, "--allow-patient-overlap/--no-allow-patient-overlap", help="Allow folds whose test patient is also in train (default: only where the dataset documents it)."),
    force: Optional[bool] = typer.Option(None, "--force/--no-force", help="Recompute finished cells (default no)."),
    fail_fast: Optional[bool] = typer.Option(None, "--fail-fast/--no-fail-fast", help="Stop at the first failed cell (default no)."),
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
            force=force, fail_fast=fail_fast, workers=workers,
        )
        cfg = build_config(config, cli)
        from flag_bench.driver import Driver

        console = _console()
        summary = Driver(cfg, console=console, progress=not no_progress).run()
    except UserError as exc:
        _fail(str(exc))
        return
    _print_summary(console, summary, cfg)
    raise typer.Exit(summary.exit_code)


def _print_summary(console, summary, cfg) -> None:
    n_fail = len(summary.failed)
    elsewhere = f", {summary.elsewhere} being computed by another run" if summary.elsewhere else ""
    console.print(
        f"done: {summary.ok} computed, {summary.skipped} already finished, {n_fail} failed{elsewhere}"
        + (" (interrupted: finished cells are saved; rerun to resume)" if summary.interrupted else "")
    )
    for desc, msg in summary.failed:
        console.print(f"  [red]failed[/red] {desc}: {msg}")
    console.print(f"MLflow: {summary.tracking_uri} (parent run {summary.parent_run_id}); "
                  f"`flag-bench report --results-dir {cfg.results_dir}` prints the leaderboard")


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
        lb = build(frame, metric=metric, columns=_csv(columns, what="--columns"))
        if fmt is ReportFormat.TABLE and output is None:
            print_leaderboard(lb, _console())
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
        _console(stderr=True).print(f"(read from {res.source}: {len(frame)} cells"
                                    + (f", {n_failed} failed" if n_failed else "") + ")")
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
