"""Method inputs: checks, stacking of training slides, and the one embedding normaliser.

The leakage rule for everything here: statistics come from training spots only; nothing about
validation or test slides enters them.
"""

from __future__ import annotations

import numpy as np

from flag_bench.errors import UserError

# A feature whose training spread is at most this fraction of the median positive spread is
# uninformative and is dropped (weight 0 on every slide). Why relative, and why this value:
# a feature with training sd ~1e-6 but an ordinary spread on another lab's slide becomes ~1e5
# after standardising and dominates the fit (HEST re-cut her2st sections: ridge PCC 0.10, MSE
# 47-75, instead of 0.59); there the ratio was ~6e-6. The smallest ratio in any default
# her2st-mini training set (efficientnet-lite0, the four other C sections) is 5.0e-4, and
# 5.9e-4 over any three of them, so 1e-4 leaves the default numbers untouched.
RELATIVE_SPREAD_FLOOR = 1e-4


def require_embeddings(data, method: str) -> None:
    for s in data.slides:
        if s.embeddings is None:
            raise UserError(
                f"method '{method}' needs image embeddings but slide {s.slide_id} has none; "
                "run with an --encoder (e.g. efficientnet-lite0)"
            )
        if len(s.embeddings) != s.n_spots:
            raise UserError(f"slide {s.slide_id}: {len(s.embeddings)} embeddings for {s.n_spots} spots")


def stack_embeddings(data, dtype=np.float64) -> np.ndarray:
    """(sum n_spots, D) embeddings of every slide, in slide order."""
    return np.concatenate([s.embeddings for s in data.slides]).astype(dtype)


def stack_targets(data, dtype=np.float32) -> np.ndarray:
    """(sum n_spots, G) targets of every training slide, in slide order."""
    return np.concatenate([np.asarray(s.targets, dtype=dtype) for s in data.slides])


def slide_groups(data) -> np.ndarray:
    """(sum n_spots,) index of each stacked spot's slide (for slide-wise cross-validation)."""
    return np.concatenate([np.full(s.n_spots, i) for i, s in enumerate(data.slides)])


def informative_spread(sd: np.ndarray, relative_floor: float = RELATIVE_SPREAD_FLOOR) -> np.ndarray:
    """(D,) bool: the features whose spread exceeds ``relative_floor`` x the median positive spread."""
    positive = sd[sd > 0]
    if positive.size == 0:
        return np.zeros(sd.shape, dtype=bool)
    return sd > relative_floor * np.median(positive)


def _principal_axes(z: np.ndarray, n_components: int, centre: bool) -> tuple[np.ndarray, np.ndarray]:
    """-> (basis (D, k), singular values (k,)) of the training matrix, signs fixed."""
    _, s, vt = np.linalg.svd(z - z.mean(axis=0) if centre else z, full_matrices=False)
    vt = vt[:n_components]
    # fix the SVD sign ambiguity so results do not depend on the BLAS build
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
    return (vt * signs[:, None]).T, s[:n_components]


class EmbeddingNormalizer:
    """z-score with training-spot statistics, then (optionally) PCA fitted on training spots.

    (n, D) -> (n, D') in ``dtype``. Uninformative features (see ``RELATIVE_SPREAD_FLOOR``) map
    to 0. Options that differ between callers, each kept so their numbers stay as published:

    * ``whiten``: divide each principal component by its training sd, so no single direction
      dominates a network's conditioning (the diffusion family); off for the controls, whose
      ridge penalty and kNN distances are defined on the unscaled components.
    * ``centre_before_svd``: subtract the column means again before the SVD. z is centred by
      construction, so this changes only rounding; the diffusion family's numbers were produced
      with it, the controls' without.
    """

    def __init__(self, train_embeddings: np.ndarray, n_components: int | None = None, *, whiten: bool = False,
                 centre_before_svd: bool = False, dtype=np.float32,
                 relative_floor: float = RELATIVE_SPREAD_FLOOR):
        x = np.asarray(train_embeddings, dtype=np.float64)
        self.dtype = dtype
        self.mu = x.mean(axis=0)
        sd = x.std(axis=0)
        keep = informative_spread(sd, relative_floor)
        self.n_dropped = int((~keep).sum())
        # an infinite spread sends a dropped feature to exactly 0 on every slide
        self.sd = np.where(keep, sd, np.inf)
        self.basis, self.scale = None, None
        z = (x - self.mu) / self.sd
        if n_components is not None and 0 < n_components < z.shape[1]:
            self.basis, s = _principal_axes(z, n_components, centre_before_svd)
            if whiten:
                self.scale = np.maximum(s / np.sqrt(max(len(x) - 1, 1)), 1e-8)
        self.dim = z.shape[1] if self.basis is None else self.basis.shape[1]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mu) / self.sd
        if self.basis is not None:
            z = z @ self.basis
            if self.scale is not None:
                z = z / self.scale
        return z.astype(self.dtype, copy=False)

    def describe(self) -> dict:
        return {"standardised": "train spots", "pca_components": None if self.basis is None else self.dim,
                "whitened": self.scale is not None, "uninformative_features_dropped": self.n_dropped}
