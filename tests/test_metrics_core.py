"""Core pointwise metrics: per-gene PCC parity with scipy and the stated conventions (see also
test_metrics_kernels.py for the constant-column cases)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from flag_bench.metrics.base import SlideContext
from flag_bench.metrics.core import ERROR, PCC
from flag_bench.metrics.kernels import pearson_columns


def _pair(n=200, g=30, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.gamma(2.0, 1.0, size=(n, g))
    return y, 0.6 * y + rng.normal(scale=rng.uniform(0.1, 3.0, size=(1, g)), size=(n, g))


def test_pearson_columns_equals_scipy_pearsonr():
    y, yh = _pair()
    r, valid = pearson_columns(y, yh)
    ref = np.array([stats.pearsonr(y[:, g], yh[:, g])[0] for g in range(y.shape[1])])
    assert valid.all()
    assert np.max(np.abs(r - ref)) < 1e-12


def test_float32_inputs_give_the_float64_result():
    y, yh = _pair(seed=1)
    y32, yh32 = y.astype(np.float32), yh.astype(np.float32)
    r, _ = pearson_columns(y32, yh32)
    ref = np.array([stats.pearsonr(y32[:, g].astype(np.float64), yh32[:, g].astype(np.float64))[0] for g in range(30)])
    assert np.max(np.abs(r - ref)) < 1e-12


def test_constant_truth_excluded_constant_prediction_scores_zero():
    y, yh = _pair(g=6)
    y[:, 1] = 2.0
    yh[:, 4] = 0.5
    r, valid = pearson_columns(y, yh)
    assert not valid[1] and np.isnan(r[1])
    assert valid[4] and r[4] == 0.0
    s = PCC.compute(y, yh, SlideContext("s", None, tuple("abcdef")))
    assert s.notes == {"n_valid_genes": 5, "n_const_true": 1}
    assert s.values["pcc_mean"] == pytest.approx(np.mean(np.delete(r, 1)))


def test_error_metric_is_mean_over_spots_and_genes():
    y, yh = _pair(g=4)
    s = ERROR.compute(y, yh, SlideContext("s", None, tuple("abcd")))
    assert s.values["mse"] == pytest.approx(np.mean((y - yh) ** 2))
    assert s.values["mae"] == pytest.approx(np.mean(np.abs(y - yh)))
