"""Noise ceilings: how well any prediction could score against a test slide, given its counting noise.

A spot's counts are one noisy draw of its expression. Binomial thinning (p = 1/2) splits every
count into two independent half-depth replicates A and B of the same spots (for Poisson counts,
A and B are independent Poisson draws with half the rate). Scoring A against B measures the
agreement two half-depth measurements reach; the Spearman-Brown formula (rel = 2 s / (1 + s))
extends it to two full-depth measurements. Per slide:

- ``pcc_mean``: per gene r = Pearson(A, B); ceiling = mean over genes of sqrt(2 r / (1 + r))
  (r <= 0 gives 0): the correlation a prediction of the expected expression reaches with the
  full-depth truth. For Poisson counts on the identity scale this is exact in expectation,
  sqrt(var(rate) / (mean(rate) + var(rate))) (tests/test_ceilings.py checks the closed form).
- structure scores (``gsc``, ``gsc_cpm``, ``ssc``, ``ssc_spot``, ``lee_l``): the score s of A against B,
  then 2 s / (1 + s): the score a second, independent full-depth measurement of the same spots
  would get (a replicate ceiling). The expected expression has no such formula for these
  nonlinear statistics, and can score far from it: noise lowers each gene's Moran's I in the
  truth by its depth, so on smooth fields SSC(expected, truth) can sit near 0.1 while two
  replicates agree at 0.99. Checked on synthetic Poisson data against a simulated replicate
  (within 0.04 for every score there; SSC spot is the loosest, SB 0.40 against 0.44 at low depth).

Thinning is seeded from a fixed seed and the slide id, not the cell seed, so every cell of a fold
(every method, every seed) records the same ceiling. Counts must be non-negative integers;
otherwise every ceiling is NaN with the reason in the notes.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable, Mapping

import numpy as np

from flag_bench.metrics.base import Metric, SlideContext
from flag_bench.metrics.kernels import pearson_columns

CEILING_SEED = 20_261_206
PREFIX = "ceiling."
# scores whose replicate ceiling is recorded, computed by the registered metrics on the two halves
STRUCTURE_SCORES = ("gsc", "gsc_cpm", "ssc", "ssc_spot", "lee_l")

# (int counts (N, G), library (N,)) -> float targets
Transform = Callable[[np.ndarray, np.ndarray], np.ndarray]


def ceiling_name(score: str) -> str:
    """The score name a ceiling is recorded under ("ceiling.gsc")."""
    return PREFIX + score


def is_ceiling(name: str) -> bool:
    return name.startswith(PREFIX)


def spearman_brown(r):
    """Split-half reliability -> full-length reliability, 2 r / (1 + r); r <= 0 -> 0 (arrays too)."""
    r = np.asarray(r, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(r > 0, 2.0 * r / (1.0 + r), 0.0)
    return np.where(np.isfinite(r), out, np.nan)


def corrected(score: float) -> float:
    """A split-half agreement score -> the full-depth replicate ceiling Spearman-Brown(score)."""
    if not np.isfinite(score):
        return float("nan")
    return float(spearman_brown(score))


def split_halves(counts: np.ndarray, library: np.ndarray, rng: np.random.Generator):
    """Binomially thin integer counts (N, G) into two halves; the library (N,) (total over all genes,
    panel included) is split the same way. -> (A, B, library_A, library_B)."""
    c = np.asarray(counts, dtype=np.int64)
    lib = np.asarray(library, dtype=np.float64)
    a = rng.binomial(c, 0.5)
    rest = np.maximum(np.rint(lib).astype(np.int64) - c.sum(axis=1), 0)  # counts outside the panel
    rest_a = rng.binomial(rest, 0.5)
    lib_a = a.sum(axis=1) + rest_a
    lib_b = (c - a).sum(axis=1) + (rest - rest_a)
    return a, c - a, lib_a.astype(np.float64), lib_b.astype(np.float64)


def integer_counts_problem(counts: np.ndarray) -> str:
    """Why these counts cannot be thinned ('' when they can)."""
    c = np.asarray(counts)
    if c.size and (not np.all(np.isfinite(c)) or c.min() < 0):
        return "counts are negative or not finite"
    if c.size and not np.issubdtype(c.dtype, np.integer) and not np.all(c == np.rint(c)):
        return "counts are not integers (normalised values cannot be split into replicates)"
    return ""


def slide_ceilings(counts: np.ndarray, library: np.ndarray, transform: Transform, ctx: SlideContext,
                   metrics: Mapping[str, Metric]) -> tuple[dict[str, float], dict[str, Any]]:
    """Ceilings of one test slide: counts (N, G) integer panel counts, library (N,) the spots' totals;
    ``transform`` maps counts to the run's targets; ``metrics`` the registered metrics (by registry
    name) whose outputs get a ceiling. -> ({"ceiling.<score>": value}, notes)."""
    names = ["pcc_mean", *STRUCTURE_SCORES]
    why = integer_counts_problem(counts)
    if why:
        return {ceiling_name(n): float("nan") for n in names}, {"ceiling_reason": why}
    rng = np.random.default_rng([CEILING_SEED, zlib.crc32(ctx.slide_id.encode())])
    a, b, lib_a, lib_b = split_halves(counts, library, rng)
    ta = np.asarray(transform(a, lib_a), dtype=np.float64)
    tb = np.asarray(transform(b, lib_b), dtype=np.float64)
    r, valid = pearson_columns(ta, tb)
    rv = r[valid]
    out: dict[str, float] = {}
    notes: dict[str, Any] = {"ceiling_split_half_pcc": float(np.mean(rv)) if rv.size else float("nan")}
    out[ceiling_name("pcc_mean")] = float(np.mean(np.sqrt(spearman_brown(rv)))) if rv.size else float("nan")
    half: dict[str, float] = {}
    for m in metrics.values():
        wanted = {o.name for o in m.outputs} & set(STRUCTURE_SCORES)
        if not wanted or m.scope != "slide" or (m.needs_coords and ctx.coords_um is None):
            continue
        half.update({k: v for k, v in m.compute(ta, tb, ctx).values.items() if k in wanted})
    for name in STRUCTURE_SCORES:
        s = half.get(name, float("nan"))
        notes[f"ceiling_split_half_{name}"] = s
        out[ceiling_name(name)] = corrected(s)
    return out, notes
