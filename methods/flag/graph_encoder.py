"""FLAG's spatial graph encoder (flag-spec §3.1): a dual-stream graph transformer over the spots
of one window, with a node stream H_x (B, N, C) and a dense edge stream H_e (B, N, N, C).

Two modes share the code:

* mode 1 (``ada_norm=True``; joint / node-only graph diffusion, §3.6): the blocks see the
  diffusion time through AdaLN driven by z = MLP_fuse([t_emb, Pool(C_v), Pool(C_e)]), with
  Fourier time features f = exp(linspace(0, 6, C/2)).
* mode 2 (``ada_norm=False``; FLAG, §3.1 "Modes"): plain LayerNorm, so t reaches the encoder
  only through the noisy input X_t. No time modules are built.

Attention is *per channel*: the score keeps the head-channel axis, S[b·h, i, j, c], and the
softmax over j runs separately for every channel c. That is the memory hot spot: every block
materialises a handful of (B·H, N, N, head_dim) = (B, N, N, C) tensors (score, edge/condition
modulations, attention weights) plus the edge stream itself. For C = 64 and N = 80 one such
tensor is 80·80·64·4 B = 1.6 MB per window, so CPU windows of 50–80 spots are cheap; at the
paper size C = 384 it is ~10 MB per tensor and roughly 0.1 GB of saved activations per block
for backward at N = 80. Memory grows as N², which is why ``common.windows.windows`` can cap
spots per window.

Padded spots (mask False) never influence real spots: their pairs are -inf in the score,
their values are zeroed, masked means skip them, and their outputs are zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from flag_bench.methods.common.windows import pair_mask


@dataclass(frozen=True)
class GraphEncoderConfig:
    """Hyper-parameters of :class:`GraphEncoder` (defaults: the released FLAG config, §4)."""

    n_genes: int
    node_cond_dim: int
    d_model: int = 384
    n_layers: int = 6
    n_heads: int = 8
    dropout: float = 0.1
    edge_cond_dim: int = 2
    edge_dim: int = 1
    ada_norm: bool = False
    use_cond_e_in_attn: bool = False
    # True: A_t is an input and the edge head is evaluated (joint diffusion). False: A_t is taken
    # as 0 (FLAG's "dynamic edge evolution suppressed") and no edge output is returned. The
    # internal edge state still evolves from the attention scores, as in the reference.
    use_edge_stream: bool = False
    # "x_t": the node stem reads the noisy expression (the released code). "cond": it reads the node
    # conditions C_v instead, so the encoder is GraphEncoder(C_v, C_e) as the paper's text writes it;
    # its output then does not depend on X_t (or t, without ada_norm) and can be computed once per
    # window and reused across sampler steps.
    node_input: str = "x_t"

    def __post_init__(self):
        if self.node_input not in ("x_t", "cond"):
            raise ValueError(f"node_input must be 'x_t' or 'cond', got {self.node_input!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.ada_norm and self.d_model % 2:
            raise ValueError("d_model must be even in ada_norm mode (sin/cos Fourier time features)")
        if min(self.n_genes, self.node_cond_dim, self.d_model, self.n_layers, self.edge_dim) < 1:
            raise ValueError("n_genes, node_cond_dim, d_model, n_layers and edge_dim must be >= 1")
        if self.use_cond_e_in_attn and self.edge_cond_dim < 1:
            raise ValueError("use_cond_e_in_attn needs edge_cond_dim >= 1")


def _mlp(d_in: int, d_hidden: int, d_out: int, act: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), act(), nn.Linear(d_hidden, d_out))


class AdaLayerNorm(nn.Module):
    """(1 + γ(z)) ⊙ LN(h) + β(z) with a no-affine LN; γ, β from a zero-initialised SiLU→Linear,
    so the block starts as plain LN. h: (B, ..., C), z: (B, Cz)."""

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))

    def zero_init(self) -> None:
        lin = cast(nn.Linear, self.head[1])  # indexing a Sequential is typed Module
        nn.init.zeros_(lin.weight)
        nn.init.zeros_(lin.bias)

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.head(z).chunk(2, dim=-1)
        shape = (z.shape[0],) + (1,) * (h.dim() - 2) + (h.shape[-1],)
        return self.norm(h) * (1 + gamma.view(shape)) + beta.view(shape)


class GEGLU(nn.Module):
    """Linear(C → 2·hidden) split into value and gate halves: value ⊙ GELU(gate)."""

    def __init__(self, d_in: int, d_hidden: int):
        super().__init__()
        self.proj = nn.Linear(d_in, 2 * d_hidden)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(h).chunk(2, dim=-1)
        return value * F.gelu(gate)


def _ffn(dim: int, dropout: float) -> nn.Sequential:
    """LN → GEGLU(C → 2C) → Dropout → Linear(2C → C). (The reference keeps this inner LN even
    though the block normalises before calling it.)"""
    return nn.Sequential(nn.LayerNorm(dim), GEGLU(dim, 2 * dim), nn.Dropout(dropout), nn.Linear(2 * dim, dim))


class GraphTransformerBlock(nn.Module):
    """One block with edge-modulated per-channel attention (§3.1 steps 1–5).

    forward(h_x (B,N,C), h_e (B,N,N,C), z (B,C)|None, cond_v (B,N,Dc), cond_e (B,N,N,De)|None,
    mask (B,N) bool) -> (h_x, h_e). ``cond_e`` is only used when the block was built with
    ``use_cond_e``.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float, node_cond_dim: int, edge_cond_dim: int,
                 ada_norm: bool, use_cond_e: bool):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.ada_norm, self.use_cond_e = ada_norm, use_cond_e
        def lin(d_in: int) -> nn.Linear:
            return nn.Linear(d_in, dim, bias=False)

        self.q, self.k, self.v = lin(dim), lin(dim), lin(dim)
        self.e_mul, self.e_add = lin(dim), lin(dim)
        # node-condition pair terms CX and the output FiLM of the attention
        self.cx_q_mul, self.cx_k_mul = lin(node_cond_dim), lin(node_cond_dim)
        self.cx_q_add, self.cx_k_add = lin(node_cond_dim), lin(node_cond_dim)
        self.cx_film_mul, self.cx_film_add = lin(node_cond_dim), lin(node_cond_dim)
        if use_cond_e:
            self.ce_mul, self.ce_add = lin(edge_cond_dim), lin(edge_cond_dim)
            self.ce_film_mul, self.ce_film_add = lin(edge_cond_dim), lin(edge_cond_dim)
        self.alpha = nn.Parameter(torch.tensor(0.1))
        self.beta = nn.Parameter(torch.tensor(0.1))
        self.gamma = nn.Parameter(torch.tensor(0.1))
        self.delta = nn.Parameter(torch.tensor(0.1))
        self.x_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.e_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.ffn_x, self.ffn_e = _ffn(dim, dropout), _ffn(dim, dropout)
        if ada_norm:
            self.fuse = _mlp(3 * dim, dim, dim, nn.SiLU)
            self.pool_v = nn.Linear(node_cond_dim, dim, bias=False)
            self.pool_e = nn.Linear(edge_cond_dim, dim, bias=False) if use_cond_e else None
            self.norm_attn_x: nn.Module
            self.norm_attn_e: nn.Module
            self.norm_ffn_x: nn.Module
            self.norm_ffn_e: nn.Module
            self.norm_attn_x, self.norm_attn_e = AdaLayerNorm(dim, dim), AdaLayerNorm(dim, dim)
            self.norm_ffn_x, self.norm_ffn_e = AdaLayerNorm(dim, dim), AdaLayerNorm(dim, dim)
        else:
            self.norm_attn_x, self.norm_attn_e = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.norm_ffn_x, self.norm_ffn_e = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def zero_init(self) -> None:
        """Zero the adaLN heads and the pooling projections (applied after the global xavier init)."""
        if self.ada_norm:
            norms = (self.norm_attn_x, self.norm_attn_e, self.norm_ffn_x, self.norm_ffn_e)
            for norm in cast("tuple[AdaLayerNorm, ...]", norms):  # ada_norm: they are AdaLayerNorms
                norm.zero_init()
            nn.init.zeros_(self.pool_v.weight)
            if self.pool_e is not None:
                nn.init.zeros_(self.pool_e.weight)

    def _heads(self, h: torch.Tensor) -> torch.Tensor:
        """(B, *S, C) -> (B·H, *S, head_dim)."""
        B, S = h.shape[0], h.shape[1:-1]
        h = h.reshape(B, *S, self.n_heads, self.head_dim)
        return h.movedim(-2, 1).reshape(B * self.n_heads, *S, self.head_dim)

    def _merge(self, h: torch.Tensor, B: int) -> torch.Tensor:
        """(B·H, *S, head_dim) -> (B, *S, C)."""
        S = h.shape[1:-1]
        h = h.reshape(B, self.n_heads, *S, self.head_dim).movedim(1, -2)
        return h.reshape(B, *S, self.n_heads * self.head_dim)

    def fuse_condition(self, t_emb, cond_v, cond_e, node_w, pair_w) -> torch.Tensor:
        """z = MLP_fuse([t_emb, masked-mean(W_v C_v), masked-mean(W_e C_e)]) -> (B, C)."""
        pv = (self.pool_v(cond_v) * node_w).sum(1) / node_w.sum(1).clamp_min(1.0)
        if self.pool_e is not None and cond_e is not None:
            pe = (self.pool_e(cond_e) * pair_w).sum((1, 2)) / pair_w.sum((1, 2)).clamp_min(1.0)
        else:
            pe = torch.zeros_like(pv)
        return self.fuse(torch.cat([t_emb, pv, pe], dim=-1))

    def forward(self, h_x, h_e, t_emb, cond_v, cond_e, mask, need_edges: bool = True):
        """``need_edges=False`` skips the edge-stream update (returns h_e unchanged): only valid when
        nothing reads h_e afterwards (the last block of an encoder without an edge head)."""
        B, N, C = h_x.shape
        H = self.n_heads
        node_w = mask[..., None].to(h_x.dtype)  # (B, N, 1)
        pair = mask[:, :, None] & mask[:, None, :]  # (B, N, N)
        pair_w = pair[..., None].to(h_x.dtype)  # (B, N, N, 1)
        cond_e = cond_e if self.use_cond_e else None

        if self.ada_norm:
            z = self.fuse_condition(t_emb, cond_v, cond_e, node_w, pair_w)
            xn, en = self.norm_attn_x(h_x, z), self.norm_attn_e(h_e, z)
        else:
            z = None
            xn, en = self.norm_attn_x(h_x), self.norm_attn_e(h_e)

        q = self._heads(self.q(xn) * node_w)  # (B·H, N, d)
        k = self._heads(self.k(xn) * node_w)
        v = self._heads(self.v(xn) * node_w)
        score = q[:, :, None, :] * k[:, None, :, :] / math.sqrt(self.head_dim)  # (B·H, N, N, d)

        gate = 1 + self._heads(self.e_mul(en) * pair_w)
        bias = self._heads(self.e_add(en) * pair_w)
        if cond_e is not None:
            gate = gate + self.alpha * self._heads(self.ce_mul(cond_e) * pair_w)
            bias = bias + self.gamma * self._heads(self.ce_add(cond_e) * pair_w)
        cx_mul = self._heads(self.cx_q_mul(cond_v))[:, :, None] * self._heads(self.cx_k_mul(cond_v))[:, None]
        cx_add = self._heads(self.cx_q_add(cond_v))[:, :, None] + self._heads(self.cx_k_add(cond_v))[:, None]
        pair_h = pair.repeat_interleave(H, dim=0)[..., None]  # (B·H, N, N, 1), matches _heads order
        score = (gate + self.beta * cx_mul * pair_h) * score + bias + self.delta * cx_add * pair_h

        # Masked pairs are -inf; rows of padded spots would be all -inf (NaN after softmax), so
        # they get a finite 0 instead and their attention is zeroed afterwards.
        row_valid = mask.repeat_interleave(H, dim=0)[:, :, None, None]
        fill = torch.where(row_valid, float("-inf"), 0.0).to(score.dtype)
        attn = torch.where(pair_h, score, fill).softmax(dim=2) * pair_h
        o = self._merge((attn * v[:, None, :, :]).sum(dim=2), B)  # (B, N, C)

        o = (1 + self.cx_film_mul(cond_v) * node_w) * o + self.cx_film_add(cond_v) * node_w
        h_x = h_x + self.x_out(o) * node_w

        if not need_edges:
            h_x = h_x + self.ffn_x(self.norm_ffn_x(h_x, z) if self.ada_norm else self.norm_ffn_x(h_x))
            return h_x, h_e

        # edge update from the raw modulated score (before masking/softmax)
        e_new = self._merge(score, B) * pair_w  # (B, N, N, C)
        if cond_e is not None:
            e_new = (1 + self.ce_film_mul(cond_e) * pair_w) * e_new + self.ce_film_add(cond_e) * pair_w
        e_new = self.e_out(e_new) * pair_w

        if self.ada_norm:
            h_x = h_x + self.ffn_x(self.norm_ffn_x(h_x, z))
            h_e = h_e + self.ffn_e(self.norm_ffn_e(h_e + e_new, z))
        else:
            h_x = h_x + self.ffn_x(self.norm_ffn_x(h_x))
            h_e = h_e + self.ffn_e(self.norm_ffn_e(h_e + e_new))
        return h_x, h_e


