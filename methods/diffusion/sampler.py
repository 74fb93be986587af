"""Samplers: FLAG's Heun probability-flow ODE with a final Tweedie step, and Stem's ancestral DDPM.

Both take the network as a plain callable so the same code drives the node-only, joint node-edge
and gene-token models.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from flag_bench.methods.diffusion.sde import VESDE, GaussianDiffusion

# score_fn(states, t (B,)) -> scores, one per state tensor; states lead with the batch axis B
ScoreFn = Callable[[Sequence[torch.Tensor], torch.Tensor], Sequence[torch.Tensor]]


def randn(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard normal noise drawn from ``generator`` (on its own device), then moved."""
    gdev = generator.device if generator is not None else "cpu"
    return torch.randn(*shape, generator=generator, device=gdev).to(device)


@torch.no_grad()
def heun_pf_ode(score_fn: ScoreFn, init: Sequence[torch.Tensor], sde: VESDE, n_steps: int,
                post: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None,
                tweedie: bool = True) -> list[torch.Tensor]:
    """Integrate dx = -1/2 g(t)^2 s(x, t) dt from t = 1 to t_min with Heun (RK2), uniform t grid.

    ``init`` are the states at t = 1 (normally N(0, sigma_max^2)). ``post`` re-imposes structure
    after every update (e.g. symmetric, masked edges). The last step is the Tweedie denoise
    x0 = x + sigma(t_min)^2 s(x, t_min) (flag-spec §3.4). Cost: 2*n_steps + 1 score calls.
    """
    xs = [x.clone() for x in init]
    B = xs[0].shape[0]
    dev = xs[0].device
    ts = torch.linspace(1.0, sde.t_min, n_steps + 1, device=dev)

    def drift(states, t):
        scores = score_fn(states, t.expand(B))
        g2 = sde.g2(t)
        return [-0.5 * g2 * s for s in scores]

    for i in range(n_steps):
        t, t_next = ts[i], ts[i + 1]
        dt = t_next - t
        d1 = drift(xs, t)
        euler = [x + dt * d for x, d in zip(xs, d1)]
        if post is not None:
            euler = post(euler)
        d2 = drift(euler, t_next)
        xs = [x + 0.5 * dt * (a + b) for x, a, b in zip(xs, d1, d2)]
        if post is not None:
            xs = post(xs)
    if tweedie:
        t_end = ts[-1]
        scores = score_fn(xs, t_end.expand(B))
        s2 = sde.sigma(t_end) ** 2
        xs = [x + s2 * s for x, s in zip(xs, scores)]
        if post is not None:
            xs = post(xs)
    return xs


@torch.no_grad()
def ddpm_ancestral(model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], diffusion: GaussianDiffusion,
                   shape: tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
    """Ancestral sampling x_T ~ N(0, I) -> x_0 with the learned variance; no clipping.

    ``model_fn(x (B, G), t (B,) float original step)`` -> (B, G, 2). ``diffusion`` may be respaced.
    """
    x = randn(shape, generator, device)
    B = shape[0]
    for i in reversed(range(diffusion.n_steps)):
        t = torch.full((B,), i, dtype=torch.long, device=device)
        out = model_fn(x, diffusion.model_t(t))
        mean, logvar, _ = diffusion.p_mean_logvar(out.float(), x, t)
        if i > 0:
            x = mean + torch.exp(0.5 * logvar) * randn(shape, generator, device)
        else:
            x = mean
    return x
