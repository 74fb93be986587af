"""`flag-bench run --dry-run`: the plan, what is finished, what is left and how long it may take.

It validates and expands the grid exactly as a run would, reads the results dir if there is
one, and writes nothing: no results dir, no MLflow database, no embeddings, no claims.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from flag_bench.config import RunConfig
from flag_bench.estimate import Estimator, human
from flag_bench.plan import CellTask, Plan, plan_grid
from flag_bench.store import ResultsStore


def _finished(store: ResultsStore, tasks: list[CellTask]) -> set[str]:
    if not store.cells.is_dir():
        return set()
    return {t.cell.cell_id for t in tasks if store.record_path(t.cell.cell_id).exists() and
            store.finished(t.cell.cell_id)}


def _to_encode(cfg: RunConfig, plan: Plan, todo: list[CellTask], device: str) -> tuple[int, int]:
    """(slides, spots) whose embeddings the run would compute first."""
    from flag_bench import resolve
    from flag_bench.datasets.embed_cache import SlideRef, is_cached

    encoder = resolve.encoder(cfg.encoder)
    slides: set[tuple[str, str]] = set()
    for t in todo:
        if t.needs_embeddings:
            f = t.fold.fold
            slides.update((t.dataset.key, s) for s in (*f.train, *f.val, *f.test))
    n_slides = n_spots = 0
    for key, sid in sorted(slides):
        ds = plan.datasets[key]
        if not is_cached(SlideRef.of(ds, sid), encoder, todo[0].patch, device=device):
            n_slides += 1
            n_spots += ds.slide(sid).n_spots
    return n_slides, n_spots


def dry_run(cfg: RunConfig, print_line) -> Plan:
    from flag_bench.executors import cell_device

    # the device the cells would run on: an engine that runs them elsewhere (a cluster's GPU nodes,
    # seen from a CPU login node) is not checked against this machine, as the real run does not
    device = cell_device(cfg)
    # light: torch-free method stand-ins (a dry run fits nothing); the same cells and configs
    plan = plan_grid(cfg, device=device, provenance={}, results_dir=cfg.results_dir, light=True)
    store = ResultsStore(cfg.results_dir)
    done = _finished(store, plan.tasks)
    todo = [t for t in plan.tasks if cfg.force or t.cell.cell_id not in done]
    est = Estimator(store.records() if store.cells.is_dir() else ())
    n_folds = len({t.cell.fold for t in plan.tasks})
    methods = list(dict.fromkeys(t.cell.method for t in plan.tasks))
    print_line(f"dry run: nothing is computed or written. Grid: {len(cfg.datasets)} dataset(s) x "
               f"{len(cfg.genes)} G x {len(methods)} method(s) x {n_folds} fold(s) x {len(cfg.seeds)} seed(s) "
               f"= {len(plan.tasks)} cells on {device}, preset {cfg.preset}")
    groups: dict[tuple, list[CellTask]] = defaultdict(list)
    for t in plan.tasks:
        groups[(t.cell.dataset_spec, t.cell.n_genes, t.cell.method)].append(t)
    print_line(f"  {'dataset':<14} {'G':>5}  {'method':<16} {'cells':>5} {'done':>5}  estimate")
    for (ds, g, m), tasks in groups.items():
        left = [t for t in tasks if t in todo]
        secs, unknown = est.total(left)
        guess = "nothing left" if not left else (human(secs) if not unknown else
                                                 (f"{human(secs)} + {unknown} unknown" if secs else "unknown"))
        print_line(f"  {ds[:14]:<14} {g:>5}  {m[:16]:<16} {len(tasks):>5} {len(tasks) - len(left):>5}  {guess}")
    slides, spots = _to_encode(cfg, plan, todo, device) if todo else (0, 0)
    if slides:
        print_line(f"first, encode {spots} patches of {slides} slide(s) with {cfg.encoder} (cached afterwards)")
    secs, unknown = est.total(todo)
    print_line(f"{len(done)} of {len(plan.tasks)} cells already finished in {Path(cfg.results_dir)}; "
               f"{len(todo)} to run" + (f", about {human(secs)} by earlier records" if secs else "")
               + (f" ({unknown} cell(s) have no earlier record to estimate from)" if unknown else ""))
    busy = est.busy(todo)
    if busy:
        print_line(f"  {busy} of them estimated from cells timed on a busy machine only (contended: other "
                   "processes used their cores), so likely too long")
    return plan