class GraphEncoder(nn.Module):
    """Spatial graph encoder (``GraphModel`` in the reference).

    forward(x_t (B,N,G) float (or None when ``node_input="cond"``), t (B,) float in [0,1],
    cond_v (B,N,Dc), cond_e (B,N,N,De) or None, mask (B,N) bool or None, a_t (B,N,N,edge_dim) or None)
        -> (node_out (B,N,G), edge_out (B,N,N,edge_dim) or None)

    ``node_out`` is zero on padded spots. ``edge_out`` is returned only when
    ``use_edge_stream``; it is symmetric, zero on the diagonal and on padded pairs. ``t`` is
    only read in ``ada_norm`` mode; ``cond_e`` only when ``use_cond_e_in_attn``.
    """

    freqs: torch.Tensor  # a buffer (registered in __init__ when ada_norm)

    def __init__(self, config: GraphEncoderConfig):
        super().__init__()
        self.config = c = config
        C = c.d_model
        self.node_in = _mlp(c.n_genes if c.node_input == "x_t" else c.node_cond_dim, C, C, nn.GELU)
        self.edge_in = _mlp(c.edge_dim, C, C, nn.GELU)
        if c.ada_norm:
            self.register_buffer("freqs", torch.exp(torch.linspace(0.0, 6.0, C // 2)), persistent=False)
            self.time_in = _mlp(C, C, C, nn.SiLU)
        self.blocks = nn.ModuleList(
            GraphTransformerBlock(C, c.n_heads, c.dropout, c.node_cond_dim, c.edge_cond_dim, c.ada_norm,
                                  c.use_cond_e_in_attn)
            for _ in range(c.n_layers)
        )
        self.node_out = nn.Sequential(nn.LayerNorm(C), nn.Linear(C, c.n_genes))
        self.edge_out = nn.Sequential(nn.LayerNorm(C), nn.Linear(C, c.edge_dim))
        self._init_weights()

    def _init_weights(self) -> None:
        from flag_bench.methods.common.dit import xavier_linears

        xavier_linears(self)
        for blk in cast("list[GraphTransformerBlock]", self.blocks):  # ModuleList items are typed Module
            blk.zero_init()

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, C): [sin(2π t f), cos(2π t f)], f = exp(linspace(0, 6, C/2))."""
        arg = 2 * math.pi * t.to(self.freqs.dtype)[:, None] * self.freqs[None]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)

    def forward(self, x_t, t, cond_v, cond_e=None, mask=None, a_t=None):
        c = self.config
        B, N = cond_v.shape[:2]
        if c.node_input == "x_t":
            if x_t is None or x_t.shape[-1] != c.n_genes:
                raise ValueError(f"x_t must be (B, N, {c.n_genes}) when node_input='x_t'")
            ref = x_t
        else:
            ref = cond_v.float() if x_t is None else cond_v.to(x_t.dtype)
        if mask is None:
            mask = torch.ones(B, N, dtype=torch.bool, device=ref.device)
        mask = mask.bool()
        if c.use_cond_e_in_attn and cond_e is None:
            raise ValueError("use_cond_e_in_attn=True needs cond_e (B, N, N, edge_cond_dim)")
        diag = torch.eye(N, dtype=torch.bool, device=ref.device)[None, :, :, None]
        cond_v = cond_v.to(ref.dtype)
        if cond_e is not None:
            cond_e = cond_e.to(ref.dtype)

        if c.use_edge_stream and a_t is not None:
            a_in = a_t.to(ref.dtype).masked_fill(diag, 0.0)
        else:
            a_in = ref.new_zeros(B, N, N, c.edge_dim)
        h_x = self.node_in(x_t if c.node_input == "x_t" else cond_v)
        h_e = self.edge_in(a_in)
        t_emb = self.time_in(self.time_features(t).to(ref.dtype)) if c.ada_norm else None

        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            # without an edge head the last block's edge update is never read: skip it
            h_x, h_e = blk(h_x, h_e, t_emb, cond_v, cond_e, mask, need_edges=c.use_edge_stream or i < last)

        node = self.node_out(h_x) * mask[..., None].to(h_x.dtype)
        if not c.use_edge_stream:
            return node, None
        pair = pair_mask(mask)[..., None]
        e = self.edge_out(h_e)
        e = 0.5 * (e + e.transpose(1, 2))
        return node, e * pair.to(e.dtype)
