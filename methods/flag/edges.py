"""FLAG's spot graphs: static edge conditions (flag-spec §2.2) and the spot–spot gene correlation
used as the edge target / consistency reference (§2.3). The window partition (§1.5) is the
generic one in ``common.windows``.

Units. The reference works in full-resolution pixels: 2048-px windows and σ_dist = 224 px
("112·2, default patch 224"). The harness works in micrometres so that slides with different
scans are treated alike. The reference's 224 px is the side of the 224-px patch of the
HEST / UNI convention, which is 0.5 µm/px, i.e. 112 µm of tissue; HEST-1k Visium scans are
0.25–0.5 µm/px, so 224 px spans 56–112 µm there. We take the patch reading: σ = 112 µm and,
with the same 0.5 µm/px, windows of 2048 px = 1024 µm. Both are arguments.
"""

from __future__ import annotations

import numpy as np
import torch

from flag_bench.methods.common.windows import pair_mask

DEFAULT_SIGMA_UM = 112.0  # 224 px × 0.5 µm/px


def static_edge_conditions(coords_um, cond_v, sigma_um: float = DEFAULT_SIGMA_UM) -> torch.Tensor:
    """C_e for one window: [w_dist, w_img] per spot pair.

    coords_um : (N, 2) spot centres in µm; cond_v : (N, D) node condition vectors (image
    embeddings). Returns a float32 tensor (N, N, 2) with
    w_dist = exp(-‖u_i − u_j‖² / (2σ²)), w_img = cos(v_i, v_j) (ε = 1e-8 in the denominator),
    symmetric, zero on the diagonal.
    """
    if sigma_um <= 0:
        raise ValueError(f"sigma_um must be > 0, got {sigma_um}")
    u = np.asarray(coords_um, dtype=np.float64)
    v = cond_v.detach().cpu().numpy() if isinstance(cond_v, torch.Tensor) else np.asarray(cond_v)
    v = v.astype(np.float64)
    if u.ndim != 2 or u.shape[1] != 2 or v.ndim != 2 or len(v) != len(u):
        raise ValueError(f"need coords (N, 2) and cond_v (N, D); got {u.shape} and {v.shape}")
    d2 = ((u[:, None, :] - u[None, :, :]) ** 2).sum(-1)
    w_dist = np.exp(-d2 / (2.0 * sigma_um**2))
    norm = np.linalg.norm(v, axis=1)
    w_img = (v @ v.T) / (norm[:, None] * norm[None, :] + 1e-8)
    ce = np.stack([w_dist, w_img], axis=-1)
    ce = 0.5 * (ce + ce.transpose(1, 0, 2))
    idx = np.arange(len(u))
    ce[idx, idx] = 0.0
    return torch.from_numpy(ce.astype(np.float32))


def spot_pcc(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pearson correlation across genes between every pair of spots of each window.

    x : (B, N, G) expression; mask : (B, N) bool (None = all valid).
    Returns (B, N, N, 1): ddof 1, std clamped to ≥ 1e-8, NaN/inf -> 0, symmetrised, zero on the
    diagonal and on pairs touching a padded spot. Differentiable; computed in at least float32.
    """
    if x.dim() != 3:
        raise ValueError(f"spot_pcc expects (B, N, G), got {tuple(x.shape)}")
    B, N, G = x.shape
    if G < 2:
        raise ValueError("spot_pcc needs at least 2 genes")
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    xc = xf - xf.mean(dim=2, keepdim=True)
    std = (xc.pow(2).sum(dim=2) / (G - 1)).sqrt().clamp_min(1e-8)  # (B, N)
    cov = xc @ xc.transpose(1, 2) / (G - 1)
    pcc = torch.nan_to_num(cov / (std[:, :, None] * std[:, None, :]), nan=0.0, posinf=0.0, neginf=0.0)
    pcc = 0.5 * (pcc + pcc.transpose(1, 2))
    keep = pair_mask(torch.ones(B, N, dtype=torch.bool, device=x.device) if mask is None else mask)
    return (pcc * keep.to(pcc.dtype))[..., None]
