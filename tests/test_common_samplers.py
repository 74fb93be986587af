"""Samplers on analytic cases: a Gaussian target whose exact score / velocity is known, so the
sampler's deterministic map from prior to data can be checked point by point."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from flag_bench.methods.common.samplers import flow_euler, flow_heun, heun_pf_ode

MU, S = 1.5, 0.4


def gaussian_velocity(states, t):
    """Exact flow-matching velocity for x_t = (1 - t) z + t x1, z ~ N(0, 1), x1 ~ N(MU, S^2):
    v = E[x1 - z | x_t] = MU + (t S^2 - (1 - t)) / (t^2 S^2 + (1 - t)^2) (x - t MU)."""
    tt = t.view(-1, 1).to(states[0].dtype)
    var = tt ** 2 * S ** 2 + (1 - tt) ** 2
    return [MU + (tt * S ** 2 - (1 - tt)) / var * (states[0] - tt * MU)]


def _prior_grid(dtype=torch.float64):
    return torch.linspace(-2.5, 2.5, 11, dtype=dtype)[:, None]


@pytest.mark.parametrize("sampler, steps, tol", [(flow_euler, 1000, 2e-3), (flow_heun, 100, 2e-4)])
def test_flow_samplers_transport_a_gaussian_quantile_to_quantile(sampler, steps, tol):
    z = _prior_grid()
    (x,) = sampler(gaussian_velocity, [z], steps)
    # the exact flow map of this interpolant is affine: z -> MU + S z
    torch.testing.assert_close(x, MU + S * z, rtol=0, atol=tol)


def test_flow_heun_is_second_order_and_euler_first_order():
    z = _prior_grid()
    err = {}
    for name, sampler in (("euler", flow_euler), ("heun", flow_heun)):
        for n in (10, 20):
            (x,) = sampler(gaussian_velocity, [z], n)
            err[name, n] = float((x - (MU + S * z)).abs().max())
    assert err["heun", 10] < err["euler", 10]
    assert 1.6 < err["euler", 10] / err["euler", 20] < 2.5  # halving the step halves the error
    assert err["heun", 10] / err["heun", 20] > 3.0  # ... and quarters it for Heun


def test_flow_post_is_applied_after_every_step_and_inputs_are_not_mutated():
    z = _prior_grid()
    before = z.clone()
    calls = []

    def post(states):
        calls.append(1)
        return [states[0].clamp_max(1.0)]

    (x,) = flow_euler(gaussian_velocity, [z], 5, post=post)
    assert len(calls) == 5 and float(x.max()) <= 1.0
    assert torch.equal(z, before)
    with pytest.raises(ValueError, match="n_steps"):
        flow_heun(gaussian_velocity, [z], 0)


@dataclass(frozen=True)
class LinearSigma:
    """A schedule that is not the VE-SDE: sigma(t) = sigma_max * t (EDM-like), g^2 = 2 sigma_max^2 t."""

    sigma_max: float = 5.0
    t_min: float = 0.002

    def sigma(self, t):
        return self.sigma_max * t

    def g2(self, t):
        return 2 * self.sigma_max ** 2 * t


def test_heun_pf_ode_works_on_any_sigma_schedule():
    """For N(MU, S^2) data the PF-ODE maps x_1 = MU + sqrt(S^2 + sigma(1)^2) z to
    MU + sqrt(S^2 + sigma(t)^2) z, and the Tweedie step then gives MU + S^2 z / sqrt(S^2 + sigma_min^2)."""
    sched = LinearSigma()
    z = _prior_grid()

    def score(states, t):
        var = S ** 2 + sched.sigma(t).view(-1, 1) ** 2
        return [-(states[0] - MU) / var]

    init = MU + math.sqrt(S ** 2 + sched.sigma_max ** 2) * z
    (x,) = heun_pf_ode(score, [init], sched, n_steps=200)
    s_min = sched.sigma_max * sched.t_min
    torch.testing.assert_close(x, MU + S ** 2 * z / math.sqrt(S ** 2 + s_min ** 2), rtol=0, atol=2e-3)
