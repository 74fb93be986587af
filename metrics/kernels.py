"""The numerical kernels every metric (and FLAG's validation) shares: one constancy rule, one Pearson.

Constancy rule (the only one in the project): a column is constant when ``max - min == 0``
exactly, with no tolerance. Testing the spread *after centring* instead is wrong in float64: a
column of 0.1 or log1p(1) centres to rounding noise (~1e-17), looks "valid" and scores r ~ 1e-16
(or r = 1 against the same constant). ``max - min`` of identical floats is exactly 0 in any
dtype, and any two distinct values give a positive range, so no tolerance is needed and none is
used: tiny but real variation is still variation.

Degenerate-input convention (stated once here, relied on by ``metrics.core`` and
``metrics.structure``): a truth column that is constant has no defined correlation (NaN, not
valid, counted by the caller); a prediction that is constant while the truth varies scores
r = 0, no credit.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from flag_bench.errors import CellFailure


def constant_columns(x: np.ndarray) -> np.ndarray:
    """(N, G) -> (G,) bool, True where ``max - min == 0`` (every column when N = 0)."""
    a = np.asarray(x)
    return np.ptp(a, axis=0) == 0 if a.shape[0] else np.ones(a.shape[1], bool)


def pearson_columns(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r between matching columns of two (N, G) arrays, computed in float64.

    Returns ``(r, valid)``: r (G,) float64 in [-1, 1], NaN where the truth column is constant,
    0 where only the prediction column is constant; valid (G,) bool, truth column not constant.
    """
    yt = np.asarray(y_true, dtype=np.float64)
    yp = np.asarray(y_pred, dtype=np.float64)
    if yt.shape != yp.shape or yt.ndim != 2:
        raise ValueError(f"expected two (N, G) arrays of one shape, got {yt.shape} and {yp.shape}")
    dt = yt - yt.mean(axis=0)
    dp = yp - yp.mean(axis=0)
    st = np.sqrt((dt * dt).sum(axis=0))
    sp_ = np.sqrt((dp * dp).sum(axis=0))
    # st > 0 also guards a varying column whose squares underflow (|x| ~ 1e-170)
    valid = ~constant_columns(yt) & (st > 0)
    both = valid & ~constant_columns(yp) & (sp_ > 0)
    r = np.full(yt.shape[1], np.nan)
    r[both] = (dt[:, both] * dp[:, both]).sum(axis=0) / (st[both] * sp_[both])
    r[valid & ~both] = 0.0
    # float rounding can push |r| a hair past 1
    np.clip(r, -1.0, 1.0, out=r)
    return r, valid


def correlation_score(truth: np.ndarray, pred: np.ndarray) -> tuple[float, str | None]:
    """Pearson between two (M,) vectors under the same rule -> (r, reason or None).

    NaN (with a reason) when M < 2 or the truth vector is constant; 0 when only the prediction
    is constant.
    """
    if truth.size < 2:
        return float("nan"), f"needs at least 2 values, got {truth.size}"
    dt = truth - truth.mean()
    dp = pred - pred.mean()
    st = np.sqrt(dt @ dt)
    sp_ = np.sqrt(dp @ dp)
    if st == 0 or np.ptp(truth) == 0:
        return float("nan"), "the truth side is constant"
    if sp_ == 0 or np.ptp(pred) == 0:
        return 0.0, "the prediction side is constant (scored 0)"
    return float(np.clip((dt @ dp) / (st * sp_), -1.0, 1.0)), None


def validate_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both (N, G) -> float64 copies; CellFailure for non-finite predictions, ValueError otherwise."""
    yt = np.asarray(y_true, dtype=np.float64)
    yp = np.asarray(y_pred, dtype=np.float64)
    if yt.ndim != 2 or yt.shape != yp.shape:
        raise ValueError(f"expected two (N, G) arrays of one shape, got {yt.shape} and {yp.shape}")
    bad = int((~np.isfinite(yp)).sum())
    if bad:
        raise CellFailure(
            f"prediction contains {bad} non-finite values (NaN/inf) out of {yp.size}; "
            "structure metrics are not computed on a broken prediction"
        )
    bad_t = int((~np.isfinite(yt)).sum())
    if bad_t:
        raise ValueError(f"ground truth contains {bad_t} non-finite values")
    return yt, yp


def single_threaded():
    """Context manager pinning BLAS/OpenMP pools to one thread for the duration of a metric.

    The products here are small (a G x G Gram, k-means on (N, 30)); on a busy 2-core machine
    oversubscribed OpenBLAS/OpenMP pools spin-wait and were measured 50-100x slower (an 800 x 800
    eigendecomposition: 0.06 s with one thread, 5 s with two under load).
    """
    return threadpool_limits(limits=1)


def centred_gram(x: np.ndarray, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """x (N, G) -> (Z (N, G) centred columns in ``dtype``, Z'Z (G, G)); one BLAS product."""
    z = np.asarray(x - x.mean(axis=0), dtype=dtype)
    return z, z.T @ z
