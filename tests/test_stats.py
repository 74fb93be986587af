"""Report statistics: bootstrap CI against scipy.stats.bootstrap, Wilcoxon against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from flag_bench.metrics.stats import bootstrap_ci, paired_wilcoxon, summarize


def test_bootstrap_ci_equals_scipy_percentile_bootstrap():
    v = np.random.default_rng(0).normal(0.4, 0.1, size=12)
    for seed, level in ((0, 0.95), (3, 0.9)):
        ref = stats.bootstrap(
            (v,), np.mean, n_resamples=2000, confidence_level=level, method="percentile",
            rng=np.random.default_rng(seed), vectorized=True,
        ).confidence_interval
        low, high = bootstrap_ci(v, n_boot=2000, level=level, seed=seed)
        assert low == pytest.approx(ref.low, abs=1e-12) and high == pytest.approx(ref.high, abs=1e-12)


def test_bootstrap_ci_is_deterministic_and_brackets_the_mean():
    v = np.random.default_rng(1).uniform(size=8)
    a, b = bootstrap_ci(v, seed=5), bootstrap_ci(v, seed=5)
    assert a == b and a[0] < v.mean() < a[1]
    assert bootstrap_ci(v, seed=6) != a
    narrow, wide = bootstrap_ci(v, level=0.5), bootstrap_ci(v, level=0.99)
    assert wide[0] < narrow[0] and narrow[1] < wide[1]


def test_bootstrap_ci_drops_nan_and_needs_two_values():
    v = np.array([0.1, np.nan, 0.3, 0.2, np.inf])
    assert bootstrap_ci(v) == bootstrap_ci([0.1, 0.3, 0.2])
    assert all(np.isnan(bootstrap_ci([0.5])))
    assert all(np.isnan(bootstrap_ci([])))
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], level=1.5)


def test_summarize_reports_mean_std_ci():
    v = [0.2, 0.4, np.nan, 0.6]
    s = summarize(v)
    assert s.n == 3 and s.mean == pytest.approx(0.4) and s.std == pytest.approx(0.2)
    assert (s.ci_low, s.ci_high) == bootstrap_ci(v)
    assert s.format(2).startswith("0.40 ± 0.20 [")
    one = summarize([0.7])
    assert one.n == 1 and np.isnan(one.std) and "nan" in one.format()


def test_paired_wilcoxon_equals_scipy():
    rng = np.random.default_rng(2)
    a = rng.normal(0.5, 0.1, size=15)
    b = a - rng.normal(0.05, 0.05, size=15)
    stat, p, n = paired_wilcoxon(a, b)
    ref = stats.wilcoxon(a - b)
    assert (stat, p, n) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue), 15)


def test_paired_wilcoxon_zero_and_nan_policy():
    a = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 0.4, np.nan])
    b = np.array([0.5, 0.5, 0.5, 0.6, 0.6, 0.5, 0.3])  # one zero difference, one NaN pair
    stat, p, n = paired_wilcoxon(a, b)
    ref = stats.wilcoxon((a - b)[1:6], zero_method="wilcox")
    assert n == 5 and stat == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    s, p, n = paired_wilcoxon([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    assert np.isnan(s) and np.isnan(p) and n == 0
    s, p, n = paired_wilcoxon([0.1, 0.2], [0.0, 0.2])
    assert np.isnan(p) and n == 1
    with pytest.raises(ValueError, match="one length"):
        paired_wilcoxon([1, 2], [1, 2, 3])
