"""Input preparation shared by the diffusion-family methods: checks, embedding normalisation with
training statistics only, and padding of spot windows into batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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


@dataclass
class WindowBatch:
    """Windows padded to a common size.

    index : (B, N) long spot index into the slide (0 where padded); mask : (B, N) bool
    """

    index: torch.Tensor
    mask: torch.Tensor

    def gather(self, arr: torch.Tensor) -> torch.Tensor:
        """(n_spots, ...) -> (B, N, ...), zeros where padded."""
        out = arr[self.index]
        m = self.mask.view(*self.mask.shape, *([1] * (out.dim() - 2)))
        return out * m.to(out.dtype)

    def gather_pairs(self, arr: torch.Tensor) -> torch.Tensor:
        """(n_spots, n_spots, ...) -> (B, N, N, ...), zeros where either end is padded."""
        out = arr[self.index[:, :, None], self.index[:, None, :]]
        m = (self.mask[:, :, None] & self.mask[:, None, :])
        m = m.view(*m.shape, *([1] * (out.dim() - 3)))
        return out * m.to(out.dtype)


def pad_windows(windows: list[np.ndarray], device) -> WindowBatch:
    n = max(len(w) for w in windows)
    index = np.zeros((len(windows), n), dtype=np.int64)
    mask = np.zeros((len(windows), n), dtype=bool)
    for i, w in enumerate(windows):
        index[i, : len(w)] = w
        mask[i, : len(w)] = True
    return WindowBatch(torch.as_tensor(index, device=device), torch.as_tensor(mask, device=device))


def stack_targets(data) -> np.ndarray:
    return np.concatenate([np.asarray(s.targets, dtype=np.float32) for s in data.slides])


def clip_predictions(pred: np.ndarray, clip_at_zero: bool) -> np.ndarray:
    pred = np.asarray(pred, dtype=np.float32)
    return np.maximum(pred, 0.0) if clip_at_zero else pred
