"""BLEEP retrieval over a large training bank, in chunks (issue 10 acceptance).

  python benchmarks/bench_bleep_retrieval.py                 # 100,000-spot bank, 5,000 queries
  python benchmarks/bench_bleep_retrieval.py --bank 20000 --check   # also compare to brute force

Reports wall time (best of ``--repeats``), the process's peak RSS above the inputs while
retrieving (sampled by flag_bench.measure.PeakRSS) and what one queries x bank score matrix would
have cost. Timings are wall clock on whatever else the machine runs: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from flag_bench.measure import PeakRSS
from flag_bench.methods.bleep.retrieval import retrieve


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bank", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=5_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--genes", type=int, default=200)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--method", default="average")
    ap.add_argument("--query-chunk", type=int, default=1024)
    ap.add_argument("--bank-chunk", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--check", action="store_true", help="compare with a dense top-k (small banks only)")
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(a.bank, a.dim, generator=g)
    values = torch.rand(a.bank, a.genes, generator=g)
    queries = torch.randn(a.queries, a.dim, generator=g)
    inputs_mb = sum(t.numel() * 4 for t in (keys, values, queries)) / 2**20
    best, peak = float("inf"), 0.0
    for _ in range(a.repeats):
        with PeakRSS() as mem:
            base = mem.peak
            t = time.perf_counter()
            out = retrieve(queries, keys, values, method=a.method, k=a.k, query_chunk=a.query_chunk,
                           bank_chunk=a.bank_chunk)
            best = min(best, time.perf_counter() - t)
        peak = max(peak, (mem.peak - base) / 2**20)
    dense_mb = a.queries * a.bank * 4 / 2**20
    print(f"bank {a.bank:,} x {a.dim}, {a.queries:,} queries, G {a.genes}, k {a.k} ({a.method}), "
          f"chunks {a.query_chunk} x {a.bank_chunk}, torch threads {torch.get_num_threads()}")
    print(f"  time {best:.2f} s ({a.queries / best:,.0f} queries/s); peak RSS above the inputs {peak:.0f} MB "
          f"(inputs {inputs_mb:.0f} MB; one dense queries x bank score matrix would be {dense_mb:,.0f} MB, "
          f"a bank x bank one {a.bank**2 * 4 / 2**30:,.1f} GB)")
    if a.check:
        cos = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(keys, dim=1).T
        idx = torch.sort(cos, dim=1, descending=True, stable=True).indices[:, : a.k]
        dense = values[idx].mean(1)
        print(f"  max |chunked - dense| = {float((out - dense).abs().max()):.2e}")


if __name__ == "__main__":
    main()
