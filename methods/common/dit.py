"""Gene-token diffusion transformer (DiT) with adaLN-Zero conditioning, shared by Stem and FLAG.

Each spot is one sequence; its tokens are genes (or groups of ``genes_per_token`` genes, the
CPU-friendly grouping of baselines-spec §4.10). A token is a learned gene-identity embedding plus
an MLP of the token's noisy values. Conditioning (time + image or graph context) enters every block
through adaptive LayerNorm shift/scale/gate whose projections start at zero, so each block is the
identity at initialisation (the "adaLN-Zero" of the DiT lineage; flag-spec §3.3, baselines-spec
§4.3).
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F


def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """(B,) -> (B, dim) cosine/sine features of a (possibly continuous) scalar."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def xavier_linears(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every Linear in ``module`` (the reference's
    whole-model init, flag-spec §3.3); callers re-zero their adaLN/output heads afterwards."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class TimestepEmbedder(nn.Module):
    """Sinusoid of ``t * scale`` -> Linear -> SiLU -> Linear.

    FLAG feeds the raw continuous t in [t_min, 1] (scale 1, flag-spec §3.2); Stem feeds the
    integer DDPM step (scale 1, values 0..999).
    """

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoid(t, self.freq_dim))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    """Pre-norm transformer block over the gene tokens, modulated by a per-sequence vector c."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=True)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden))
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), c (B, D) -> (B, T, D)."""
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN(c).chunk(6, dim=-1)
        B, T, D = x.shape
        h = modulate(self.norm1(x), sh1, sc1)
        q, k, v = self.qkv(h).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, D)
        x = x + g1.unsqueeze(1) * self.proj(a)
        return x + g2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sh2, sc2))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out_dim)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


def tokens_for(n_genes: int, genes_per_token: int) -> int:
    return -(-n_genes // genes_per_token)


class GeneDiT(nn.Module):
    """DiT over gene tokens.

    forward(x (B, G), c (B, D)) -> (out (B, G, out_channels), hidden at ``capture_layer`` (B, T, D) or None)

    ``c`` is the full conditioning vector (time embedding + context), built by the caller.
    With ``genes_per_token`` = k > 1 the G genes are zero-padded to T*k and each token carries k
    values; the head emits k*out_channels numbers per token.
    """

    def __init__(self, n_genes: int, hidden: int = 384, depth: int = 12, heads: int = 6,
                 mlp_ratio: float = 4.0, out_channels: int = 1, genes_per_token: int = 1):
        super().__init__()
        self.n_genes, self.hidden, self.k, self.out_channels = n_genes, hidden, genes_per_token, out_channels
        self.n_tokens = tokens_for(n_genes, genes_per_token)
        self.gene_embed = nn.Parameter(torch.empty(self.n_tokens, hidden))
        self.value_mlp = nn.Sequential(nn.Linear(genes_per_token, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio) for _ in range(depth))
        self.final = FinalLayer(hidden, genes_per_token * out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        xavier_linears(self)
        nn.init.kaiming_uniform_(self.gene_embed, a=math.sqrt(5))
        # adaLN-Zero: every block starts as the identity and the output starts at zero
        # cast: ModuleList and Sequential items are typed Module; these are DiTBlocks and Linears
        heads = [b.adaLN[-1] for b in cast("list[DiTBlock]", self.blocks)] + [self.final.adaLN[-1]]
        for lin in cast("list[nn.Linear]", heads) + [self.final.linear]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, G) -> (B, T, k) values, zero-padded on the gene axis."""
        pad = self.n_tokens * self.k - x.shape[-1]
        if pad:
            x = F.pad(x, (0, pad))
        return x.view(x.shape[0], self.n_tokens, self.k)

    def forward(self, x: torch.Tensor, c: torch.Tensor, capture_layer: int | None = None):
        h = self.gene_embed.unsqueeze(0) + self.value_mlp(self.tokenize(x))
        captured = None
        for i, block in enumerate(self.blocks):
            h = block(h, c)
            if capture_layer is not None and i + 1 == capture_layer:
                captured = h
        out = self.final(h, c)  # (B, T, k*C)
        out = out.view(x.shape[0], self.n_tokens * self.k, self.out_channels)[:, : self.n_genes]
        return out, captured


def auto_genes_per_token(n_genes: int, max_tokens: int | None, max_per_token: int | None = None) -> int:
    """1 token per gene unless ``max_tokens`` caps the sequence length (CPU presets).

    ``max_per_token`` caps the group size in turn (it wins over ``max_tokens``): a token of k genes
    must carry k noisy values through a ``hidden``-wide state and emit k scores, so k much larger
    than hidden is a bottleneck the denoiser cannot learn (FLAG small at G=800, k=50, hidden 32
    learned nothing).
    """
    k = 1 if not max_tokens or n_genes <= max_tokens else -(-n_genes // max_tokens)
    return max(1, min(k, max_per_token)) if max_per_token else k


class TokenProjector(nn.Module):
    """REPA projector: token hidden (D) -> per-gene target space (z_dim).

    MLP D -> P -> SiLU -> P -> SiLU -> k*z_dim (flag-spec §3.5). With grouped tokens (k genes per
    token) the last layer emits one z per gene of the group, so the alignment target stays per gene.
    """

    def __init__(self, hidden: int, proj_dim: int, z_dim: int, genes_per_token: int = 1):
        super().__init__()
        self.k, self.z_dim = genes_per_token, z_dim
        self.net = nn.Sequential(nn.Linear(hidden, proj_dim), nn.SiLU(), nn.Linear(proj_dim, proj_dim), nn.SiLU(),
                                 nn.Linear(proj_dim, genes_per_token * z_dim))

    def forward(self, h: torch.Tensor, n_genes: int) -> torch.Tensor:
        """(B, T, D) -> (B, G, z_dim)."""
        B, T, _ = h.shape
        return self.net(h).view(B, T * self.k, self.z_dim)[:, :n_genes]
