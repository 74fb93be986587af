"""`flag-bench run`: parse the options into a RunConfig and hand it to the Driver."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

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
    split: Optional[str] = typer.Option(None, "--split", help="default (each dataset's own: patient where patients are known, a HEST-Benchmark task's folds, her2st-mini's leave-one-slide-out), slide, patient, hest, or file:PATH (default: default)."),
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
    executor: Optional[str] = typer.Option(None, "--executor", help="Where cells run: local (this machine; --workers for a pool), slurm (a submitit job array) or ray (default local)."),
    max_retries: Optional[int] = typer.Option(None, "--max-retries", help="SLURM: requeues of a timed-out or preempted task (default 1); Python errors are never retried."),
    detach: Optional[bool] = typer.Option(None, "--detach/--no-detach", help="SLURM: submit and return; `flag-bench collect` gathers the results later."),
    slurm_partition: Optional[str] = typer.Option(None, "--slurm-partition", help="SLURM partition."),
    slurm_time: Optional[int] = typer.Option(None, "--slurm-time", help="Wall-clock limit per array task, in minutes (default 60)."),
    slurm_gpus_per_task: Optional[int] = typer.Option(None, "--slurm-gpus-per-task", help="GPUs per array task (default 1 when --device is cuda, else none)."),
    slurm_cpus_per_task: Optional[int] = typer.Option(None, "--slurm-cpus-per-task", help="CPUs per array task; torch/OpenMP/BLAS threads follow it (default 1)."),
    slurm_mem: Optional[str] = typer.Option(None, "--slurm-mem", help="Memory per array task, e.g. 16G."),
    slurm_array_parallelism: Optional[int] = typer.Option(None, "--slurm-array-parallelism", help="Array tasks running at once (SLURM's %N)."),
    slurm_qos: Optional[str] = typer.Option(None, "--slurm-qos", help="SLURM QOS."),
    slurm_account: Optional[str] = typer.Option(None, "--slurm-account", help="SLURM account."),
    slurm_extra: Optional[List[str]] = typer.Option(None, "--slurm-extra", help="Any other sbatch option as key=value (repeatable), e.g. constraint=a100."),
    slurm_batch: Optional[int] = typer.Option(None, "--slurm-batch", help="Cells per array task (default 1)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join (e.g. auto or ray://host:10001; default: a local Ray cluster sized to this process's CPUs)."),
    ray_cpus_per_cell: Optional[int] = typer.Option(None, "--ray-cpus-per-cell", help="Ray: CPUs reserved per cell; its threads follow it (default 1)."),
    isolate: Optional[bool] = typer.Option(None, "--isolate/--no-isolate", help="Fit and predict each cell in a fresh process that receives only the method's inputs (no dataset, no test truth, no caller frames); scoring stays here. Same numbers; a few seconds more per cell: a fresh Python importing torch (default no)."),
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
            executor=executor, max_retries=max_retries, detach=detach, slurm_partition=slurm_partition,
            slurm_time=slurm_time, slurm_gpus_per_task=slurm_gpus_per_task, slurm_cpus_per_task=slurm_cpus_per_task,
            slurm_mem=slurm_mem, slurm_array_parallelism=slurm_array_parallelism, slurm_qos=slurm_qos,
            slurm_account=slurm_account, slurm_extra=tuple(slurm_extra) if slurm_extra else None,
            slurm_batch=slurm_batch, ray_address=ray_address, ray_cpus_per_cell=ray_cpus_per_cell,
            isolate=isolate,
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
    if summary.detached:
        console.print(f"submitted SLURM job array {summary.slurm_job}; its cells are claimed until they end. "
                      f"`flag-bench status --results-dir {cfg.results_dir}` shows progress, `flag-bench collect "
                      f"--results-dir {cfg.results_dir}` gathers finished cells (repeatable), rerunning this "
                      "command resubmits failed ones")
        return
    n_fail = len(summary.failed)
    elsewhere = f", {summary.elsewhere} being computed by another run" if summary.elsewhere else ""
    if summary.elsewhere_hosts:
        from flag_bench.store import CLAIM_TTL_S

        hosts = ", ".join(f"{n} on host {h}" for h, n in sorted(summary.elsewhere_hosts.items()))
        elsewhere += (f" ({hosts}: a run there holds them; they are taken over once its claims are not "
                      f"refreshed for {CLAIM_TTL_S:.0f} s)")
    console.print(
        f"done: {summary.ok} computed, {summary.skipped} already finished, {n_fail} failed{elsewhere}"
        + (" (interrupted: finished cells are saved; rerun to resume)" if summary.interrupted else "")
    )
    if summary.interrupted and summary.slurm_job:
        console.print(f"SLURM job array {summary.slurm_job} keeps running: `flag-bench collect --results-dir "
                      f"{cfg.results_dir}` gathers its cells")
    if summary.tracking_offline:
        console.print(f"[yellow]MLflow missed cells[/yellow] ({summary.tracking_offline}): `flag-bench sync-tracking "
                      f"--results-dir {cfg.results_dir} --tracking-uri {summary.tracking_uri}` logs them")
    from rich.markup import escape

    for desc, msg in summary.failed:  # a message may quote a TOML table ([methods.histogene]): not markup
        console.print(f"  [red]failed[/red] {escape(desc)}: {escape(msg)}")
    console.print(f"MLflow: {summary.tracking_uri} (parent run {summary.parent_run_id}); "
                  f"`flag-bench report --results-dir {cfg.results_dir}` prints the leaderboard")
