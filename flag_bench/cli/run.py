"""`flag-bench run`: its options are RunConfig's declarations (flag_bench/options.py); it parses them
into a RunConfig and hands it to the Driver."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, List, Optional

import typer

from flag_bench.cli import app
from flag_bench.cli.common import console, csv_list, dataset_list, fail
from flag_bench.config import RunConfig, build_config
from flag_bench.errors import UserError
from flag_bench.options import CSV, CSV_INT, DATASETS, PATH, REPEAT, SWITCH, flag, help_text, options


def run(config: Optional[Path], dry_run: bool, no_progress: bool, **options: Any) -> None:
    """Run a benchmark grid: datasets x G x methods x folds x seeds. Finished cells are skipped."""
    try:
        cfg = build_config(config, parse_options(options, RunConfig))
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


# -- the command's options, derived from RunConfig's declarations (flag_bench/options.py) ----------
_CLI_TYPES = {CSV: str, CSV_INT: str, DATASETS: str, REPEAT: List[str], SWITCH: bool, PATH: Path}
COMMAND_ONLY = {  # options of the command that are not RunConfig fields
    "config": (Optional[Path], typer.Option(
        None, "--config", help="TOML config file: a [run] table with any of the options above "
                               "(underscores for dashes) and [methods.NAME] tables of per-method overrides; "
                               "the command line wins.")),
    "dry_run": (bool, typer.Option(False, "--dry-run", help="Print the grid, what is finished and an estimated "
                                                             "time; compute and write nothing.")),
    "no_progress": (bool, typer.Option(False, "--no-progress", help="No progress bars.")),
}


def parameters(cls: type) -> list[inspect.Parameter]:
    """One typer option per option of the config class ``cls``, then the command's own; every value
    defaults to None ("not given"), so a config file's value is kept unless the command line sets it."""
    params = []
    for name, opt in options(cls).items():
        names = [f"{flag(name)}/--no-{flag(name)[2:]}" if opt.cli == SWITCH else flag(name)]
        names += [opt.short] if opt.short else []
        kind = _CLI_TYPES.get(opt.cli, opt.cli_type)
        info = typer.Option(None, *names, help=help_text(cls, name))
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info,
                                        annotation=Optional[kind]))
    for name, (kind, info) in COMMAND_ONLY.items():
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=kind))
    return params


def parse_options(values: dict[str, Any], cls: type) -> dict[str, Any]:
    """Command-line values of ``cls``'s options as build_config takes them (None = not given)."""
    out: dict[str, Any] = {}
    for name, opt in options(cls).items():
        value = values.get(name)
        if value is None:
            out[name] = None
        elif opt.cli == DATASETS:
            out[name] = dataset_list(value)
        elif opt.cli in (CSV, CSV_INT):
            out[name] = csv_list(value, int if opt.cli == CSV_INT else str, flag(name))
        elif opt.cli == REPEAT:
            out[name] = tuple(value) or None
        elif opt.cli == PATH:
            out[name] = str(value)
        else:
            out[name] = value
    return out


def with_options(fn, cls: type):
    """``fn(**kwargs)`` with a signature typer reads as one option per declaration of ``cls``."""
    params = parameters(cls)
    fn.__signature__ = inspect.Signature(params)
    fn.__annotations__ = {p.name: p.annotation for p in params}
    return fn


def _print_summary(console, summary, cfg) -> None:
    if summary.detached:
        console.print(f"{summary.job_note}; its cells are claimed until they end. "
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
    if summary.interrupted and summary.job:
        console.print(f"{summary.executor} job {summary.job} keeps running: `flag-bench collect --results-dir "
                      f"{cfg.results_dir}` gathers its cells")
    if summary.unsaved_models:
        console.print(f"note: --save-models: {summary.unsaved_models} already finished cell(s) have no saved model "
                      "and were not recomputed; add --force to recompute them with their models")
    if summary.tracking_offline:
        console.print(f"[yellow]MLflow missed cells[/yellow] ({summary.tracking_offline}): `flag-bench sync-tracking "
                      f"--results-dir {cfg.results_dir} --tracking-uri {summary.tracking_uri}` logs them")
    from rich.markup import escape

    for desc, msg in summary.failed:  # a message may quote a TOML table ([methods.histogene]): not markup
        console.print(f"  [red]failed[/red] {escape(desc)}: {escape(msg)}")
    console.print(f"MLflow: {summary.tracking_uri} (parent run {summary.parent_run_id}); "
                  f"`flag-bench report --results-dir {cfg.results_dir}` prints the leaderboard")


app.command("run")(with_options(run, RunConfig))
