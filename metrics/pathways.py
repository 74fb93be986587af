"""Pathway-level agreement: does a prediction get each gene set's spatial pattern right?

Per slide, for each gene set with at least ``MIN_GENES`` genes in the panel, a per-spot set score
is computed the same way on truth and prediction: the mean, over the set's panel genes, of each
gene's z-score over the slide's spots (ddof 0; truth standardised by its own mean and sd, the
prediction by its own, so a prediction is not penalised for a gene's offset or scale; a gene
constant on the slide, by the constancy rule of ``metrics.kernels``, has z = 0 there). The set's
r is the project's one Pearson (``metrics.kernels.pearson_columns``) between the truth and the
predicted scores over spots: NaN (left out, counted) when the truth score is constant, 0 when only
the predicted score is. ``pathway_pcc`` is the mean r over the sets scored; NaN when none is.

Unlike per-gene PCC, a set's score averages out the counting noise of its genes, so a method that
gets a programme right (plasma cells, stroma) scores well even when each gene is noisy.

The sets are not registered in ``catalog.METRICS``: a cell has them only when the run names
``--gene-sets``, so ``flag_bench.scoring`` builds the metric with ``pathway_metric(sets)``; the
report reads the output's direction and range from ``PATHWAY_PCC``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from flag_bench.metrics.base import Metric, Output, Scores, SlideContext
from flag_bench.metrics.kernels import constant_columns, pearson_columns

MIN_GENES = 5  # panel genes a set needs to be scored: fewer, and one gene's noise is the set's score

PATHWAY_PCC = Output("pathway_pcc", True, (-1.0, 1.0),
                     f"mean over gene sets with >= {MIN_GENES} panel genes of Pearson r over spots between truth and "
                     "predicted set scores (mean z-score of the set's panel genes)")
OUTPUTS = (PATHWAY_PCC,)


def zscore_columns(x: np.ndarray) -> np.ndarray:
    """(N, K) -> (N, K) float64: each column standardised over the N spots (mean 0, sd 1, ddof 0);
    a constant column (max - min == 0) is 0."""
    a = np.asarray(x, dtype=np.float64)
    const = constant_columns(a)
    mu = a.mean(axis=0)
    sd = a.std(axis=0)
    z = np.zeros_like(a)
    ok = ~const & (sd > 0)  # sd > 0 also guards a varying column whose squares underflow
    z[:, ok] = (a[:, ok] - mu[ok]) / sd[ok]
    return z


def set_members(genes: Sequence[str], gene_sets: Sequence[tuple[str, Sequence[str]]],
                min_genes: int = MIN_GENES) -> list[tuple[str, np.ndarray]]:
    """(panel genes (G,), ((name, set genes), ...)) -> [(name, panel column indices)] of the sets with
    at least ``min_genes`` panel genes, in the sets' order (each gene counted once)."""
    index = {g: j for j, g in enumerate(genes)}
    out = []
    for name, members in gene_sets:
        cols = sorted({index[g] for g in members if g in index})
        if len(cols) >= min_genes:
            out.append((str(name), np.asarray(cols, dtype=np.intp)))
    return out


def set_scores(x: np.ndarray, members: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
    """x (N, G) -> (N, P): per spot, the mean z-score (``zscore_columns``) of each set's panel genes."""
    z = zscore_columns(x)
    out = np.empty((z.shape[0], len(members)), dtype=np.float64)
    for k, (_, cols) in enumerate(members):
        out[:, k] = z[:, cols].mean(axis=1)
    return out


def pathway_pcc(y_true: np.ndarray, y_pred: np.ndarray, genes: Sequence[str],
                gene_sets: Sequence[tuple[str, Sequence[str]]], min_genes: int = MIN_GENES) -> Scores:
    """Truth and prediction (N, G) in target space, panel ``genes`` (G,) in column order, and gene sets
    ((name, genes), ...) -> Scores with ``pathway_pcc`` (NaN when no set is scored) and notes: the
    sets with >= ``min_genes`` panel genes (``n_sets_eligible``), those scored (``n_sets_scored``),
    those left out for a constant truth score (``n_sets_const_true``) and each eligible set's r
    (``r_by_set``, NaN where left out)."""
    yt = np.asarray(y_true, dtype=np.float64)
    yp = np.asarray(y_pred, dtype=np.float64)
    if yt.shape != yp.shape or yt.ndim != 2 or yt.shape[1] != len(genes):
        raise ValueError(f"expected two (N, {len(genes)}) arrays, got {yt.shape} and {yp.shape}")
    members = set_members(genes, gene_sets, min_genes)
    if not members:
        return Scores(values={"pathway_pcc": float("nan")},
                      notes={"n_sets_eligible": 0, "n_sets_scored": 0, "n_sets_const_true": 0, "r_by_set": {},
                             "pathway_pcc_reason": f"no gene set has {min_genes} or more panel genes"})
    r, valid = pearson_columns(set_scores(yt, members), set_scores(yp, members))
    rv = r[valid]
    notes = {"n_sets_eligible": len(members), "n_sets_scored": int(valid.sum()),
             "n_sets_const_true": int((~valid).sum()),
             "r_by_set": {name: float(v) for (name, _), v in zip(members, r)}}
    if not rv.size:
        notes["pathway_pcc_reason"] = "every eligible set's truth score is constant on this slide"
    return Scores(values={"pathway_pcc": float(rv.mean()) if rv.size else float("nan")}, notes=notes)


def pathway_metric(gene_sets: Sequence[tuple[str, Sequence[str]]], min_genes: int = MIN_GENES) -> Metric:
    """The slide metric of these gene sets, as ``flag_bench.scoring`` runs the registered ones."""
    sets = tuple((str(n), tuple(g)) for n, g in gene_sets)

    def compute(y_true: np.ndarray, y_pred: np.ndarray, ctx: SlideContext) -> Scores:
        return pathway_pcc(y_true, y_pred, ctx.genes, sets, min_genes)

    return Metric(name="pathways", compute=compute, outputs=OUTPUTS,
                  references="the z-score pathway activity of Lee et al. 2008 (PLoS Comput Biol 4:e1000217), "
                             "sum of z / sqrt(n): a per-set scale, so the same r")
