"""Unit tests of the shared diffusion pieces (methods/common): DiT, VE-SDE loss, samplers, EMA,
window batching. The training loop: test_common_training.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flag_bench.methods.common.dit import GeneDiT, TokenProjector, auto_genes_per_token
from flag_bench.methods.common.ema import EMA
from flag_bench.methods.common.inputs import EmbeddingNormalizer
from flag_bench.methods.common.samplers import ddpm_ancestral, heun_pf_ode
from flag_bench.methods.common.sde import VESDE, GaussianDiffusion, dsm_loss, linear_betas, masked_mean


# ------------------------------------------------------------------------------------- DiT
def test_dit_starts_at_zero_and_groups_genes():
    torch.manual_seed(0)
    dit = GeneDiT(n_genes=10, hidden=16, depth=2, heads=2, out_channels=2, genes_per_token=3)
    assert dit.n_tokens == 4
    x, c = torch.randn(5, 10), torch.randn(5, 16)
    out, h = dit(x, c, capture_layer=1)
    assert out.shape == (5, 10, 2) and h.shape == (5, 4, 16)
    assert torch.all(out == 0), "adaLN-Zero: the output layer starts at zero"
    proj = TokenProjector(16, 8, 6, genes_per_token=3)
    assert proj(h, 10).shape == (5, 10, 6)


def test_dit_blocks_start_as_identity_and_condition_matters_after_training_step():
    torch.manual_seed(0)
    dit = GeneDiT(n_genes=6, hidden=8, depth=1, heads=2)
    x, c = torch.randn(3, 6), torch.randn(3, 8)
    h0 = dit.gene_embed[None] + dit.value_mlp(dit.tokenize(x))
    _, h = dit(x, c, capture_layer=1)
    torch.testing.assert_close(h, h0)  # zero gates: the block is the identity


def test_auto_genes_per_token():
    assert auto_genes_per_token(50, None) == 1
    assert auto_genes_per_token(50, 64) == 1
    assert auto_genes_per_token(800, 64) == 13
    assert auto_genes_per_token(200, 50) == 4


# --------------------------------------------------------------------------------- VE-SDE
def test_vesde_schedule_endpoints():
    sde = VESDE(0.01, 10.0, 0.01)
    t = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(sde.sigma(t), torch.tensor([0.01, 10.0]))
    # g^2 = d sigma^2 / dt
    tt = torch.tensor([0.3], dtype=torch.float64)
    h = 1e-5
    num = (sde.sigma(tt + h) ** 2 - sde.sigma(tt - h) ** 2) / (2 * h)
    torch.testing.assert_close(sde.g2(tt), num, rtol=1e-5, atol=0)
    ts = sde.sample_t(1000, torch.Generator().manual_seed(0))
    assert ts.min() >= 0.01 and ts.max() <= 1.0


def test_dsm_loss_is_minimised_by_the_true_score():
    """Toy data x0 ~ N(mu, s^2): the true score of p_t is -(x - mu)/(s^2 + sigma^2); it must beat
    nearby alternatives, and its expected loss must equal the analytic minimum s^2/(s^2+sigma^2)."""
    g = torch.Generator().manual_seed(0)
    mu, s = 1.5, 0.7
    x0 = mu + s * torch.randn(200_000, 1, generator=g)
    sigma = torch.full((200_000, 1), 0.8)
    noise = torch.randn(200_000, 1, generator=g)
    x_t = x0 + sigma * noise
    true = -(x_t - mu) / (s**2 + sigma**2)
    best = dsm_loss(true, noise, sigma)
    analytic = s**2 / (s**2 + 0.8**2)
    assert abs(float(best) - analytic) < 0.01
    for wrong in (1.2 * true, 0.8 * true, true + 0.1, -(x_t - mu) / sigma**2):
        assert dsm_loss(wrong, noise, sigma) > best + 1e-3


def test_dsm_loss_mask_excludes_padded_spots_and_genes():
    score = torch.zeros(2, 3, 4)
    noise = torch.ones(2, 3, 4)
    noise[1, 2] = 100.0  # a padded spot with garbage
    noise[:, :, 3] = -50.0  # a padded gene
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[1, 2] = False
    mask[:, :, 3] = False
    assert float(dsm_loss(score, noise, torch.tensor(1.0), mask)) == pytest.approx(1.0)
    spot_mask = torch.tensor([[True, True, False]])[..., None]  # broadcast over genes
    assert float(masked_mean(torch.arange(3.0).view(1, 3, 1).expand(1, 3, 2), spot_mask)) == pytest.approx(0.5)


# -------------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("exact_prior", [True, False])
def test_heun_pf_ode_samples_a_known_gaussian(exact_prior):
    """Data N(mu, s^2) has the exact score -(x - mu)/(s^2 + sigma(t)^2) at every t; the PF-ODE from
    t = 1 with the Tweedie step must return samples with that mean and variance."""
    sde = VESDE(0.01, 10.0, 0.01)
    mu, s = (1.0, 0.5) if exact_prior else (0.0, 0.8)
    g = torch.Generator().manual_seed(0)
    n = 20_000

    def score_fn(states, t):
        var = s**2 + sde.sigma(t).view(-1, 1) ** 2
        return [-(states[0] - mu) / var]

    sd1 = math.sqrt(s**2 + 100.0) if exact_prior else 10.0
    init = mu * exact_prior + sd1 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    (x,) = heun_pf_ode(score_fn, [init], sde, n_steps=100)
    # Tweedie at sigma_min shrinks the variance by s^2/(s^2 + sigma_min'^2), a < 0.1% effect
    assert abs(float(x.mean()) - mu) < 0.02
    assert abs(float(x.var()) - s**2) < 0.03 * s**2


def test_ddpm_ancestral_samples_a_known_gaussian_with_respacing():
    """For x0 ~ N(mu, s^2) the exact reverse step is Gaussian with mean from E[x0 | x_t] and variance
    beta_tilde + c1^2 Var[x0 | x_t]. Feeding that eps and the v that encodes that variance through
    the learned-range interpolation, ancestral sampling (full and respaced) returns N(mu, s^2)."""
    mu, s = 0.5, 0.6
    full = GaussianDiffusion(linear_betas(1000))
    for diff in (full, full.respaced(50)):
        index = {int(o): i for i, o in enumerate(diff.timestep_map)}

        def model_fn(x, t_model, index=index, diff=diff):  # bound now: the loop rebinds both
            i = torch.full((len(t_model),), index[int(t_model[0])])  # one step per call
            a = torch.as_tensor(diff.ac, dtype=torch.float32)[i].view(-1, 1)
            eps = torch.sqrt(1 - a) * (x - torch.sqrt(a) * mu) / (a * s**2 + 1 - a)
            var_x0 = s**2 * (1 - a) / (a * s**2 + 1 - a)
            c1 = torch.as_tensor(diff.post_c1, dtype=torch.float32)[i].view(-1, 1)
            lo = torch.as_tensor(diff.post_logvar, dtype=torch.float32)[i].view(-1, 1)
            hi = torch.as_tensor(diff.log_betas, dtype=torch.float32)[i].view(-1, 1)
            exact = torch.log(torch.exp(lo) + c1**2 * var_x0)
            frac = torch.where(hi > lo, (exact - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(lo))
            return torch.stack([eps, (2 * frac - 1).expand_as(eps)], dim=-1)

        x = ddpm_ancestral(model_fn, diff, (10_000, 1), torch.Generator().manual_seed(1), "cpu")
        assert abs(float(x.mean()) - mu) < 0.03
        assert abs(float(x.std()) - s) < 0.03


def test_ddpm_loss_vb_trains_only_the_variance():
    diff = GaussianDiffusion(linear_betas(100))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 5, generator=g)
    t = torch.randint(0, 100, (64,), generator=g)
    t[0] = 0
    noise = torch.randn(64, 5, generator=g)
    x_t = diff.q_sample(x0, t, noise)
    out = torch.zeros(64, 5, 2, requires_grad=True)
    loss, logs = diff.loss(out, x0, x_t, t, noise)
    assert torch.isfinite(loss) and logs["vb"] >= 0
    loss.backward()
    grad_eps = out.grad[..., 0]
    # the eps channel only sees the MSE gradient: 2 (eps_hat - noise) / n
    torch.testing.assert_close(grad_eps, 2 * (0 - noise) / noise.numel())


# ------------------------------------------------------------------------------------- EMA
def test_ema_update_is_exact():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    before = [p.detach().clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for old, new, cur in zip(before, ema.model.parameters(), model.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * cur)
    warm = EMA(model, decay=0.999, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)
    with pytest.raises(ValueError):
        EMA(model, decay=1.0)


# ------------------------------------------------------------------------ inputs/batching
def test_window_batching_covers_every_spot_exactly_once():
    from flag_bench.methods.common.batching import WindowedSlide, collate
    from flag_bench.methods.common.windows import windows

    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 3000, size=(500, 2))
    wins = windows(coords, 1024.0, max_spots=40)
    allidx = np.concatenate(wins)
    assert sorted(allidx.tolist()) == list(range(500))
    # every spot lands in exactly one padded slot, with its own values
    vals = torch.arange(500.0)[:, None]
    slide = WindowedSlide({"cond": vals, "x0": vals, "extra": vals}, wins,
                          [torch.ones(len(w), len(w), 2) for w in wins])
    batch = collate([slide], [(0, w) for w in range(len(wins))], "cpu", padded=("cond", "x0"), packed=("extra",))
    assert int(batch.mask.sum()) == 500
    assert sorted(batch.padded["cond"][..., 0][batch.mask].tolist()) == list(range(500))
    assert sorted(batch.padded["x0"][..., 0][batch.mask].tolist()) == list(range(500))
    assert torch.count_nonzero(batch.padded["x0"][~batch.mask]) == 0
    # packed fields hold the valid spots in mask order
    torch.testing.assert_close(batch.packed["extra"], batch.padded["x0"][batch.mask])
    # padded pairs carry no edge condition
    assert float(batch.pairs.sum()) == 2 * sum(len(w) ** 2 for w in wins)
    assert [sorted(i.tolist()) for _, i in batch.where] == [sorted(w.tolist()) for w in wins]


def test_embedding_normalizer_uses_training_statistics_only():
    rng = np.random.default_rng(0)
    train = rng.normal(5.0, 2.0, size=(200, 6))
    norm = EmbeddingNormalizer(train)
    z = norm(train)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    shifted = norm(train + 100.0)  # a test slide's statistics never enter
    assert shifted.mean() > 40
    pca = EmbeddingNormalizer(train, n_components=3, whiten=True)
    assert pca(train).shape == (200, 3) and pca.dim == 3
    np.testing.assert_allclose(pca(train).std(0, ddof=1), 1.0, rtol=1e-5)  # whitened components


def test_genes_per_token_cap_wins_over_token_budget():
    assert auto_genes_per_token(800, 16) == 50
    assert auto_genes_per_token(800, 16, 8) == 8  # 100 tokens
    assert auto_genes_per_token(50, 16, 8) == 4
    assert auto_genes_per_token(10, None, 8) == 1


@pytest.mark.parametrize("layout", ["single", "whole"])
def test_spot_and_slide_windows_scatter_back_to_every_spot(layout):
    from flag_bench.methods.common.batching import WindowedSlide, all_picks, collate, scatter_windows
    from flag_bench.methods.common.windows import single_spot_windows, whole_slide_window

    sizes = (7, 3)
    make = single_spot_windows if layout == "single" else whole_slide_window
    slides = [WindowedSlide({"cond": torch.arange(float(n))[:, None] + 100 * s}, make(n)) for s, n in enumerate(sizes)]
    picks = all_picks(slides)
    assert len(picks) == (sum(sizes) if layout == "single" else len(sizes))
    batch = collate(slides, picks, "cpu", padded=("cond",))
    assert batch.pairs is None and batch.mask.shape == (len(picks), 1 if layout == "single" else max(sizes))
    out = [np.full((n, 1), np.nan, dtype=np.float32) for n in sizes]
    scatter_windows(batch.padded["cond"].numpy(), batch.where, out)
    for s, n in enumerate(sizes):
        np.testing.assert_array_equal(out[s][:, 0], np.arange(n) + 100 * s)
    assert whole_slide_window(0) == [] and single_spot_windows(0) == []
