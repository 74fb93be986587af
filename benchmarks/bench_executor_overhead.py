"""Per-cell overhead of each executor: submission to record collected, tiny preset, a control.

For each engine the same grid (the `mean` control, tiny preset, a synthetic dataset, colour-stat
embeddings) runs twice into a fresh results dir: once computing N cells, once more as a no-op
rerun (planning, MLflow set-up, engine start, nothing to compute). Then

    wall per cell = (T_run - T_noop) / N

is submission to record collected, per cell of throughput (parallel engines run --parallel cells
at once), beside the mean compute time the cell itself recorded (record.costs.total_seconds: in a
fresh SLURM task it includes loading the dataset, which a long-lived process does once). T_noop
is the fixed cost per run (planning, MLflow set-up, engine start).

    python benchmarks/bench_executor_overhead.py [--cells 20] [--engines serial,pool,slurm,ray]
        [--parallel 2] [--start-slurm]

slurm needs SLURM client commands that reach a cluster (SLURM_CONF), or --start-slurm to start
the single-node test cluster of tests/services.py (as root, Debian's slurmctld/slurmd/munge).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from flag_bench.config import RunConfig
from flag_bench.driver import Driver
from flag_bench.store import ResultsStore


def grid(n_cells: int) -> dict:
    """A grid of n_cells `mean` cells: folds x seeds of a synthetic dataset."""
    slides = 4
    seeds = tuple(range(-(-n_cells // slides)))
    return dict(datasets=(f"synthetic:n_slides={slides},spots_per_slide=60,n_genes=40,seed=1",), methods=("mean",),
                genes=(10,), encoder="color-stats", preset="tiny", device="cpu", seeds=seeds)


def engine_config(engine: str, parallel: int) -> dict:
    if engine == "serial":
        return {}
    if engine == "pool":
        return {"workers": parallel}
    if engine == "slurm":
        return {"executor": "slurm", "slurm_array_parallelism": parallel}
    if engine == "ray":
        return {"executor": "ray"}
    raise SystemExit(f"unknown engine {engine}")


def measure(engine: str, n_cells: int, parallel: int, tmp: Path) -> dict:
    rd = tmp / engine
    cfg = RunConfig(**grid(n_cells), **engine_config(engine, parallel), results_dir=str(rd))
    t = time.perf_counter()
    s = Driver(cfg, progress=False).run()
    t_run = time.perf_counter() - t
    if s.failed:
        raise SystemExit(f"{engine}: {len(s.failed)} cell(s) failed: {s.failed[0]}")
    t = time.perf_counter()
    Driver(cfg, progress=False).run()
    t_noop = time.perf_counter() - t
    recs = list(ResultsStore(rd).records())
    compute = statistics.fmean(float(r.costs["total_seconds"]) for r in recs)
    return {"engine": engine, "cells": len(recs), "t_run": t_run, "t_noop": t_noop, "cell_compute": compute,
            "per_cell": (t_run - t_noop) / len(recs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=20)
    ap.add_argument("--engines", default="serial,pool,slurm,ray")
    ap.add_argument("--parallel", type=int, default=2, help="pool workers / SLURM array parallelism")
    ap.add_argument("--start-slurm", action="store_true")
    args = ap.parse_args()
    engines = args.engines.split(",")
    cluster = None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        import os

        os.environ.setdefault("FLAG_BENCH_CACHE", str(tmp / "cache"))
        if "slurm" in engines and args.start_slurm:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            import services

            cluster = services._slurm_start(tmp / "slurm-daemons")
            os.environ["SLURM_CONF"] = str(cluster.conf)
        # warm imports and the embedding cache so no engine pays them
        Driver(RunConfig(**grid(1), results_dir=str(tmp / "warm")), progress=False).run()
        try:
            rows = [measure(e, args.cells, args.parallel, tmp) for e in engines]
        finally:
            if cluster is not None:
                services.slurm_stop(cluster)
    print(f"{'engine':8} {'cells':>5} {'run s':>8} {'no-op s':>8} {'wall s/cell':>12} {'cell compute s':>15}")
    for r in rows:
        print(f"{r['engine']:8} {r['cells']:5d} {r['t_run']:8.2f} {r['t_noop']:8.2f} {r['per_cell']:12.3f} "
              f"{r['cell_compute']:15.3f}")


if __name__ == "__main__":
    main()
