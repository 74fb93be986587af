"""TRIPLEX's attention stack: neighbour encoder (learned offset bias, key mask), global encoder
(Transformer, APEG, Transformer), the one shared cross-attention fusion encoder, four heads and
the fusion + self-distillation loss. Attention is PyTorch's scaled_dot_product_attention: no
flash_attn, and CUDA picks a fused kernel by itself.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _key_mask(key_mask: torch.Tensor | None, dtype) -> torch.Tensor | None:
    """(B, n) bool valid keys -> additive (B, 1, 1, n) mask; a large finite negative (as the
    official fp16 fill) so a row never becomes NaN."""
    if key_mask is None:
        return None
    fill = torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device)
    return fill.masked_fill(~key_mask, torch.finfo(dtype).min)[:, None, None, :]


class Attention(nn.Module):
    """Multi-head attention, q from ``x``, k and v from ``kv``; optional per-head bias over
    (|d row|, |d col|) offsets of a res x res token grid (LeViT style, the neighbour stream)."""

    def __init__(self, dim: int, heads: int, dropout: float, bias_res: int | None = None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.bias = None
        if bias_res:
            pos = torch.cartesian_prod(torch.arange(bias_res), torch.arange(bias_res))
            d = (pos[:, None] - pos[None]).abs()
            self.register_buffer("bias_idx", d[..., 0] * bias_res + d[..., 1], persistent=False)
            self.bias = nn.Parameter(torch.zeros(heads, bias_res * bias_res))

    def forward(self, x, kv, key_mask=None):
        b, nq, dim = x.shape
        split = lambda t: t.view(b, t.shape[1], self.heads, -1).transpose(1, 2)  # noqa: E731
        q = split(self.to_q(x))
        k, v = (split(t) for t in self.to_kv(kv).chunk(2, dim=-1))
        mask = _key_mask(key_mask, q.dtype)
        if self.bias is not None:
            bias = self.bias[:, self.bias_idx].to(q.dtype)[None]
            mask = bias if mask is None else mask + bias
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).reshape(b, nq, dim))


class Layer(nn.Module):
    """Pre-norm attention and GELU feed-forward, residuals around both. In cross-attention the
    same LayerNorm is applied to the queries and the keys (as the official PreNorm does)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float, bias_res: int | None = None):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout, bias_res)
        self.ff = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim),
                                nn.Dropout(dropout))

    def forward(self, x, kv=None, key_mask=None):
        h = self.norm1(x)
        x = x + self.attn(h, h if kv is None else self.norm1(kv), key_mask)
        return x + self.ff(self.norm2(x))


def _stack(depth, dim, heads, mlp_ratio, dropout, bias_res=None) -> nn.ModuleList:
    return nn.ModuleList(Layer(dim, heads, int(dim * mlp_ratio), dropout, bias_res) for _ in range(depth))


class APEG(nn.Module):
    """Scatter-average the tokens into the dense spot grid, 3x3 depthwise conv, read back at the
    spots' cells (occupied cells take the conv output, as the official new-code APEG)."""

    def __init__(self, dim: int, kernel: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)

    def forward(self, x: torch.Tensor, cell: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """x (N, C), cell (N,) flat grid index -> (N, C)."""
        h, w = shape
        c = x.shape[1]
        dense = x.new_zeros(h * w, c).index_add_(0, cell, x)
        count = x.new_zeros(h * w).index_add_(0, cell, torch.ones_like(cell, dtype=x.dtype))
        dense = (dense / count.clamp(min=1)[:, None]).T.reshape(1, c, h, w)
        out = self.proj(dense).reshape(c, h * w).T
        return out[cell]


class GlobalEncoder(nn.Module):
    def __init__(self, dim, depth, heads, mlp_ratio, dropout, kernel):
        super().__init__()
        self.first = _stack(1, dim, heads, mlp_ratio, dropout)
        self.apeg = APEG(dim, kernel)
        self.rest = _stack(depth - 1, dim, heads, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, cell, shape):
        """x (N, D) every spot of one slide -> (N, D) global tokens."""
        x = x[None]
        for layer in self.first:
            x = layer(x)
        x = self.apeg(x[0], cell, shape)[None]
        for layer in self.rest:
            x = layer(x)
        return self.norm(x)[0]


class NeighbourEncoder(nn.Module):
    def __init__(self, dim, depth, heads, mlp_ratio, dropout, res):
        super().__init__()
        self.layers = _stack(depth, dim, heads, mlp_ratio, dropout, bias_res=res)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, mask):
        for layer in self.layers:
            x = layer(x, key_mask=mask)
        return self.norm(x)


class FusionEncoder(nn.Module):
    """One cross-attention stack used twice with the global token as query: over the target
    tokens and over the (masked) neighbour tokens; the sum is LayerNormed."""

    def __init__(self, dim, depth, heads, mlp_ratio, dropout):
        super().__init__()
        self.layers = _stack(depth, dim, heads, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(dim)

    def _cross(self, q, kv, mask=None):
        for layer in self.layers:
            q = layer(q, kv, mask)
        return q

    def forward(self, target, neighbour, glob, mask):
        q = glob[:, None]
        return self.norm((self._cross(q, target) + self._cross(q, neighbour, mask))[:, 0])


def triplex_loss(preds: tuple[torch.Tensor, ...], y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, dict]:
    """MSE(fusion, y) + sum over streams of (1 - alpha) MSE(stream, y) + alpha MSE(fusion, stream);
    the distillation term is not detached (gradients reach both sides, as the official loss)."""
    fusion, *streams = (p.float() for p in preds)
    loss = F.mse_loss(fusion, y)
    logs = {"fusion": float(loss.detach())}
    for name, s in zip(("target", "neighbour", "global"), streams):
        sup = F.mse_loss(s, y)
        loss = loss + (1 - alpha) * sup + alpha * F.mse_loss(fusion, s)
        logs[name] = float(sup.detach())
    return loss, logs
