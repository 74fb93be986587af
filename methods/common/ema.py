"""Exponential moving average of a model's weights (used for validation and test sampling)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class EMA:
    """shadow <- decay * shadow + (1 - decay) * param after every optimiser step.

    ``warmup`` uses decay_n = min(decay, (1 + n) / (10 + n)) so a short CPU run is not dominated by
    the random initial weights; off for the published recipes. Buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup, self.n_updates = decay, warmup, 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        if self.warmup:
            return min(self.decay, (1.0 + self.n_updates) / (10.0 + self.n_updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - d)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)
        self.n_updates += 1
