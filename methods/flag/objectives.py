"""FLAG's score parameterisations, its alignment loss and its validation score."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from flag_bench.methods.common.sde import masked_mean
from flag_bench.metrics.kernels import pearson_columns


def output_to_score(out: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor, mode: str) -> torch.Tensor:
    """Network output -> score at noise ``sigma`` (broadcast against x_t), per ``score_output``:
    "raw" (the output is the score), "over_sigma", or "edm" (the exact score of a unit Gaussian
    plus a learned correction; see FlagConfig.score_output)."""
    out = out.float()
    if mode == "over_sigma":
        return out / sigma
    if mode == "edm":
        return -x_t / (1 + sigma ** 2) + out / (sigma * torch.sqrt(1 + sigma ** 2))
    return out


def alignment_loss(z: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REPA loss: minus the mean cosine between projected tokens and GFM embeddings.

    z, target (M, G, D); mask (M, G) bool, True where the gene was present in the spot's GFM input.
    Absent genes (zero targets) are excluded, as in the reference.
    """
    cos = F.cosine_similarity(z, target, dim=-1, eps=1e-8)
    return -masked_mean(cos, mask)


def val_score(preds: list[np.ndarray], truths: list[np.ndarray], metric: str) -> float:
    """Higher is better: mean per-gene Pearson over the sampled spots (the leaderboard's kernel),
    or minus MSE. -1 when no gene can be scored."""
    p = np.concatenate(preds)
    y = np.concatenate(truths).astype(np.float32)
    keep = ~np.isnan(p).any(axis=1)  # spots of windows not drawn this time
    p, y = p[keep], y[keep]
    if metric == "mse":
        return -float(np.mean((p - y) ** 2))
    r, valid = pearson_columns(y, p)
    return float(np.mean(r[valid])) if valid.any() else -1.0
