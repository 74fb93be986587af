"""The TRIPLEX network: target trunk -> tokens, neighbour and global encoders on frozen features,
shared cross-attention fusion, four linear heads (fusion, target, neighbour, global)."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn as nn

from flag_bench.methods.triplex import nets


class TriplexNet(nn.Module):
    def __init__(self, trunk: nn.Module, feat_dim: int, n_genes: int, cfg):
        super().__init__()
        d = cfg.emb_dim
        self.clamp = cfg.clamp_outputs
        self.trunk = trunk
        # cast: every target trunk (backbones.py) gives its output width as an int ``channels``
        self.target_linear = nn.Linear(cast(int, trunk.channels), d)
        # the official streams read 512-d ResNet-18 features at emb_dim 512 directly; another
        # width (EfficientNet-Lite0's 1,280, a PCA) needs a projection, recorded as a deviation
        same = feat_dim == d and not cfg.feature_projection
        self.neighbour_in = nn.Identity() if same else nn.Linear(feat_dim, d)
        self.global_in = nn.Identity() if same else nn.Linear(feat_dim, d)
        self.neighbour = nets.NeighbourEncoder(d, cfg.depth_neighbour, cfg.heads_neighbour, cfg.mlp_ratio_neighbour,
                                               cfg.dropout_neighbour, res=2 * cfg.neighbour_radius + 1)
        self.glob = nets.GlobalEncoder(d, cfg.depth_global, cfg.heads_global, cfg.mlp_ratio_global,
                                       cfg.dropout_global, cfg.apeg_kernel)
        self.fusion = nets.FusionEncoder(d, cfg.depth_fusion, cfg.heads_fusion, cfg.mlp_ratio_fusion,
                                         cfg.dropout_fusion)
        self.fc = nn.Linear(d, n_genes)
        self.fc_target = nn.Linear(d, n_genes)
        self.fc_neighbour = nn.Linear(d, n_genes)
        self.fc_global = nn.Linear(d, n_genes)

    def encode_global(self, feats: torch.Tensor, cell: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """Every spot of one slide (N, F) -> (N, D) global tokens."""
        return self.glob(self.global_in(feats), cell, shape)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0) if self.clamp else x

    def forward(self, img, neighbour, mask, glob, streams: bool = True):
        """img (B, 3, px, px) normalised, neighbour (B, K, F), mask (B, K) bool, glob (B, D)
        -> (fusion, target, neighbour, global) predictions (B, G); only fusion when not streams."""
        t = self.trunk(img)
        t = self.target_linear(t.flatten(2).transpose(1, 2))  # (B, h*w tokens, D)
        n = self.neighbour(self.neighbour_in(neighbour), mask)
        fused = self._out(self.fc(self.fusion(t, n, glob, mask)))
        if not streams:
            return (fused,)
        # the neighbour head reads the plain token mean, masked positions included (official)
        return (fused, self._out(self.fc_target(t.mean(1))), self._out(self.fc_neighbour(n.mean(1))),
                self._out(self.fc_global(glob)))
