"""Samplers for score, noise and velocity models.

* :func:`heun_pf_ode` — the probability-flow ODE of a variance-exploding process, Heun steps and
  a final Tweedie denoise (FLAG). Typed on :class:`SigmaSchedule`, so any sigma(t) with its
  g(t)^2 = d sigma^2 / dt works.
* :func:`ddpm_ancestral` — ancestral sampling of a discrete DDPM with learned variance (Stem).
* :func:`flow_euler` / :func:`flow_heun` — integrate a velocity field from noise at t = 0 to data
  at t = 1 (flow matching / rectified flow, e.g. STFlow).

Models are plain callables over a list of state tensors that lead with the batch axis, so the
same code drives node-only, joint node–edge and gene-token models. ``post`` re-imposes structure
after every update (masking, symmetric edges).
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch

States = list[torch.Tensor]
# field(states, t (B,)) -> one tensor per state: a score, or a velocity
FieldFn = Callable[[Sequence[torch.Tensor], torch.Tensor], Sequence[torch.Tensor]]
ScoreFn = FieldFn
PostFn = Callable[[States], States]


class SigmaSchedule(Protocol):
    """A noise level sigma(t) on [t_min, 1] and g(t)^2 = d sigma(t)^2 / dt."""

    @property
    def t_min(self) -> float: ...  # read-only: schedules are frozen dataclasses

    def sigma(self, t: torch.Tensor) -> torch.Tensor: ...

    def g2(self, t: torch.Tensor) -> torch.Tensor: ...


class DiscreteDiffusion(Protocol):
    """What ancestral sampling needs from a DDPM (``common.sde.GaussianDiffusion``)."""

    n_steps: int

    def model_t(self, t: torch.Tensor) -> torch.Tensor: ...

    def p_mean_logvar(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor): ...


def randn(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard normal noise drawn from ``generator`` (on its own device), then moved."""
    gdev = generator.device if generator is not None else "cpu"
    return torch.randn(*shape, generator=generator, device=gdev).to(device)


def _heun(drift: Callable[[States, torch.Tensor], States], xs: States, ts: torch.Tensor,
          post: PostFn | None) -> States:
    """Heun (RK2) steps of dx/dt = drift(x, t) over the grid ``ts``."""
    for i in range(len(ts) - 1):
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
    return xs


@torch.no_grad()
def heun_pf_ode(score_fn: ScoreFn, init: Sequence[torch.Tensor], sde: SigmaSchedule, n_steps: int,
                post: PostFn | None = None, tweedie: bool = True) -> States:
    """Integrate dx = -1/2 g(t)^2 s(x, t) dt from t = 1 to t_min with Heun (RK2), uniform t grid.

    ``init`` are the states at t = 1 (normally N(0, sigma(1)^2)). The last step is the Tweedie
    denoise x0 = x + sigma(t_min)^2 s(x, t_min) (flag-spec §3.4). Cost: 2*n_steps + 1 score calls.
    """
    xs = [x.clone() for x in init]
    B = xs[0].shape[0]
    ts = torch.linspace(1.0, sde.t_min, n_steps + 1, device=xs[0].device)

    def drift(states, t):
        scores = score_fn(states, t.expand(B))
        g2 = sde.g2(t)
        return [-0.5 * g2 * s for s in scores]

    xs = _heun(drift, xs, ts, post)
    if tweedie:
        t_end = ts[-1]
        scores = score_fn(xs, t_end.expand(B))
        s2 = sde.sigma(t_end) ** 2
        xs = [x + s2 * s for x, s in zip(xs, scores)]
        if post is not None:
            xs = post(xs)
    return xs


@torch.no_grad()
def ddpm_ancestral(model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], diffusion: DiscreteDiffusion,
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


def _flow_grid(n_steps: int, device) -> torch.Tensor:
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    return torch.linspace(0.0, 1.0, n_steps + 1, device=device)


@torch.no_grad()
def flow_euler(velocity_fn: FieldFn, init: Sequence[torch.Tensor], n_steps: int,
               post: PostFn | None = None) -> States:
    """Euler steps of dx/dt = v(x, t) from t = 0 (``init``, the prior sample) to t = 1.

    The convention is x_t = (1 - t) x_noise + t x_data, so v points from noise to data.
    Cost: n_steps velocity calls.
    """
    xs = [x.clone() for x in init]
    B = xs[0].shape[0]
    ts = _flow_grid(n_steps, xs[0].device)
    for i in range(n_steps):
        dt = ts[i + 1] - ts[i]
        xs = [x + dt * v for x, v in zip(xs, velocity_fn(xs, ts[i].expand(B)))]
        if post is not None:
            xs = post(xs)
    return xs


@torch.no_grad()
def flow_heun(velocity_fn: FieldFn, init: Sequence[torch.Tensor], n_steps: int,
              post: PostFn | None = None) -> States:
    """Heun (RK2) steps of dx/dt = v(x, t) from t = 0 to t = 1; second order, 2*n_steps calls."""
    xs = [x.clone() for x in init]
    B = xs[0].shape[0]
    ts = _flow_grid(n_steps, xs[0].device)
    return _heun(lambda states, t: list(velocity_fn(states, t.expand(B))), xs, ts, post)
