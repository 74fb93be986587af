"""Harness overhead per cell: everything but fit and predict (data views, panel fit, scoring,
artifacts, the atomic record write and MLflow logging), on her2st-mini at G = 200.

The `mean` control makes fit/predict negligible, so the wall time between two finished cells
minus fit and predict is what the harness itself costs. The embedding cache is warmed first so
the one-time encoder pass is not counted (it is amortised over every cell and run).

    python benchmarks/bench_harness_overhead.py [--genes 200] [--methods mean]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from flag_bench.config import RunConfig
from flag_bench.driver import Driver


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--genes", type=int, default=200)
    ap.add_argument("--methods", default="mean")
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument("--dataset", default="her2st-mini")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = RunConfig(datasets=(args.dataset,), methods=tuple(args.methods.split(",")), genes=(args.genes,),
                         device="cpu", encoder=args.encoder, results_dir=str(Path(tmp) / "warm"))
        t = time.perf_counter()
        Driver(base.replace(genes=(10,))).run()  # warms the embedding cache and the imports
        print(f"warm-up (embeddings, imports, MLflow store creation): {time.perf_counter() - t:.1f} s")
        stamps, recs = [], []

        def hook(rec):
            stamps.append(time.perf_counter())
            recs.append(rec)

        cfg = base.replace(results_dir=str(Path(tmp) / "run"))
        driver = Driver(cfg, after_cell=hook)
        t0 = time.perf_counter()
        summary = driver.run()
        assert summary.ok == len(recs), summary.failed
        # cell i (i >= 1) spans from the end of cell i-1 to its own end, so it includes the record
        # write and MLflow logging; the first cell also carries per-invocation setup and is left out
        rows = []
        for i in range(1, len(recs)):
            c = recs[i].costs
            wall = stamps[i] - stamps[i - 1]
            fp = c["fit_seconds"] + c["predict_seconds"]
            rows.append((recs[i].cell.fold, wall, fp, wall - fp))
        print(f"invocation start -> first cell done: {stamps[0] - t0:.2f} s (setup, not counted)")
        print(f"{'fold':<14}{'wall s':>9}{'fit+pred s':>12}{'overhead s':>12}")
        for fold, wall, fp, ov in rows:
            print(f"{fold:<14}{wall:9.3f}{fp:12.3f}{ov:12.3f}")
        ovs = [r[3] for r in rows]
        print(f"overhead per cell at G={args.genes}: median {statistics.median(ovs):.3f} s, max {max(ovs):.3f} s "
              f"({len(rows)} cells; target <= 1 s)")


if __name__ == "__main__":
    main()
