"""Noise processes and their training losses.

- ``VESDE``: FLAG's variance-exploding SDE, sigma(t) = s_min (s_max/s_min)^t on [t_min, 1], with the
  denoising score-matching loss weighted by sigma^2 (flag-spec §3.4).
- ``GaussianDiffusion``: Stem's discrete DDPM (linear beta, T steps, epsilon prediction, learned-range
  variance trained by the variational bound with the mean detached), with respacing for sampling
  (baselines-spec §4.4, §4.6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` over the entries where ``mask`` (broadcastable, bool/0-1) is set."""
    if mask is None:
        return values.mean()
    m = mask.to(values.dtype).expand_as(values)
    return (values * m).sum() / m.sum().clamp_min(1.0)


# ---------------------------------------------------------------------------------------- VE-SDE
@dataclass(frozen=True)
class VESDE:
    sigma_min: float = 0.01
    sigma_max: float = 10.0
    t_min: float = 0.01

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def g2(self, t: torch.Tensor) -> torch.Tensor:
        """Squared diffusion coefficient g(t)^2 = d sigma^2/dt."""
        return self.sigma(t) ** 2 * (2.0 * math.log(self.sigma_max / self.sigma_min))

    def sample_t(self, n: int, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
        """t ~ U(t_min, 1), one per training example (per window for FLAG)."""
        u = torch.rand(n, generator=generator, device="cpu").to(device)
        return self.t_min + (1.0 - self.t_min) * u

    def perturb(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
        """x_t = x0 + sigma(t) * noise; t has x0's leading dim. Returns (x_t, sigma broadcastable)."""
        sigma = self.sigma(t).view(-1, *([1] * (x0.dim() - 1)))
        return x0 + sigma * noise, sigma


def dsm_loss(score: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """sigma^2 * |s + (x_t - x0)/sigma^2|^2 = |sigma*s + noise|^2, averaged over the masked entries.

    score, noise (..., G); sigma broadcastable; mask broadcastable bool over (..., G) or (..., 1).
    """
    return masked_mean((sigma * score + noise) ** 2, mask)


# ------------------------------------------------------------------------------------------ DDPM
def linear_betas(n_steps: int = 1000, start: float = 1e-4, end: float = 0.02) -> np.ndarray:
    scale = 1000.0 / n_steps  # keeps the schedule's total noise when T differs from 1000
    return np.linspace(scale * start, scale * end, n_steps, dtype=np.float64)


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


class GaussianDiffusion:
    """DDPM with learned-range variance. The model returns (B, G, 2): (eps_hat, v) with v in ~[-1, 1].

    ``timestep_map`` maps this process's step index to the original step the model was trained on
    (identity unless respaced).
    """

    def __init__(self, betas: np.ndarray, timestep_map: np.ndarray | None = None):
        self.betas = betas = np.asarray(betas, dtype=np.float64)
        self.n_steps = len(betas)
        self.timestep_map = np.arange(self.n_steps) if timestep_map is None else np.asarray(timestep_map)
        alphas = 1.0 - betas
        self.ac = np.cumprod(alphas)
        self.ac_prev = np.append(1.0, self.ac[:-1])
        self.sqrt_ac = np.sqrt(self.ac)
        self.sqrt_1m_ac = np.sqrt(1.0 - self.ac)
        self.sqrt_recip_ac = np.sqrt(1.0 / self.ac)
        self.sqrt_recipm1_ac = np.sqrt(1.0 / self.ac - 1.0)
        self.post_var = betas * (1.0 - self.ac_prev) / (1.0 - self.ac)
        # the posterior variance is 0 at t = 0; borrow t = 1 so the log stays finite
        self.post_logvar = np.log(np.append(self.post_var[1], self.post_var[1:]))
        self.post_c1 = betas * np.sqrt(self.ac_prev) / (1.0 - self.ac)
        self.post_c2 = (1.0 - self.ac_prev) * np.sqrt(alphas) / (1.0 - self.ac)
        self.log_betas = np.log(betas)
        self._cache: dict[tuple[int, str], torch.Tensor] = {}

    def _g(self, arr: np.ndarray, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """arr[t] as float32 on t's device, shaped to broadcast over an ndim-dimensional batch."""
        key = (id(arr), str(t.device))  # arr is one of this instance's own (immortal) arrays
        tab = self._cache.get(key)
        if tab is None:
            tab = self._cache[key] = torch.as_tensor(arr, dtype=torch.float32, device=t.device)
        return tab[t].view(-1, *([1] * (ndim - 1)))

    def respaced(self, n_steps: int) -> "GaussianDiffusion":
        """The same marginals on ``n_steps`` evenly spaced original steps (IDDPM respacing)."""
        if n_steps >= self.n_steps:
            return self
        keep = np.unique(np.round(np.linspace(0, self.n_steps - 1, n_steps)).astype(int))
        last, betas = 1.0, []
        for i in keep:
            betas.append(1.0 - self.ac[i] / last)
            last = self.ac[i]
        return GaussianDiffusion(np.array(betas), self.timestep_map[keep])

    def model_t(self, t: torch.Tensor) -> torch.Tensor:
        """Step indices as the model saw them in training (float, for the time embedding)."""
        return torch.as_tensor(self.timestep_map, device=t.device)[t].float()

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        n = x0.dim()
        return self._g(self.sqrt_ac, t, n) * x0 + self._g(self.sqrt_1m_ac, t, n) * noise

    def q_posterior(self, x0, x_t, t):
        n = x0.dim()
        mean = self._g(self.post_c1, t, n) * x0 + self._g(self.post_c2, t, n) * x_t
        return mean, self._g(self.post_logvar, t, n)

    def p_mean_logvar(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """-> (mean, log variance, predicted x0) of p(x_{t-1} | x_t)."""
        eps, v = model_out[..., 0], model_out[..., 1]
        n = x_t.dim()
        frac = (v + 1.0) / 2.0
        logvar = frac * self._g(self.log_betas, t, n) + (1.0 - frac) * self._g(self.post_logvar, t, n)
        x0 = self._g(self.sqrt_recip_ac, t, n) * x_t - self._g(self.sqrt_recipm1_ac, t, n) * eps
        mean, _ = self.q_posterior(x0, x_t, t)
        return mean, logvar, x0

    def loss(self, model_out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
             noise: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """MSE(eps) + L_vb in bits per dimension, L_vb training only the variance (mean detached).

        At t = 0 the decoder term is a continuous Gaussian NLL of x0 (the reference's discretised
        image likelihood assumes 8-bit data in [-1, 1]; baselines-spec §4.4 [R]).
        """
        mse = (model_out[..., 0] - noise) ** 2
        frozen = torch.stack([model_out[..., 0].detach(), model_out[..., 1]], dim=-1)
        mean, logvar, _ = self.p_mean_logvar(frozen, x_t, t)
        true_mean, true_logvar = self.q_posterior(x0, x_t, t)
        kl = normal_kl(true_mean, true_logvar, mean, logvar) / math.log(2.0)
        nll = 0.5 * (math.log(2 * math.pi) + logvar + (x0 - mean) ** 2 * torch.exp(-logvar)) / math.log(2.0)
        first = (t == 0).view(-1, *([1] * (x0.dim() - 1)))
        vb = torch.where(first, nll, kl)
        mse_m, vb_m = masked_mean(mse, mask), masked_mean(vb, mask)
        return mse_m + vb_m, {"mse": float(mse_m.detach()), "vb": float(vb_m.detach())}
