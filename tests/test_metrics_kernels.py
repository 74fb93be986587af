"""The shared kernels: one constancy rule and one Pearson, checked against scipy.stats.pearsonr.

The constants 0.1, 2.7 and log1p(1) are not exactly representable, so a float64 column of them
centres to rounding noise rather than 0: the case the old exact-zero-spread test got wrong.
"""

from __future__ import annotations

import ast
import pathlib
import warnings

import numpy as np
import pytest
from scipy import stats

from flag_bench.metrics import domains, kernels, moran, structure
from flag_bench.metrics.base import SlideContext
from flag_bench.metrics.core import PCC, PCC_POOLED
from flag_bench.metrics.kernels import constant_columns, correlation_score, pearson_columns

CONSTANTS = (0.1, 2.7, float(np.log1p(1.0)))
TOL = {np.float64: 1e-12, np.float32: 1e-6}


def _degenerate_pair(dtype, n=120, seed=0):
    """(N, 8) truth and prediction: columns 0-2 constant truths, 3 constant prediction,
    4 identical constant truth and prediction, 5-7 ordinary."""
    rng = np.random.default_rng(seed)
    y = rng.gamma(2.0, 1.0, size=(n, 8))
    yh = 0.5 * y + rng.normal(size=(n, 8))
    for j, c in enumerate(CONSTANTS):
        y[:, j] = c
    yh[:, 3] = 2.7
    y[:, 4] = yh[:, 4] = np.log1p(1.0)
    return y.astype(dtype), yh.astype(dtype)


def _pearsonr(a, b):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input and returns NaN
        return float(stats.pearsonr(a, b)[0])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_constant_float_columns_are_constant(dtype):
    y, _ = _degenerate_pair(dtype)
    # the trap: the centred spread is not exactly zero for these constants
    assert constant_columns(y).tolist() == [True, True, True, False, True, False, False, False]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pearson_columns_matches_pearsonr_and_the_convention(dtype):
    y, yh = _degenerate_pair(dtype)
    r, valid = pearson_columns(y, yh)
    assert r.dtype == np.float64 and r.shape == valid.shape == (8,)
    assert valid.tolist() == [False, False, False, True, False, True, True, True]
    assert np.isnan(r[[0, 1, 2, 4]]).all()  # identical constants: excluded, not r = 1
    assert r[3] == 0.0  # constant prediction: no credit (pearsonr would say NaN)
    for j in (5, 6, 7):
        assert abs(r[j] - _pearsonr(y[:, j], yh[:, j])) < TOL[dtype]
    assert np.isnan(_pearsonr(y[:, 0], yh[:, 0]))  # scipy agrees the truth column is constant


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("metric", [PCC, PCC_POOLED])
def test_pcc_excludes_and_counts_constant_truths(dtype, metric):
    y, yh = _degenerate_pair(dtype)
    s = metric.compute(y, yh, SlideContext("s", None, tuple("abcdefgh")))
    ref = [0.0] + [_pearsonr(y[:, j], yh[:, j]) for j in (5, 6, 7)]
    key = "pcc_mean" if metric is PCC else "pcc_pooled"
    assert s.values[key] == pytest.approx(np.mean(ref), abs=TOL[dtype])
    if metric is PCC:
        assert s.notes == {"n_valid_genes": 4, "n_const_true": 4}


def test_pearson_columns_clips_and_keeps_tiny_real_variation():
    x = np.array([[1.0], [np.nextafter(1.0, 2.0)], [1.0]])
    assert not constant_columns(x)[0]
    r, valid = pearson_columns(x, x)
    assert valid[0] and r[0] == 1.0


def test_pearson_columns_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        pearson_columns(np.zeros((3, 2)), np.zeros((3, 3)))


def test_constant_columns_with_no_rows_marks_every_column():
    assert constant_columns(np.zeros((0, 3))).tolist() == [True] * 3


@pytest.mark.parametrize("c", CONSTANTS)
def test_correlation_score_uses_the_same_rule(c):
    rng = np.random.default_rng(1)
    v = rng.normal(size=50)
    const = np.full(50, c)
    assert np.isnan(correlation_score(const, v)[0])
    assert np.isnan(correlation_score(const, const)[0])
    assert correlation_score(v, const) == (0.0, "the prediction side is constant (scored 0)")
    assert np.isnan(correlation_score(v[:1], v[:1])[0])


def test_correlation_score_matches_pearsonr():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=80), rng.normal(size=80)
    assert correlation_score(a, a + b)[0] == pytest.approx(_pearsonr(a, a + b), abs=1e-12)


def test_one_rule_one_home():
    # every metric module uses the kernels' objects, not copies
    assert moran.constant_columns is kernels.constant_columns
    assert structure.constant_columns is domains.constant_columns is kernels.constant_columns
    assert structure.validate_pair is domains.validate_pair is kernels.validate_pair
    assert structure.correlation_score is kernels.correlation_score


def test_metrics_import_nothing_from_the_harness_but_errors():
    root = pathlib.Path(kernels.__file__).parent
    allowed = ("flag_bench.errors", "flag_bench.metrics")
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] == "flag_bench":
                    assert name.startswith(allowed), f"{path.name} imports {name}"
