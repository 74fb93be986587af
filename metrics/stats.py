"""Statistics the report calls on metric values: bootstrap CIs, summaries, paired tests.

All functions take 1-D arrays of per-unit values (per slide, fold or seed: the caller picks
the unit) and drop non-finite entries, reporting how many values were used.

- ``bootstrap_ci``: percentile bootstrap of the mean. Resamples are drawn as
  ``np.random.default_rng(seed).integers(0, n, (n_boot, n))`` and the interval is taken with
  ``np.percentile`` (linear interpolation), which is what ``scipy.stats.bootstrap(...,
  method="percentile")`` does with the same generator; tests/test_stats.py checks the two agree.
- ``paired_wilcoxon``: Wilcoxon signed-rank test of a - b across paired cells.
  Zero/ties policy: pairs with a non-finite value in either method are dropped; zero
  differences are dropped before ranking (Wilcoxon's original treatment, scipy's
  ``zero_method="wilcox"``); tied |differences| get average ranks, and scipy then switches from
  the exact null to the normal approximation ("auto"). With fewer than 2 non-zero differences
  (including "all differences are zero") the test is undefined: statistic and p are NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def bootstrap_ci(values, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """(n,) values -> (low, high) percentile-bootstrap interval of the mean (deterministic).

    NaN bounds for fewer than two finite values (one value has no sampling spread to show).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    v = _finite(values)
    if v.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, (int(n_boot), v.size))
    means = v[idx].mean(axis=-1)
    alpha = (1.0 - level) / 2.0
    low, high = np.percentile(means, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(low), float(high)


@dataclass(frozen=True)
class Summary:
    """mean, std (ddof = 1, NaN for n < 2), bootstrap CI bounds and n of one report cell."""

    mean: float
    std: float
    ci_low: float
    ci_high: float
    n: int

    def format(self, digits: int = 3) -> str:
        """'mean ± std [low, high]' for a table cell."""
        if self.n == 0:
            return "nan"
        f = f"{{:.{digits}f}}"
        std = f.format(self.std) if math.isfinite(self.std) else "nan"
        return f"{f.format(self.mean)} ± {std} [{f.format(self.ci_low)}, {f.format(self.ci_high)}]"


def summarize(values, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Summary:
    """(n,) values -> Summary over the finite ones."""
    v = _finite(values)
    low, high = bootstrap_ci(v, n_boot=n_boot, level=level, seed=seed)
    mean = float(v.mean()) if v.size else float("nan")
    std = float(v.std(ddof=1)) if v.size > 1 else float("nan")
    return Summary(mean, std, low, high, int(v.size))


def paired_wilcoxon(a, b) -> tuple[float, float, int]:
    """Paired (n,) a and b -> (statistic, two-sided p, n used).

    n counts the pairs that enter the ranking (finite in both, non-zero difference).
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired values need one length, got {x.size} and {y.size}")
    d = (x - y)[np.isfinite(x) & np.isfinite(y)]
    d = d[d != 0]
    n = int(d.size)
    if n < 2:
        return float("nan"), float("nan"), n
    res = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="auto")
    return float(res.statistic), float(res.pvalue), n
