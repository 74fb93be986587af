"""`flag-bench run`: parse the options into a RunConfig and hand it to the Driver."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flag_bench.cli import app
from flag_bench.cli.common import console, csv_list, dataset_list, default_of, fail
from flag_bench.errors import UserError
from flag_bench.spec import Preset, TargetTransform


@app.command()
def run(
    datasets: Optional[str] = typer.Option(None, "--datasets", "-d", help=f"Comma-separated datasets; parameters as name:key=value (default {default_of('datasets')})."),
    methods: Optional[str] = typer.Option(None, "--methods", "-m", help="Comma-separated methods (default: every built-in method marked for the default run)."),
    genes: Optional[str] = typer.Option(None, "--genes", "-g", help=f"Comma-separated panel sizes G (default {default_of('genes')})."),
    panel: Optional[str] = typer.Option(None, "--panel", help=f"Panel selector: hmhvg, hvg or file:PATH (default {default_of('panel')}). Fitted once per fold on its non-test slides."),
    split: Optional[str] = typer.Option(None, "--split", help=f"slide (leave-one-slide-out), patient, or file:PATH (default {default_of('split')})."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Comma-separated fold indices to run (default all)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help=f"Comma-separated seeds (default {default_of('seeds')})."),
    preset: Optional[Preset] = typer.Option(None, "--preset", help=f"Method preset (default {default_of('preset')}); tiny is for tests only."),
    device: Optional[str] = typer.Option(None, "--device", help=f"auto, cpu, cuda, cuda:N (default {default_of('device')})."),
    encoder: Optional[str] = typer.Option(None, "--encoder", help=f"Image encoder (default {default_of('encoder')})."),
    target_transform: Optional[TargetTransform] = typer.Option(None, "--target-transform", help=f"Target transform (default {default_of('target_transform')})."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="Worker processes; each gets an equal share of the CPUs, or one GPU each (default 1: in this process)."),
    results_dir: Optional[Path] = typer.Option(None, "--results-dir", help=f"Where results, artifacts and mlflow.db go (default ./{default_of('results_dir')})."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default sqlite:///<results-dir>/mlflow.db)."),
    suite: Optional[str] = typer.Option(None, "--suite", help=f"Suite name: one MLflow experiment per suite (default {default_of('suite')})."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML config file with a run table and methods.NAME override tables; the command line wins."),
    allow_patient_overlap: Optional[bool] = typer.Option(None, "--allow-patient-overlap/--no-allow-patient-overlap", help="Allow folds whose test patient is also in train (default: only where the dataset documents it)."),
    force: Optional[bool] = typer.Option(None, "--force/--no-force", help="Recompute finished cells (default no)."),
    fail_fast: Optional[bool] = typer.Option(None, "--fail-fast/--no-fail-fast", help="Stop at the first failed cell (default no)."),
    patch_um: Optional[float] = typer.Option(None, "--patch-um", help=f"Patch side in micrometres of tissue (default {default_of('patch_um')})."),
    patch_px: Optional[int] = typer.Option(None, "--patch-px", help=f"Patch side in pixels after resampling (default {default_of('patch_px')})."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the grid, what is finished and an estimated time; compute and write nothing."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
):
    """Run a benchmark grid: datasets x G x methods x folds x seeds. Finished cells are skipped."""
    try:
        from flag_bench.config import build_config

        cli = dict(
            datasets=dataset_list(datasets), methods=csv_list(methods, what="--methods"),
            genes=csv_list(genes, int, "--genes"), panel=panel, split=split, folds=csv_list(folds, int, "--folds"),
            seeds=csv_list(seeds, int, "--seeds"), preset=preset, device=device, encoder=encoder,
            target_transform=target_transform, results_dir=str(results_dir) if results_dir else None,
            tracking_uri=tracking_uri, suite=suite, allow_patient_overlap=allow_patient_overlap,
            force=force, fail_fast=fail_fast, workers=workers, patch_um=patch_um, patch_px=patch_px,
        )
        cfg = build_config(config, cli)
        if dry_run:
            from flag_bench.dryrun import dry_run as plan_only

            out = console()
            plan_only(cfg, lambda line: out.print(line, markup=False, highlight=False, soft_wrap=True))
            return
        from flag_bench.driver import Driver

        con = console()
        summary = Driver(cfg, console=con, progress=not no_progress).run()
    except UserError as exc:
        fail(str(exc))
        return
    _print_summary(con, summary, cfg)
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
