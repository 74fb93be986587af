"""Pointwise metrics: per-gene PCC, MSE, MAE, and PCC pooled over all test spots.

Conventions (tested in tests/test_metrics_core.py; the constancy rule and the Pearson itself live
in ``metrics.kernels``, shared with GSC/SSC, Moran's I and FLAG's validation):
- a gene constant in the truth (max - min == 0) has no defined correlation: it is excluded and counted
  (``n_const_true``), never averaged as 0 or NaN;
- a gene whose *prediction* is constant (but truth is not) scores r = 0: a method that predicts
  nothing about a gene's variation gets no credit, and the ``mean`` control scores PCC 0, not NaN.
"""

from __future__ import annotations

import numpy as np

from flag_bench.metrics.base import Metric, Output, Scores, SlideContext
from flag_bench.metrics.kernels import pearson_columns

# the one Pearson of the project; the old name stays for callers outside metrics/
pearson_per_gene = pearson_columns


def top_k_mean(values: np.ndarray, k: int) -> float:
    """Mean of the k largest finite values (all of them if fewer than k)."""
    v = np.sort(values[np.isfinite(values)])[::-1]
    return float(v[:k].mean()) if v.size else float("nan")


def _pcc(y_true: np.ndarray, y_pred: np.ndarray, ctx: SlideContext) -> Scores:
    r, valid = pearson_columns(y_true, y_pred)
    rv = r[valid]
    return Scores(
        values={
            "pcc_mean": float(rv.mean()) if rv.size else float("nan"),
            "pcc_median": float(np.median(rv)) if rv.size else float("nan"),
            "pcc_top10": top_k_mean(rv, 10),
            "pcc_top50": top_k_mean(rv, 50),
        },
        per_gene={"pcc": r},
        notes={"n_valid_genes": int(valid.sum()), "n_const_true": int((~valid).sum())},
    )


def _error(y_true: np.ndarray, y_pred: np.ndarray, ctx: SlideContext) -> Scores:
    d = np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)
    return Scores(
        values={"mse": float(np.mean(d * d)), "mae": float(np.mean(np.abs(d)))},
        per_gene={"mse": np.mean(d * d, axis=0), "mae": np.mean(np.abs(d), axis=0)},
    )


def _pcc_pooled(y_true: np.ndarray, y_pred: np.ndarray, ctx: SlideContext) -> Scores:
    r, valid = pearson_columns(y_true, y_pred)
    rv = r[valid]
    return Scores(values={"pcc_pooled": float(rv.mean()) if rv.size else float("nan")})


_PCC_RANGE = (-1.0, 1.0)

PCC = Metric(
    name="pcc",
    compute=_pcc,
    outputs=(
        Output("pcc_mean", True, _PCC_RANGE, "mean per-gene Pearson r over spots of a slide"),
        Output("pcc_median", True, _PCC_RANGE, "median per-gene Pearson r"),
        Output("pcc_top10", True, _PCC_RANGE, "mean of the 10 highest per-gene r (Stem's PCC-10)"),
        Output("pcc_top50", True, _PCC_RANGE, "mean of the 50 highest per-gene r (Stem's PCC-50)"),
    ),
    references="scipy.stats.pearsonr per gene",
)

ERROR = Metric(
    name="error",
    compute=_error,
    outputs=(
        Output("mse", False, (0.0, float("inf")), "mean squared error over spots x genes"),
        Output("mae", False, (0.0, float("inf")), "mean absolute error over spots x genes"),
    ),
)

PCC_POOLED = Metric(
    name="pcc_pooled",
    compute=_pcc_pooled,
    outputs=(Output("pcc_pooled", True, _PCC_RANGE, "per-gene r over all test spots of a cell pooled"),),
    scope="pooled",
    references="FLAG's released test script pools test spots before computing PCC",
)
