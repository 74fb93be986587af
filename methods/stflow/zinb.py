"""The zero-inflated negative-binomial (ZINB) prior of STFlow, written with torch only.

Parametrisation as scvi-tools' ``ZeroInflatedNegativeBinomial(total_count, logits, zi_logits)``,
the distribution the official code samples from: the NB part has dispersion ``theta =
total_count`` and mean ``theta * exp(logits)``; a draw is replaced by zero with probability
``sigmoid(zi_logits)``. Sampling is Gamma-Poisson; the Gamma draws use Marsaglia-Tsang with an
explicit ``torch.Generator`` because torch's own Gamma sampler accepts none, and the prior must be
reproducible from the method's seed streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _gamma_ge1(shape_a: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """n draws of Gamma(shape_a >= 1, scale 1) by Marsaglia-Tsang rejection (vectorised)."""
    d = shape_a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64)
    todo = torch.arange(n)
    while len(todo):
        m = len(todo)
        z = torch.randn(m, generator=gen, dtype=torch.float64)
        u = torch.rand(m, generator=gen, dtype=torch.float64)
        v = (1.0 + c * z) ** 3
        ok = (v > 0) & (torch.log(u.clamp_min(1e-300)) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        out[todo[ok]] = (d * v)[ok]
        todo = todo[~ok]
    return out


def gamma(shape_a: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """n draws of Gamma(shape_a, scale 1), float64. Shapes below 1 use the boost
    Gamma(a) = Gamma(a + 1) * U^(1/a)."""
    if shape_a <= 0:
        raise ValueError(f"gamma shape must be > 0, got {shape_a}")
    if shape_a >= 1:
        return _gamma_ge1(shape_a, n, gen)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    return _gamma_ge1(shape_a + 1.0, n, gen) * u ** (1.0 / shape_a)


@dataclass(frozen=True)
class ZINB:
    total_count: float = 1.0  # NB dispersion theta
    logits: float = 0.1  # NB mean = theta * exp(logits)
    zi_logits: float = 0.0  # zero-inflation probability = sigmoid(zi_logits)

    @property
    def nb_mean(self) -> float:
        return self.total_count * math.exp(self.logits)

    @property
    def zero_inflation(self) -> float:
        return 1.0 / (1.0 + math.exp(-self.zi_logits))

    def mean(self) -> float:
        """E[count]."""
        return (1.0 - self.zero_inflation) * self.nb_mean

    def zero_fraction(self) -> float:
        """P(count = 0) = pi + (1 - pi) * (theta / (theta + mu))^theta."""
        pi, th = self.zero_inflation, self.total_count
        return pi + (1.0 - pi) * (th / (th + self.nb_mean)) ** th

    def sample_counts(self, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        """Counts (float64, on the generator's CPU) of the given shape."""
        n = math.prod(shape)
        rate = gamma(self.total_count, n, gen) * math.exp(self.logits)  # Gamma(theta, scale e^logits)
        counts = torch.poisson(rate, generator=gen)
        zero = torch.rand(n, generator=gen, dtype=torch.float64) < self.zero_inflation
        return counts.masked_fill(zero, 0.0).reshape(shape)

    def sample(self, shape: tuple[int, ...], gen: torch.Generator, log1p: bool = True) -> torch.Tensor:
        """float32 prior draws; log1p of the counts as the official code does for count priors."""
        c = self.sample_counts(shape, gen)
        return (torch.log1p(c) if log1p else c).float()
