"""Calibrated scores: where a score sits between ignoring the image and what the data allow.

For a score m of a cell, on its fold (dataset, G, split, fold, target transform, panel selector):

    m_cal = (m - null) / (ceiling - null)

- null: the best image-free null control of the same fold (``random-spot``, ``gene-prior``, or a
  card with role ``null`` that reads no truth), each control's score averaged over its seeds
  first; 0 means "no better than a prediction that never looked at the image";
- ceiling: the cell's noise ceiling ``ceiling.<m>`` (``metrics.ceilings``: split-half counts,
  Spearman-Brown corrected); 1 means "as good as the counting noise of this slide allows".

A cell gets NaN when its fold has no null control, no ceiling (records written before ceilings
existed), or a ceiling at or below the null. Scores above the ceiling (> 1) are possible: the
ceiling is an estimate, and the truth-based references can pass it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from flag_bench.leaderboard.stats import method_roles
from flag_bench.metrics.ceilings import ceiling_name
from flag_bench.roles import Role

# scores that get a calibrated column, when the frame has both the score and its ceiling
CALIBRATED = ("pcc_mean", "gsc", "gsc_cpm", "ssc", "ssc_spot", "lee_l")
FOLD = ("dataset", "n_genes", "split", "fold", "target_transform", "panel_selector")


def cal_name(score: str) -> str:
    return f"{score}_cal"


def null_name(score: str) -> str:
    return f"{score}_null"


def image_free_nulls(frame) -> list[str]:
    """The methods of ``frame`` whose records say they are image-free null controls (role ``null``:
    they see no test data; the truth-built nulls have role ``truth_null``)."""
    return [m for m, role in sorted(method_roles(frame).items()) if role is Role.NULL]


def calibrated_scores(frame) -> tuple[str, ...]:
    """The scores of CALIBRATED this frame can calibrate (score and ceiling columns present)."""
    return tuple(m for m in CALIBRATED if m in frame.columns and ceiling_name(m) in frame.columns
                 and frame[ceiling_name(m)].notna().any())


def add_calibration(frame):
    """frame -> a copy with ``<m>_null`` (the fold's best null) and ``<m>_cal`` for each score it
    can calibrate. Every calibrated score is higher-is-better (correlations)."""
    out = frame.copy()
    scores = calibrated_scores(frame)
    if not scores or frame.empty:
        return out
    nulls = image_free_nulls(frame)
    keys = [k for k in FOLD if k in frame.columns]
    sub = frame[frame["method"].isin(nulls)]
    for m in scores:
        best: dict[tuple, float] = {}
        if not sub.empty:
            per = sub.groupby([*keys, "method", "config_hash"], sort=False)[m].mean()  # seeds first
            for idx, v in per.items():
                k = idx[:len(keys)]
                if math.isfinite(v):
                    best[k] = max(best.get(k, -math.inf), float(v))
        fold_keys = list(zip(*(frame[k] for k in keys)))
        null = np.array([best.get(tuple(k), np.nan) for k in fold_keys], dtype=np.float64)
        score = frame[m].to_numpy(dtype=np.float64)
        ceil = frame[ceiling_name(m)].to_numpy(dtype=np.float64)
        span = ceil - null
        with np.errstate(divide="ignore", invalid="ignore"):
            cal = np.where(span > 0, (score - null) / np.where(span > 0, span, 1.0), np.nan)
        out[null_name(m)] = null
        out[cal_name(m)] = cal
    return out


@dataclass(frozen=True)
class Bound:
    """The null and the ceiling of one score on one board at one G: mean over the board's folds."""

    null: float
    ceiling: float


def bounds(frame, scores: Sequence[str]) -> dict[tuple[int, str], Bound]:
    """(G, score) -> Bound, over the folds of ``frame`` (one dataset), each fold once."""
    out = {}
    keys = [k for k in FOLD if k in frame.columns]
    for g, d in frame.groupby("n_genes", sort=True):
        folds = d.drop_duplicates(keys)
        for m in scores:
            null_col, ceil_col = null_name(m), ceiling_name(m)
            nv = folds[null_col].to_numpy(float) if null_col in folds else np.array([np.nan])
            # a fold's ceiling: the mean of its cells' (the same value, unless old records lack it)
            cv = d.groupby(keys, sort=False)[ceil_col].mean().to_numpy(float) if ceil_col in d else np.array([np.nan])
            out[(int(g), m)] = Bound(_nanmean(nv), _nanmean(cv))
    return out


def _nanmean(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")
