"""What ``--isolate`` costs per cell: the same cells in-process and isolated, tiny presets.

Each cell of a small grid (``--methods`` x ``--datasets``, fold 0, ``--seeds`` seeds) runs twice
through the harness's cell path (``plan_grid`` + ``run_cell``, no MLflow), in-process and with
``isolate=True``, one after the other so both see the same machine load. Per method and dataset it
prints the median wall time of a cell each way, their difference (the overhead), the parent's
``isolate_seconds`` (spawn, imports, inputs sent and results back: the cell's wall time minus the
child's fit and predict) and the size of the pickled inputs, and checks the scores are equal.
A warm-up cell of each (dataset, method) runs in-process first and is not counted (first imports,
dataset load, embeddings).

    python benchmarks/bench_isolate.py [--methods mean,ridge,stem] [--datasets synthetic,her2st-mini]
        [--seeds 3]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

DATASETS = {
    "synthetic": ("synthetic:n_slides=4,spots_per_slide=60,n_genes=40,seed=1", 10),
    "her2st-mini": ("her2st-mini", 50),
}


def _plan(dataset: str, genes: int, method: str, seeds: int, isolate: bool, rd: Path):
    from flag_bench.config import RunConfig
    from flag_bench.plan import plan_grid

    cfg = RunConfig(datasets=(dataset,), methods=(method,), genes=(genes,), encoder="color-stats", preset="tiny",
                    device="cpu", results_dir=str(rd), folds=(0,), seeds=tuple(range(seeds)), isolate=isolate)
    return plan_grid(cfg, device="cpu", provenance={"flag_bench": "bench"}, results_dir=str(rd)).tasks


def _timed(task):
    from flag_bench.cell import run_cell

    t = time.perf_counter()
    rec = run_cell(task)
    wall = time.perf_counter() - t
    if not rec.ok:
        raise SystemExit(f"{task.description}: {rec.error.message}")
    return rec, wall


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="mean,ridge,stem")
    ap.add_argument("--datasets", default="synthetic,her2st-mini")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    from flag_bench.cluster.threads import granted_cpus, limit_threads

    os.environ.setdefault("FLAG_BENCH_ADAPT_THREADS", "0")  # the same thread count both ways
    limit_threads(granted_cpus())
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'dataset':<12} {'method':<6} {'cells':>5} {'in-process s':>12} {'isolated s':>10} {'overhead s':>10} "
          f"{'isolate_seconds':>15} {'inputs MB':>9} same")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("FLAG_BENCH_CACHE", str(Path(tmp) / "cache"))
        for ds_name in args.datasets.split(","):
            dataset, genes = DATASETS[ds_name]
            for method in args.methods.split(","):
                here = _plan(dataset, genes, method, args.seeds, False, Path(tmp) / f"{ds_name}-{method}-here")
                iso = _plan(dataset, genes, method, args.seeds, True, Path(tmp) / f"{ds_name}-{method}-iso")
                _timed(here[0])  # warm-up, not counted
                rows = []
                for a, b in zip(here, iso):
                    ra, wa = _timed(a)
                    rb, wb = _timed(b)
                    rows.append((wa, wb, rb.costs["isolate_seconds"], rb.costs["isolate_input_mb"],
                                 _same(ra.scores, rb.scores)))
                med = [statistics.median(r[i] for r in rows) for i in range(4)]
                print(f"{ds_name:<12} {method:<6} {len(rows):>5} {med[0]:>12.2f} {med[1]:>10.2f} {med[1] - med[0]:>10.2f} "
                      f"{med[2]:>15.2f} {med[3]:>9.2f} {all(r[4] for r in rows)}", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
