"""Input preparation shared by the diffusion-family methods: checks and embedding normalisation
with training statistics only. (Window batching lives with FLAG, its only user: ``flag._collate``.)
"""

from __future__ import annotations

import numpy as np

from flag_bench.errors import UserError


def require_embeddings(data, method: str) -> None:
    for s in data.slides:
        if s.embeddings is None:
            raise UserError(
                f"method '{method}' needs image embeddings but slide {s.slide_id} has none; "
                "run with an --encoder (e.g. efficientnet-lite0)"
            )
        if len(s.embeddings) != s.n_spots:
            raise UserError(f"slide {s.slide_id}: {len(s.embeddings)} embeddings for {s.n_spots} spots")


class EmbeddingNormalizer:
    """z-score with training-spot statistics, then (optionally) PCA fitted on training spots.

    The leakage rule: nothing about test or validation slides enters the statistics.
    (n, D) -> (n, D') float32.
    """

    def __init__(self, train_embeddings: np.ndarray, n_components: int | None = None):
        x = np.asarray(train_embeddings, dtype=np.float64)
        self.mu = x.mean(axis=0)
        sd = x.std(axis=0)
        self.sd = np.where(sd > 1e-8, sd, 1.0)
        self.basis = None
        z = (x - self.mu) / self.sd
        if n_components and n_components < z.shape[1]:
            _, s, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
            vt = vt[:n_components]
            # fix SVD sign ambiguity so results do not depend on the BLAS build
            signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
            self.basis = (vt * signs[:, None]).T
            # rescale components to unit variance so no single direction dominates the conditioning
            self.scale = np.maximum(s[:n_components] / np.sqrt(max(len(x) - 1, 1)), 1e-8)
        self.dim = z.shape[1] if self.basis is None else self.basis.shape[1]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mu) / self.sd
        if self.basis is not None:
            z = (z @ self.basis) / self.scale
        return z.astype(np.float32)

    def describe(self) -> dict:
        return {"standardised": "train spots", "pca_components": None if self.basis is None else self.dim}


def stack_targets(data) -> np.ndarray:
    return np.concatenate([np.asarray(s.targets, dtype=np.float32) for s in data.slides])

