"""Spatial-domain agreement: cluster truth and prediction separately, compare the labelings.

Protocol (FLAG spec 5.5, harness choice): per slide, z-score every gene over spots, project on
the first ``n_pcs`` principal components (all genes when G <= n_pcs), k-means with a fixed seed
and ``n_init`` restarts, once on the truth and once on the prediction; report ARI and NMI
(scikit-learn, NMI with arithmetic averaging) between the two labelings. When the slide carries
external annotations, ``ari_annot``/``nmi_annot`` compare the *prediction's* clusters with them
on the annotated spots, and by default k becomes the number of annotated domains.

The clustering seed is the metric's own (default 0), not the cell's seed: the truth clustering
must be identical for every method and seed it is compared against.

PCA is exact: eigenvectors of the (G, G) Gram matrix (or (N, N) when N < G), top components
only; signs do not matter because k-means on Euclidean distances is reflection invariant.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flag_bench.metrics.base import Metric, Output, Scores, SlideContext
from flag_bench.metrics.kernels import centred_gram, constant_columns, single_threaded, validate_pair


def pca_scores(x: np.ndarray, n_pcs: int = 30) -> np.ndarray:
    """z-score columns of x (N, G) (constant columns -> 0) and return (N, min(n_pcs, G)) PC scores;
    with G <= n_pcs the z-scored matrix itself.

    Computed in float32: the scores only feed k-means, and the Gram product is half the cost.
    """
    n, g = x.shape
    z, gram = centred_gram(np.asarray(x, dtype=np.float64), dtype=np.float32)
    var = np.diag(gram).astype(np.float64)
    # exact constancy, not var > 0: a constant column can centre to rounding noise
    varies = ~constant_columns(x) & (var > 0)
    inv = np.zeros(g)
    inv[varies] = 1.0 / np.sqrt(var[varies] / n)
    if g <= n_pcs:
        return z * inv.astype(np.float32)
    m = min(n_pcs, n)
    if g <= n:
        # correlation-scaled Gram D^-1 (Z'Z) D^-1 without re-scaling the (N, G) matrix
        corr = gram * np.outer(inv, inv).astype(np.float32)
        import scipy.linalg  # here, not at the top: `flag-bench list` reads this module's outputs

        _, vecs = scipy.linalg.eigh(corr, subset_by_index=[g - m, g - 1], driver="evr")
        return z @ (vecs[:, ::-1] * inv[:, None].astype(np.float32))
    import scipy.linalg

    zs = z * inv.astype(np.float32)
    vals, vecs = scipy.linalg.eigh(zs @ zs.T, subset_by_index=[n - m, n - 1], driver="evr")
    # left singular vectors times singular values = the PC scores
    return vecs[:, ::-1] * np.sqrt(np.clip(vals[::-1], 0.0, None))


def cluster_labels(x: np.ndarray, k: int, *, n_pcs: int = 30, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """(N, G) expression -> (N,) int k-means labels on the PCA scores (one cluster if x is constant)."""
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means with k = {k} needs at least {k} spots, the slide has {n}")
    with single_threaded():
        feats = pca_scores(x, n_pcs)
        if not np.any(feats):
            return np.zeros(n, dtype=np.int64)
        distinct = np.unique(feats, axis=0).shape[0]
        from sklearn.cluster import KMeans  # sklearn costs 0.4 s to import: only when clustering

        km = KMeans(n_clusters=min(k, distinct), n_init=n_init, random_state=seed)
        return km.fit_predict(feats).astype(np.int64)


def _ari(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(min(adjusted_rand_score(a, b), 1.0))


def _nmi(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import normalized_mutual_info_score

    # sklearn's NMI of identical labelings can round to 1 + 2e-16, outside the declared range
    return float(np.clip(normalized_mutual_info_score(a, b), 0.0, 1.0))


def valid_annotations(labels: np.ndarray) -> np.ndarray:
    """(N,) -> bool mask of annotated spots: negative integers, NaN, None and '' mean 'none'."""
    a = np.asarray(labels)
    if a.dtype.kind in "iu":
        return a >= 0
    if a.dtype.kind == "f":
        return np.isfinite(a) & (a >= 0)
    s = a.astype(str)
    return (s != "") & (s != "None") & (s != "nan") & (s != "-1")


class _DomainsCompute:
    """Picklable compute callable holding the clustering configuration."""

    def __init__(self, k: int, n_pcs: int, seed: int, n_init: int, k_from_annotations: bool):
        self.k, self.n_pcs, self.seed, self.n_init = int(k), int(n_pcs), int(seed), int(n_init)
        self.k_from_annotations = bool(k_from_annotations)

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray, ctx: SlideContext) -> Scores:
        return domain_scores(
            y_true, y_pred, ctx.annotations, k=self.k, n_pcs=self.n_pcs, seed=self.seed,
            n_init=self.n_init, k_from_annotations=self.k_from_annotations,
        )


def domain_scores(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    annotations: np.ndarray | None = None,
    *,
    k: int = 5,
    n_pcs: int = 30,
    seed: int = 0,
    n_init: int = 10,
    k_from_annotations: bool = True,
) -> Scores:
    """y_true, y_pred (N, G); annotations (N,) or None -> Scores(values ari, nmi, ari_annot, nmi_annot)."""
    yt, yp = validate_pair(y_true, y_pred)
    n = yt.shape[0]
    notes: dict[str, Any] = {"domains_n_pcs": n_pcs, "domains_seed": seed, "domains_n_init": n_init}
    values = {name: float("nan") for name in ("ari", "nmi", "ari_annot", "nmi_annot")}
    mask = None
    if annotations is not None:
        ann = np.asarray(annotations)
        if ann.shape != (n,):
            raise ValueError(f"annotations must be (N={n},), got {ann.shape}")
        mask = valid_annotations(ann)
        n_domains = np.unique(ann[mask]).size
        notes["n_annotated_spots"] = int(mask.sum())
        notes["n_annotated_domains"] = int(n_domains)
        if k_from_annotations and n_domains >= 2:
            k = int(n_domains)
    notes["domains_k"] = int(k)
    if n < k or k < 2:
        reason = f"clustering into k = {k} domains needs k >= 2 and at least k spots (slide has {n})"
        return Scores(values=values, notes={**notes, **{f"{v}_reason": reason for v in values}})
    lt = cluster_labels(yt, k, n_pcs=n_pcs, seed=seed, n_init=n_init)
    lp = cluster_labels(yp, k, n_pcs=n_pcs, seed=seed, n_init=n_init)
    notes["n_clusters_pred"] = int(np.unique(lp).size)
    values["ari"] = _ari(lt, lp)
    values["nmi"] = _nmi(lt, lp)
    if mask is None:
        notes["ari_annot_reason"] = notes["nmi_annot_reason"] = "the slide has no external annotations"
    elif mask.sum() < 2:
        notes["ari_annot_reason"] = notes["nmi_annot_reason"] = "fewer than 2 annotated spots"
    else:
        ann_v = ann[mask]
        values["ari_annot"] = _ari(ann_v, lp[mask])
        values["nmi_annot"] = _nmi(ann_v, lp[mask])
        # the truth's own agreement with the annotations: the ceiling a prediction can reach
        notes["ari_annot_truth"] = _ari(ann_v, lt[mask])
        notes["nmi_annot_truth"] = _nmi(ann_v, lt[mask])
    return Scores(values=values, notes=notes)


def make_domains(k: int = 5, *, n_pcs: int = 30, seed: int = 0, n_init: int = 10, k_from_annotations: bool = True) -> Metric:
    """Domain-agreement Metric with its clustering configuration."""
    if int(k) < 2 or int(n_pcs) < 1 or int(n_init) < 1:
        raise ValueError(f"need k >= 2, n_pcs >= 1, n_init >= 1; got k={k}, n_pcs={n_pcs}, n_init={n_init}")
    unit = (-0.5, 1.0)
    return Metric(
        name="domains",
        compute=_DomainsCompute(k, n_pcs, seed, n_init, k_from_annotations),
        outputs=(
            Output("ari", True, unit, "ARI between k-means domains of truth and of prediction"),
            Output("nmi", True, (0.0, 1.0), "NMI between k-means domains of truth and of prediction"),
            Output("ari_annot", True, unit, "ARI of the prediction's domains vs external annotations"),
            Output("nmi_annot", True, (0.0, 1.0), "NMI of the prediction's domains vs external annotations"),
        ),
        references="FLAG Fig. 7b; sklearn adjusted_rand_score / normalized_mutual_info_score",
    )


DOMAINS = make_domains()
