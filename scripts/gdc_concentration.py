"""Do spot–spot gene correlations concentrate as G grows? The model-free check of the Gene
Dimension Curse's mechanism (flag-spec §3.6), on her2st-mini.

    python scripts/gdc_concentration.py [--write FILE] [--genes 10,20,50,100,200,400,800] [--seed 0]

For each her2st-mini slide and each G, the slide's targets are built exactly as a cell of the
harness builds them: the HMHVG panel of size G fitted by ``FoldBuilder`` on the non-test slides of
the fold that tests this slide (C2-C6: ``--split slide``, i.e. the other four sections of patient
C; B4: ``--split patient``, i.e. C2-C6, since patient B has no other slide), then log2(1 + count)
(``--target-transform log2p1``). On that (n_spots, G) matrix, ``spot_correlation_spread`` gives
the spread of the off-diagonal spot–spot Pearson correlations across genes (the edge targets A of
flag-joint), and the same on a gene-shuffled null: each gene's values permuted across the slide's
spots independently, which keeps every gene's distribution (so its mean level: the shared
mean profile that makes all spots correlate) and destroys every spot-level structure.

If the real correlations concentrated "like 1/sqrt(G)", their sd would fall with a log-log slope
near -0.5 as the null's does; if the slide has structure that more genes only measure better,
the real sd stays put while the null's shrinks. The second table gives those slopes. No model is
trained; it runs in seconds.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

from flag_bench.datasets import her2st_mini
from flag_bench.datasets.base import PatchSpec
from flag_bench.datasets.fold import FoldBuilder, FoldSpec
from flag_bench.datasets.panels import HMHVG
from flag_bench.datasets.splits import make_split
from flag_bench.metrics.concentration import spot_correlation_spread
from flag_bench.spec import PanelSpec, SplitSpec, TargetTransform

GENES = (10, 20, 50, 100, 200, 400, 800)
TRANSFORM = TargetTransform.LOG2P1


def slide_folds(ds):
    """slide id -> the harness fold that tests it: --split slide for C2-C6, --split patient for B4."""
    folds = {}
    for scheme in ("slide", "patient"):
        for f in make_split(ds, SplitSpec(scheme)).folds:
            for sid in f.test:
                folds.setdefault(sid, (scheme, f))
    return folds


def spreads(ds, genes, seed: int):
    """Rows (slide, split, G, real stats, null stats), slides in dataset order."""
    builder = FoldBuilder(ds, patch=PatchSpec(112, 32), encoder=None, device="cpu", cache_dir=None)
    folds = slide_folds(ds)
    rows = []
    for sid in ds.slide_ids:
        scheme, fold = folds[sid]
        rng = np.random.default_rng([seed, ds.slide_ids.index(sid)])
        for g in genes:
            views = builder.build(FoldSpec(PanelSpec("hmhvg"), int(g), fold, TRANSFORM), HMHVG(), embeddings=False)
            (x,) = views.truths
            null = np.column_stack([rng.permutation(col) for col in np.asarray(x, dtype=np.float64).T])
            rows.append((sid, scheme, ",".join(fold.non_test), int(g), spot_correlation_spread(x),
                         spot_correlation_spread(null)))
    return rows


def slope(gs, values) -> float:
    """Least-squares slope of log(value) on log(G) (-0.5: falls like 1/sqrt(G))."""
    ok = [(math.log(g), math.log(v)) for g, v in zip(gs, values) if v > 0 and np.isfinite(v)]
    if len(ok) < 2:
        return float("nan")
    lg, lv = map(np.array, zip(*ok))
    return float(np.polyfit(lg, lv, 1)[0])


def f3(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"


def md(header, rows) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def render(rows, seed: int, seconds: float) -> str:
    out = ["### Spot–spot gene correlations against G, her2st-mini (model-free)\n",
           f"Targets: log2(1 + count) on the HMHVG-G panel fitted on the fold's non-test slides "
           f"(C2-C6: `--split slide`, the other sections of patient C; B4: `--split patient`, C2-C6). "
           f"r = Pearson across the G genes for each pair of spots (flag-joint's edge target A). "
           f"null = each gene permuted across the slide's spots (seed {seed}). sd over spot pairs "
           f"(ddof 0); IQR; mean |r|; [q05, q95]. 1/sqrt(G-1): the sd of r between two spots with "
           f"independent, identically distributed genes.\n"]
    table = []
    for sid, scheme, train, g, r, n in rows:
        const = f" ({r['n_constant']} const.)" if r["n_constant"] else ""
        table.append([sid, str(g), f"{r['n_used']}{const}", f3(r["mean"]), f3(r["sd"]), f3(r["iqr"]),
                      f3(r["mean_abs"]), f"[{f3(r['q05'])}, {f3(r['q95'])}]", f3(n["mean"]), f3(n["sd"]),
                      f3(n["iqr"]), f"[{f3(n['q05'])}, {f3(n['q95'])}]", f3(r["sd"] / n["sd"]),
                      f3(1 / math.sqrt(g - 1))])
    out.append(md(["slide", "G", "spots", "mean r", "sd r", "IQR r", "mean abs r", "r [q05, q95]", "null mean",
                   "null sd", "null IQR", "null [q05, q95]", "sd / null sd", "1/sqrt(G-1)"], table))
    out.append("\n**Log-log slope of the sd of r against G** (least squares over the G above; -0.5 = "
               "concentrates like 1/sqrt(G), 0 = does not concentrate), and the sd at the smallest and "
               "largest G\n")
    srows = []
    by_slide: dict[str, list] = {}
    for row in rows:
        by_slide.setdefault(row[0], []).append(row)
    for sid, rs in by_slide.items():
        gs = [r[3] for r in rs]
        real = [r[4]["sd"] for r in rs]
        null = [r[5]["sd"] for r in rs]
        srows.append([sid, rs[0][1], rs[0][2], f3(slope(gs, real)), f3(slope(gs, null)),
                      f"{f3(real[0])} -> {f3(real[-1])}", f"{f3(null[0])} -> {f3(null[-1])}"])
    out.append(md(["slide", "fold's split", "panel fitted on", "slope real", "slope null",
                   f"sd real G={rows[0][3]} -> {rows[-1][3]}", f"sd null G={rows[0][3]} -> {rows[-1][3]}"], srows))
    out.append(f"\n({len(rows)} slide x G pairs in {seconds:.1f} s.)\n")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", type=Path, help="also write the markdown to FILE")
    ap.add_argument("--genes", default=",".join(map(str, GENES)), help="comma-separated G (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the gene-shuffled null (default 0)")
    a = ap.parse_args(argv)
    genes = sorted({int(g) for g in a.genes.split(",") if g.strip()})
    if not genes or genes[0] < 2:
        ap.error("--genes: every G must be >= 2")
    t0 = time.perf_counter()
    rows = spreads(her2st_mini.load(), genes, a.seed)
    text = render(rows, a.seed, time.perf_counter() - t0)
    if a.write:
        a.write.write_text(text)
    sys.stdout.write(text + (f"\n(written to {a.write})\n" if a.write else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
