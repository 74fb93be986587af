"""Statistics for the leaderboard: bootstrap confidence intervals and paired method tests."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (1-D; NaNs dropped).

    Deterministic for a seed. Returns (nan, nan) for fewer than two finite values.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return float(lo), float(hi)


def paired_wilcoxon(a, b) -> tuple[float, float, int]:
    """Wilcoxon signed-rank test of paired scores (same cells, two methods).

    Pairs with a NaN are dropped. Zero differences follow scipy's ``zero_method='wilcox'``
    (dropped). Returns (statistic, two-sided p, n pairs used); NaNs when n < 2 or every
    difference is zero.
    """
    from scipy.stats import wilcoxon

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired scores need equal shapes, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    d = x[ok] - y[ok]
    n = int((d != 0).sum())
    if n < 2:
        return float("nan"), float("nan"), n
    res = wilcoxon(x[ok], y[ok], zero_method="wilcox", alternative="two-sided")
    return float(res.statistic), float(res.pvalue), n
