"""Structure metrics: GSC (gene-gene co-expression), SSC (spatial autocorrelation), RVD.

Definitions follow FLAG spec section 5.3-5.5; Y is the (N, G) truth, Y^ the prediction, one slide.

- GSC: C and C^ are the (G, G) Pearson correlation matrices of the genes over spots.
  ``gsc`` = Pearson of their strict upper triangles; ``gsc_spearman`` = Spearman of the same
  vectors; ``gsc_frobenius`` = 1 - ||C - C^||_F / ||C||_F over off-diagonal entries (for genes
  valid in both this equals the full-matrix form, since both diagonals are 1).
- SSC: Moran's I of every gene in Y and in Y^ with the same weights (default: symmetric binary
  kNN, k = 6, row-standardised, on the slide's coordinates); ``ssc`` = Pearson across genes of
  the two vectors; ``ssc@32`` = the same on the 32 genes with the highest true I (FLAG Fig. 6);
  ``moran_abs_err`` = mean |I(Y^) - I(Y)|.
- RVD (Stem): mean over genes of (Var Y^_g - Var Y_g)^2 / (Var Y_g)^2; a diagnostic, unranked.
- GSC_CPM: ``gsc`` on depth-normalised values, whatever the run's target transform: both sides
  are taken back to counts (``TO_COUNTS``; prediction clipped at 0), each spot divided by its total
  over the panel genes and multiplied by the truth slide's median panel total (scanpy
  ``normalize_total``'s default target: the median over spots with a non-zero total), then log1p.
  Under ``log1p_cpm`` the inverse gives CPM, so that median is a CPM total and the log1p acts at
  another scale: compare gsc_cpm only between runs with the same target transform.
  On raw log counts one per-spot depth factor carries most of the gene-gene correlation
  (metric-validity.md 4), so plain GSC mostly checks that the depth factor is reproduced.
  Spots whose truth panel total is 0 are dropped from both sides (counted, ``n_zero_total_spots``);
  a prediction spot with total 0 stays a zero row; an unknown transform is NaN with the reason.

Degenerate input, the convention and constancy rule (max - min == 0) of ``metrics.kernels``:
- a gene constant in the truth is excluded and counted (``n_const_true``);
- a gene constant in the prediction predicts no structure: its correlations with every other
  gene count as 0 in C^ and its Moran's I as 0 (per-gene ``moran_i_pred`` stays NaN, since I is
  undefined), counted as ``n_const_pred``;
- a score whose predicted vector has no spread (e.g. every gene constant: the ``mean`` control)
  is 0, no credit; a score that is undefined on the truth side, or has fewer than 2 items, is
  NaN with the reason in ``notes`` under ``<output>_reason``;
- non-finite predictions are a method bug: ``CellFailure`` naming the count, nothing is zeroed.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np

from flag_bench.metrics.base import Metric, Output, Scores, SlideContext
from flag_bench.metrics.kernels import (
    centred_gram,
    constant_columns,
    correlation_score,
    single_threaded,
    validate_pair,
)
from flag_bench.metrics.moran import morans_i_values
from flag_bench.metrics.spatial_weights import KNNWeights

# the SSC neighbourhood unless a caller passes its own builder (stateless, so one instance serves all)
DEFAULT_WEIGHTS = KNNWeights(6, symmetric=True, transform="R")


def gene_correlation(x: np.ndarray, constant: np.ndarray | None = None) -> np.ndarray:
    """(N, G) -> (G, G) Pearson correlation of the columns over rows; rows/columns of constant
    genes are 0 (their diagonal too)."""
    const = constant_columns(x) if constant is None else constant
    _, c = centred_gram(x)
    inv = np.zeros(c.shape[0])
    inv[~const] = 1.0 / np.sqrt(np.diag(c)[~const])
    c *= inv[:, None]
    c *= inv[None, :]
    np.clip(c, -1.0, 1.0, out=c)
    return c


def average_ranks(v: np.ndarray) -> np.ndarray:
    """(M,) -> (M,) float64 ranks 1..M, ties get their average rank (scipy's ``rankdata``)."""
    order = np.argsort(v)  # stability not needed: tied runs are averaged
    sv = v[order]
    # start index of each run of equal values, and the run each sorted element belongs to
    new = np.empty(sv.size, dtype=bool)
    new[:1] = True
    np.not_equal(sv[1:], sv[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], sv.size)
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(sv.size)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def gsc_scores(y_true: np.ndarray, y_pred: np.ndarray) -> Scores:
    """GSC family for one slide: y_true, y_pred (N, G) -> Scores(values gsc, gsc_spearman,
    gsc_frobenius; notes with counts and reasons)."""
    yt, yp = validate_pair(y_true, y_pred)
    ct, cp = constant_columns(yt), constant_columns(yp)
    keep = ~ct
    notes: dict[str, Any] = {
        "n_valid_genes": int(keep.sum()),
        "n_const_true": int(ct.sum()),
        "n_const_pred": int((cp & keep).sum()),
    }
    names = ("gsc", "gsc_spearman", "gsc_frobenius")
    g = int(keep.sum())
    if g < 3:
        reason = f"GSC needs at least 3 genes that vary in the truth (>= 2 gene pairs), got {g}"
        return Scores(values={k: float("nan") for k in names}, notes={**notes, **{f"{k}_reason": reason for k in names}})
    with single_threaded():
        c = gene_correlation(yt[:, keep])
        ch = gene_correlation(yp[:, keep], cp[keep])
    iu = np.triu_indices(g, k=1)
    u, uh = c[iu], ch[iu]
    values: dict[str, float] = {}
    r, why = correlation_score(u, uh)
    values["gsc"] = r
    if why:
        notes["gsc_reason"] = why
    rs, why_s = correlation_score(average_ranks(u), average_ranks(uh))
    values["gsc_spearman"] = rs
    if why_s:
        notes["gsc_spearman_reason"] = why_s
    norm = np.sqrt(u @ u)
    if norm == 0:
        values["gsc_frobenius"] = float("nan")
        notes["gsc_frobenius_reason"] = "every true gene-gene correlation is 0"
    else:
        d = u - uh
        values["gsc_frobenius"] = float(1.0 - np.sqrt(d @ d) / norm)
    return Scores(values=values, notes=notes)


# target transform name -> its inverse, back to the count scale (the transforms themselves live in
# datasets.fold.TARGET_TRANSFORMS; metrics do not import datasets). log1p_cpm goes back to CPM (the
# library is not known here): the per-spot proportions are the counts', but the median target is
# then a CPM total, so gsc_cpm of a log1p_cpm run is not the log1p run's number on the same data.
TO_COUNTS: Mapping[str, Callable[[np.ndarray], np.ndarray]] = MappingProxyType({
    "log1p": np.expm1,
    "log2p1": lambda x: np.expm1(x * np.log(2.0)),  # 2**x - 1, without the cancellation near 0
    "log1p_cpm": np.expm1,
})


def depth_normalise(counts_true: np.ndarray, counts_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts (N, G) pair -> (log1p normalised truth (M, G), prediction (M, G), kept (N,) bool).

    Each spot is divided by its panel total and scaled to the median total of the truth's spots
    with a non-zero total; spots whose truth total is 0 are dropped from both; a prediction spot
    with total 0 stays 0."""
    tt, tp = counts_true.sum(axis=1), counts_pred.sum(axis=1)
    keep = tt > 0
    if not keep.any():
        return np.zeros((0, counts_true.shape[1])), np.zeros((0, counts_true.shape[1])), keep
    target = float(np.median(tt[keep]))
    ct, cp, tp = counts_true[keep], counts_pred[keep], tp[keep]
    nt = np.log1p(ct * (target / tt[keep])[:, None])
    fp = np.zeros_like(tp)
    np.divide(target, tp, out=fp, where=tp > 0)
    return nt, np.log1p(cp * fp[:, None]), keep


def gsc_cpm_scores(y_true: np.ndarray, y_pred: np.ndarray, target_transform: str = "log1p") -> Scores:
    """GSC on depth-normalised values: targets (N, G) pair in ``target_transform`` space ->
    Scores(values gsc_cpm; notes from ``gsc_scores`` plus the dropped spots)."""
    yt, yp = validate_pair(y_true, y_pred)
    name = str(target_transform)
    inverse = TO_COUNTS.get(name)
    if inverse is None:
        return Scores(values={"gsc_cpm": float("nan")},
                      notes={"gsc_cpm_reason": f"unknown target transform {name!r} (known: {', '.join(TO_COUNTS)})"})
    ct = np.maximum(inverse(yt), 0.0)
    cp = np.maximum(inverse(yp), 0.0)
    nt, npred, keep = depth_normalise(ct, cp)
    s = gsc_scores(nt, npred)
    notes: dict[str, Any] = {
        **{k: v for k, v in s.notes.items() if not k.startswith("gsc")},
        "target_transform": name,
        "n_zero_total_spots": int((~keep).sum()),
        "n_zero_total_pred_spots": int((npred.sum(axis=1) == 0).sum()),
    }
    if "gsc_reason" in s.notes:
        notes["gsc_cpm_reason"] = s.notes["gsc_reason"]
    return Scores(values={"gsc_cpm": s.values["gsc"]}, notes=notes)


def ssc_scores(y_true: np.ndarray, y_pred: np.ndarray, coords: np.ndarray | None, *, weights=None, top: int = 32) -> Scores:
    """SSC family for one slide.

    y_true, y_pred (N, G); coords (N, 2) spot positions; weights: a builder with
    ``build(coords) -> SpatialWeights`` (default ``DEFAULT_WEIGHTS``: kNN, k = 6, symmetric, row-standardised).
    Returns Scores(values ssc, ssc@<top>, moran_abs_err; per_gene moran_i_true, moran_i_pred).
    """
    yt, yp = validate_pair(y_true, y_pred)
    builder = weights if weights is not None else DEFAULT_WEIGHTS
    top_name = f"ssc@{top}"
    names = ("ssc", top_name, "moran_abs_err")
    g = yt.shape[1]
    nan_scores = lambda reason, extra: Scores(  # noqa: E731
        values={k: float("nan") for k in names},
        per_gene={"moran_i_true": np.full(g, np.nan), "moran_i_pred": np.full(g, np.nan)},
        notes={**extra, **{f"{k}_reason": reason for k in names}},
    )
    if coords is None:
        return nan_scores("the slide has no spot coordinates", {})
    try:
        w = builder.build(coords)  # built once per call; never cached across slides
    except ValueError as exc:
        return nan_scores(str(exc), {})
    i_true = morans_i_values(yt, w, check_finite=False)
    i_pred = morans_i_values(yp, w, check_finite=False)
    valid = np.isfinite(i_true)
    const_pred = ~np.isfinite(i_pred)
    ip = np.where(const_pred, 0.0, i_pred)
    notes: dict[str, Any] = {
        **w.notes(),
        "n_valid_genes": int(valid.sum()),
        "n_const_true": int((~valid).sum()),
        "n_const_pred": int((const_pred & valid).sum()),
    }
    values: dict[str, float] = {}
    it_v, ip_v = i_true[valid], ip[valid]
    values["ssc"], why = correlation_score(it_v, ip_v)
    if why:
        notes["ssc_reason"] = why
    order = np.argsort(-it_v, kind="stable")[:top]
    values[top_name], why = correlation_score(it_v[order], ip_v[order])
    notes[f"{top_name}_n_genes"] = int(order.size)
    if why:
        notes[f"{top_name}_reason"] = why
    if it_v.size:
        values["moran_abs_err"] = float(np.mean(np.abs(ip_v - it_v)))
    else:
        values["moran_abs_err"] = float("nan")
        notes["moran_abs_err_reason"] = "no gene varies in the truth"
    return Scores(values=values, per_gene={"moran_i_true": i_true, "moran_i_pred": i_pred}, notes=notes)


def rvd_scores(y_true: np.ndarray, y_pred: np.ndarray) -> Scores:
    """Stem's relative variance distance: (N, G) pair -> Scores(values rvd; per_gene rvd)."""
    yt, yp = validate_pair(y_true, y_pred)
    vt, vp = yt.var(axis=0), yp.var(axis=0)
    valid = ~constant_columns(yt)
    per = np.full(yt.shape[1], np.nan)
    per[valid] = (vp[valid] - vt[valid]) ** 2 / vt[valid] ** 2
    notes: dict[str, Any] = {"n_valid_genes": int(valid.sum()), "n_const_true": int((~valid).sum())}
    if valid.any():
        rvd = float(per[valid].mean())
    else:
        rvd = float("nan")
        notes["rvd_reason"] = "no gene varies in the truth"
    return Scores(values={"rvd": rvd}, per_gene={"rvd": per}, notes=notes)


_CORR = (-1.0, 1.0)


def _gsc(yt: np.ndarray, yp: np.ndarray, ctx: SlideContext) -> Scores:
    return gsc_scores(yt, yp)


def _gsc_cpm(yt: np.ndarray, yp: np.ndarray, ctx: SlideContext) -> Scores:
    return gsc_cpm_scores(yt, yp, ctx.target_transform)


def _rvd(yt: np.ndarray, yp: np.ndarray, ctx: SlideContext) -> Scores:
    return rvd_scores(yt, yp)


class _SSCCompute:
    """Picklable compute callable holding the SSC configuration (runners may use processes)."""

    def __init__(self, weights, top: int):
        self.weights = weights
        self.top = int(top)

    def __call__(self, yt: np.ndarray, yp: np.ndarray, ctx: SlideContext) -> Scores:
        return ssc_scores(yt, yp, ctx.coords_um, weights=self.weights, top=self.top)


def make_gsc() -> Metric:
    return Metric(
        name="gsc",
        compute=_gsc,
        outputs=(
            Output("gsc", True, _CORR, "Pearson of upper triangles of gene-gene correlation (truth vs prediction)"),
            Output("gsc_spearman", True, _CORR, "Spearman of the same upper triangles"),
            Output("gsc_frobenius", True, (-float("inf"), 1.0), "1 - ||C - C^||_F / ||C||_F, off-diagonal"),
        ),
        references="FLAG spec 5.3 (exact formula a harness choice)",
    )


def make_ssc(weights=None, top: int = 32) -> Metric:
    """SSC Metric with configurable weights builder and top-gene count (default kNN k=6, 32)."""
    builder = weights if weights is not None else DEFAULT_WEIGHTS
    if int(top) < 2:
        raise ValueError(f"top must be >= 2 (a correlation needs 2 genes), got {top}")
    return Metric(
        name="ssc",
        compute=_SSCCompute(builder, top),
        outputs=(
            Output("ssc", True, _CORR, "Pearson across genes of Moran's I, truth vs prediction"),
            Output(f"ssc@{top}", True, _CORR, f"SSC on the {top} genes with the highest true Moran's I"),
            Output("moran_abs_err", False, (0.0, float("inf")), "mean |I(pred) - I(true)| over genes"),
        ),
        needs_coords=True,
        references="FLAG spec 5.4; Moran's I matches esda.Moran(transformation='r')",
    )


GSC = make_gsc()
GSC_CPM = Metric(
    name="gsc_cpm",
    compute=_gsc_cpm,
    outputs=(
        Output("gsc_cpm", True, _CORR,
               "GSC on depth-normalised values (counts / spot panel total x median total, log1p), "
               "whatever the target transform"),
    ),
    references="metric-validity.md 4 (GSC on depth-normalised targets); scanpy normalize_total + log1p",
)
SSC = make_ssc()
RVD = Metric(
    name="rvd",
    compute=_rvd,
    outputs=(Output("rvd", None, (0.0, float("inf")), "Stem's relative variance distance (diagnostic)"),),
    references="Stem (Zhu et al., 2025) RVD",
)
