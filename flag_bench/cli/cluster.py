"""`flag-bench collect`, `status` and `sync-tracking`: a results dir's cells outside `run`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flag_bench.cli import app
from flag_bench.cli.common import console, default_of, fail
from flag_bench.errors import UserError

RESULTS_HELP = f"The results dir of the grid (default ./{default_of('results_dir')})."


def _results_dir(results_dir: Optional[Path]) -> Path:
    from flag_bench.config import DEFAULT_RESULTS_DIR

    path = Path(results_dir or DEFAULT_RESULTS_DIR)
    if not (path / "cells").is_dir():
        raise UserError(f"--results-dir {path}: no flag-bench results there (no cells/ folder); pass the --results-dir "
                        "the grid ran with")
    return path


def _suite(store, suite: Optional[str]) -> str:
    """--suite, else the suite the latest plan in the results dir ran with."""
    if suite:
        return suite
    plans = store.plans()
    return str(plans[-1]["grid_spec"].get("suite", "default")) if plans else "default"


@app.command()
def collect(
    results_dir: Optional[Path] = typer.Option(None, "--results-dir", help=RESULTS_HELP),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: the one the grid was submitted with, its password from the environment (README: Credentials), else sqlite:///<results-dir>/mlflow.db)."),
    suite: Optional[str] = typer.Option(None, "--suite", help="Suite (MLflow experiment) to log into (default: the one the grid was submitted with)."),
    trust_results_dir: bool = typer.Option(False, "--trust-results-dir", help="Collect even from a results dir that others can write (group- or world-writable, or owned by another user): collect unpickles the SLURM result files there, so whoever can write them can run code as you."),
):
    """Gather finished SLURM array tasks into the store and MLflow. Safe to repeat while jobs run.

    It unpickles submitit's result files under <results-dir>/slurm/jobs: a results dir that
    others can write is refused (exit 2) unless --trust-results-dir is given."""
    try:
        from flag_bench.cluster import detached_work
        from flag_bench.driver import persist
        from flag_bench.store import ResultsStore
        from flag_bench.tracking import Tracker, default_tracking_uri

        rd = _results_dir(results_dir)
        # each engine checks what collecting reads (unless trusted) and that it has submissions here
        work = detached_work(rd, trusted=trust_results_dir)
        store = ResultsStore(rd)
        out = console()
        last = work[-1][1]
        uri = tracking_uri or last["tracking_uri"] or default_tracking_uri(rd)
        with store.creation_lock():
            tracker = Tracker(uri, rd, suite or last["suite"] or _suite(store, None),
                              warn=lambda m: out.print(f"warning: {m}", markup=False, highlight=False, soft_wrap=True))
        n = {"tasks": 0, "records": 0, "busy": 0}
        for engine, _ in work:
            got = engine.collect_detached(store, lambda rec, parent: persist(store, tracker, rec, parent))
            n = {k: v + got.get(k, 0) for k, v in n.items()}
    except UserError as exc:
        fail(str(exc))
        return
    busy = f"; {n['busy']} submission(s) left to the run collecting them now" if n["busy"] else ""
    out.print(f"collected {n['records']} record(s) from {n['tasks']} finished array task(s){busy}", markup=False, soft_wrap=True)
    _print_status(out, rd)


@app.command()
def status(results_dir: Optional[Path] = typer.Option(None, "--results-dir", help=RESULTS_HELP)):
    """Pending / running / finished / failed cells of a results dir (SLURM jobs included)."""
    try:
        rd = _results_dir(results_dir)
        _print_status(console(), rd)
    except UserError as exc:
        fail(str(exc))


def _print_status(out, rd: Path) -> None:
    from flag_bench.cluster.status import cell_states

    counts, notes = cell_states(rd)
    line = " ".join(f"{k}={v}" for k, v in counts.items())
    out.print(f"{rd}: {line}", markup=False, highlight=False, soft_wrap=True)
    for note in notes:
        out.print(f"  {note}", markup=False, highlight=False, soft_wrap=True)


@app.command("sync-tracking")
def sync_tracking(
    results_dir: Optional[Path] = typer.Option(None, "--results-dir", help=RESULTS_HELP),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default sqlite:///<results-dir>/mlflow.db)."),
    suite: Optional[str] = typer.Option(None, "--suite", help="Suite (MLflow experiment) (default: the suite of the latest run in the results dir)."),
):
    """Log finished cells that the tracking server is missing (it was down mid-grid); no duplicates."""
    try:
        from flag_bench.store import ResultsStore
        from flag_bench.tracking import Tracker, default_tracking_uri

        rd = _results_dir(results_dir)
        store = ResultsStore(rd)
        uri = tracking_uri or default_tracking_uri(rd)
        with store.creation_lock():
            tracker = Tracker(uri, rd, _suite(store, suite))
        n = tracker.sync(store)
    except UserError as exc:
        fail(str(exc))
        return
    console().print(f"logged {n} cell(s) missing from {tracker.shown_uri}", markup=False, highlight=False,
                    soft_wrap=True)
