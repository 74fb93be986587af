"""FLAG's network: the spatial graph encoder and/or the gene-token DiT, by the variant's graph role.

Graph roles (``GraphRole``):

- ``"condition"``: the graph encoder (mode 2) turns a window into per-spot conditions for the
  DiT, which predicts the score (FLAG, flag-paper, flag-no-gfm, flag-regression).
- ``"none"``: no graph; the DiT is conditioned on an MLP of the spot's image embedding
  (flag-no-graph).
- ``"node"`` / ``"joint"``: the graph encoder (mode 1, time-aware) is itself the score network
  over node expression, with the edge stream as a second diffused state for ``"joint"``.
"""

from __future__ import annotations

from typing import Literal, cast

import torch
import torch.nn as nn

from flag_bench.methods.common.dit import GeneDiT, TimestepEmbedder, TokenProjector, auto_genes_per_token
from flag_bench.methods.flag.config import FlagConfig

GraphRole = Literal["none", "condition", "node", "joint"]
GRAPH_SCORE_ROLES = ("node", "joint")  # the graph model is the score network (mode 1)


class FlagNet(nn.Module):
    """forward(x_t (B,N,G), t (B,) or (B,N), cond_v (B,N,Dc), cond_e (B,N,N,2)|None, mask (B,N),
    a_t|None, capture, ctx (M,hidden)|None) -> (node out (B,N,G), edge out (B,N,N,1)|None, aligned
    tokens (M,G,z)|None), where M is the number of valid spots in mask order. ``ctx`` is a
    precomputed ``spot_context`` (only possible when the graph does not read X_t).
    """

    def __init__(self, graph_role: GraphRole, n_genes: int, cond_dim: int, cfg: FlagConfig, z_dim: int | None):
        super().__init__()
        self.graph_role, self.n_genes = graph_role, n_genes
        self.graph: nn.Module | None = None
        self.graph_sees_xt = False
        if graph_role != "none":
            self._build_graph(graph_role, n_genes, cond_dim, cfg)
        self.dit: GeneDiT | None = None
        if graph_role in ("none", "condition"):
            self._build_dit(n_genes, cond_dim, cfg, z_dim)

    def _build_graph(self, graph_role: GraphRole, n_genes: int, cond_dim: int, cfg: FlagConfig) -> None:
        from flag_bench.methods.flag.graph_encoder import GraphEncoder, GraphEncoderConfig

        mode1 = graph_role in GRAPH_SCORE_ROLES
        self.graph_sees_xt = mode1 or cfg.graph_input == "x_t"
        self.graph = GraphEncoder(GraphEncoderConfig(
            n_genes=n_genes, d_model=cfg.graph_dim, n_layers=cfg.graph_layers, n_heads=cfg.graph_heads,
            dropout=cfg.graph_dropout, node_cond_dim=cond_dim, edge_cond_dim=2, edge_dim=1,
            ada_norm=mode1, use_cond_e_in_attn=True if mode1 else cfg.use_cond_e_in_attn,
            use_edge_stream=graph_role == "joint", node_input="x_t" if self.graph_sees_xt else "cond"))

    def _build_dit(self, n_genes: int, cond_dim: int, cfg: FlagConfig, z_dim: int | None) -> None:
        gpt = auto_genes_per_token(n_genes, cfg.max_gene_tokens, cfg.max_genes_per_token)
        self.t_embed = TimestepEmbedder(cfg.hidden)
        self.dit = GeneDiT(n_genes, cfg.hidden, cfg.depth, cfg.heads, cfg.mlp_ratio, 1, gpt)
        self.context: nn.Sequential
        if self.graph is not None:
            self.context = nn.Sequential(nn.Linear(n_genes, cfg.d_gene), nn.SiLU(), nn.Linear(cfg.d_gene, cfg.hidden))
        else:  # flag-no-graph: the image embedding itself is the condition (Stem-like)
            self.context = nn.Sequential(nn.Linear(cond_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cfg.hidden))
        # cast: indexing a Sequential is typed Module; these are its Linear layers
        for lin in cast("tuple[nn.Linear, ...]", (self.context[0], self.context[2])):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        for lin in cast("tuple[nn.Linear, ...]", (self.t_embed.mlp[0], self.t_embed.mlp[2])):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        self.align_layer, self.time_scale = cfg.align_layer, cfg.time_scale
        self.projector = (TokenProjector(cfg.hidden, cfg.projector_dim, z_dim, gpt)
                          if z_dim and cfg.align_layer > 0 else None)

    def spot_context(self, cond_v, cond_e, mask) -> torch.Tensor:
        """Per-spot condition (M, hidden) for graphs that do not read X_t (or no graph)."""
        if self.graph is None:
            return self.context(cond_v[mask])
        node, _ = self.graph(None, None, cond_v, cond_e, mask)
        return self.context(node[mask])

    def forward(self, x_t, t, cond_v, cond_e, mask, a_t=None, capture: bool = False, ctx=None):
        edge_out = None
        if ctx is None:
            if self.graph is not None and self.graph_sees_xt:
                node, edge_out = self.graph(x_t, t, cond_v, cond_e, mask, a_t)
                if self.dit is None:
                    return node, edge_out, None
                ctx = self.context(node[mask])
            else:
                ctx = self.spot_context(cond_v, cond_e, mask)
        assert self.dit is not None  # only the graph-score roles go without, and they returned above
        B, N, G = x_t.shape
        tt = (t[:, None].expand(B, N) if t.dim() == 1 else t)[mask]
        want = self.align_layer if (capture and self.projector is not None) else None
        out, h = self.dit(x_t[mask], self.t_embed(tt * self.time_scale) + ctx, capture_layer=want)
        full = x_t.new_zeros(B, N, G)
        full[mask] = out[..., 0].to(full.dtype)
        z = self.projector(h, G) if want is not None and self.projector is not None else None
        return full, edge_out, z
