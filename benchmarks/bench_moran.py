"""Structure-metric benchmarks (issue 3 acceptance).

Modes:
  python benchmarks/bench_moran.py            # 4,000 x 800: Moran's I vs esda per gene (ratio),
                                              # and the GSC + SSC + ARI/NMI suite time
  python benchmarks/bench_moran.py --scale    # 200,000 x 200 (Visium-HD-like bins): SSC and
                                              # Moran's I, peak memory via tracemalloc and ru_maxrss

Timings are wall clock, best of ``--repeats``; on a shared machine run it twice.
esda/libpysal are needed only for the ratio (test-only dependencies).
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc
import warnings

import numpy as np

from flag_bench.metrics.base import SlideContext
from flag_bench.metrics.domains import DOMAINS
from flag_bench.metrics.moran import morans_i
from flag_bench.metrics.spatial_weights import KNNWeights
from flag_bench.metrics.structure import GSC, SSC


def synthetic_slide(n: int, g: int, seed: int = 0, grid: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coords (N, 2), truth (N, G), prediction (N, G)) with spatial programs and noise."""
    rng = np.random.default_rng(seed)
    if grid:
        side = int(np.ceil(np.sqrt(n)))
        xy = np.stack(np.divmod(np.arange(n), side), 1).astype(np.float64) * 8.0  # 8 um bins
    else:
        xy = rng.uniform(0, 6000, size=(n, 2))
    span = xy.max() + 1.0
    waves = np.concatenate([np.sin(xy @ rng.normal(size=(2, 1)) * 20 / span + rng.uniform(0, 6)) for _ in range(6)], 1)
    load = rng.normal(size=(6, g)) * rng.uniform(0.1, 1.5, size=(1, g))
    truth = np.log1p(rng.poisson(np.exp(0.3 + 0.4 * waves @ load / np.sqrt(6)))).astype(np.float64)
    pred = truth + rng.normal(0, 0.4, size=truth.shape)
    return xy, truth, pred


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_ratio_and_suite(n: int, g: int, repeats: int) -> None:
    import esda
    import libpysal

    xy, truth, pred = synthetic_slide(n, g)
    wr = KNNWeights(6, symmetric=True, transform="R").build(xy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w_esda = libpysal.weights.WSP(KNNWeights(6, symmetric=True, transform="B").build(xy).matrix).to_W(
            silence_warnings=True
        )
    ours = _best(lambda: morans_i(truth, wr), repeats)
    res = morans_i(truth, wr)

    def run_esda():
        return [esda.Moran(truth[:, j], w_esda, transformation="r", permutations=0) for j in range(g)]

    esda.Moran(truth[:, 0], w_esda, transformation="r", permutations=0)  # warm W's cached moments
    t = time.perf_counter()
    refs = run_esda()
    theirs = time.perf_counter() - t
    diff_i = max(abs(r.I - res.I[j]) for j, r in enumerate(refs))
    diff_p = max(abs(r.p_rand - res.p_rand[j]) for j, r in enumerate(refs))
    print(f"[moran] {n} spots x {g} genes, symmetric kNN k=6, row-standardised, analytic inference")
    print(f"  flag-bench morans_i (all genes, I + both variances + p): {ours * 1e3:8.1f} ms (best of {repeats})")
    print(f"  esda.Moran per gene ({g} calls):                          {theirs * 1e3:8.1f} ms")
    print(f"  speed-up: {theirs / ours:.0f}x   max |dI| = {diff_i:.2e}   max |dp_rand| = {diff_p:.2e}")

    ctx = SlideContext("bench", xy, tuple(f"g{j}" for j in range(g)))
    parts = {}
    for metric in (GSC, SSC, DOMAINS):
        metric.compute(truth, pred, ctx)  # warm imports and thread pools
        parts[metric.name] = _best(lambda m=metric: m.compute(truth, pred, ctx), repeats)
    suite = []
    for _ in range(repeats):
        t = time.perf_counter()
        for metric in (GSC, SSC, DOMAINS):
            metric.compute(truth, pred, ctx)
        suite.append(time.perf_counter() - t)
    print(f"[suite] GSC (3 variants) + SSC (Moran's I x2, ssc@32, |dI|) + ARI/NMI (k-means x2) on {n} x {g}")
    print("  per metric (best): " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in parts.items()))
    print(f"  whole suite: best {min(suite):.3f} s, median {np.median(suite):.3f} s over {repeats} runs")


def bench_scale(n: int, g: int) -> None:
    xy, truth, pred = synthetic_slide(n, g, grid=True)
    inputs_mb = (truth.nbytes + pred.nbytes + xy.nbytes) / 2**20
    ctx = SlideContext("bench-hd", xy, tuple(f"g{j}" for j in range(g)))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    t = time.perf_counter()
    s = SSC.compute(truth, pred, ctx)
    t_ssc = time.perf_counter() - t
    _, peak_ssc = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    t = time.perf_counter()
    w = KNNWeights(6, symmetric=True, transform="R").build(xy)
    r = morans_i(truth, w)
    t_moran = time.perf_counter() - t
    _, peak_moran = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    dense_gb = n * n * 8 / 2**30
    print(f"[scale] {n} spots x {g} genes (grid bins), inputs {inputs_mb:.0f} MiB (truth + prediction, float64)")
    print(f"  SSC: {t_ssc:.2f} s, ssc = {s.values['ssc']:.4f}, peak traced extra memory {peak_ssc / 2**20:.0f} MiB")
    print(f"  morans_i (analytic, all genes): {t_moran:.2f} s, {int(np.isfinite(r.I).sum())} genes, "
          f"peak traced extra memory {peak_moran / 2**20:.0f} MiB")
    print(f"  process max RSS: {rss0:.0f} MiB before, {rss1:.0f} MiB after "
          f"(a dense N x N float64 W would be {dense_gb:.0f} GiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", action="store_true", help="run the 200,000 x 200 memory benchmark instead")
    ap.add_argument("--spots", type=int, default=None)
    ap.add_argument("--genes", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.scale:
        bench_scale(args.spots or 200_000, args.genes or 200)
    else:
        bench_ratio_and_suite(args.spots or 4_000, args.genes or 800, args.repeats)


if __name__ == "__main__":
    main()
