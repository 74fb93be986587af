"""STFlow: the ZINB prior, the x1-Euler sampler, frame-averaging invariance, the padding mask,
the KD-tree graph, determinism and the recorded deviations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flag_bench.methods.base import seed_everything
from flag_bench.methods.stflow import nets
from flag_bench.methods.stflow.method import STFlow, sample_x1_euler
from flag_bench.methods.stflow.zinb import ZINB

from test_bleep import image_views
from test_common_samplers import MU, S, gaussian_velocity


@pytest.fixture(scope="module")
def views():
    return image_views(validation=True)


@pytest.mark.parametrize("dist", [ZINB(), ZINB(0.5, 1.0, -1.0), ZINB(3.0, -0.5, 0.5)])
def test_zinb_sampler_matches_mean_and_zero_fraction(dist):
    n = 200_000
    c = dist.sample_counts((n,), torch.Generator().manual_seed(0))
    pi, mu, th = dist.zero_inflation, dist.nb_mean, dist.total_count
    var = (1 - pi) * (mu + mu * mu / th) + pi * (1 - pi) * mu * mu  # ZINB variance
    assert float(c.mean()) == pytest.approx(dist.mean(), abs=4 * math.sqrt(var / n))
    z = dist.zero_fraction()
    assert float((c == 0).double().mean()) == pytest.approx(z, abs=4 * math.sqrt(z * (1 - z) / n))
    assert dist.sample((3, 4), torch.Generator().manual_seed(1)).dtype == torch.float32


def test_default_prior_is_the_official_one():
    d = ZINB()
    assert d.nb_mean == pytest.approx(math.exp(0.1)) and d.zero_inflation == 0.5
    a = d.sample((50, 7), torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, d.sample((50, 7), torch.Generator().manual_seed(3)))
    assert (a >= 0).all() and torch.allclose(torch.expm1(a), torch.expm1(a).round(), atol=1e-4)


def _x1_of_velocity(x, t):
    """Exact E[x1 | x_t] of the Gaussian case: x1 = x_t + (1 - t) v for the linear path."""
    tt = torch.full((x.shape[0],), t, dtype=x.dtype)
    return x + (1 - t) * gaussian_velocity([x], tt)[0]


def test_x1_euler_transports_a_known_gaussian_to_a_known_gaussian():
    z = torch.linspace(-2.5, 2.5, 11, dtype=torch.float64)[:, None]
    x = sample_x1_euler(_x1_of_velocity, z, torch.linspace(0.0, 1.0, 2001))
    torch.testing.assert_close(x, MU + S * z, rtol=0, atol=5e-3)


def test_x1_euler_uses_the_5_point_grid_with_4_evaluations():
    seen = []
    out = sample_x1_euler(lambda x, t: seen.append(t) or x + 1.0, torch.zeros(2, 1), torch.linspace(0.01, 1.0, 5))
    assert len(seen) == 4 and seen[-1] == pytest.approx(0.7525)
    # the output is the 4th prediction of x1, not an integrated state
    assert out.shape == (2, 1)


def _rotate(c, angle, reflect):
    r = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    if reflect:
        r = r @ np.diag([1.0, -1.0])
    return c @ r.T + np.array([123.0, -45.0])


def _edge_features(layer, coords, k=6):
    c = torch.as_tensor(coords, dtype=torch.float64)
    idx, valid = nets.neighbour_graph(coords, np.zeros(len(coords), int), k)
    fa = nets.frame_inputs(c[idx] - c[:, None], valid)
    return layer.edge(fa.float()).mean(dim=1)


@pytest.mark.parametrize("angle, reflect", [(0.7, False), (2.1, True), (math.pi / 2, False), (0.0, True)])
def test_frame_averaged_edge_features_are_rotation_and_reflection_invariant(angle, reflect):
    torch.manual_seed(0)
    layer = nets.EdgeAttention(32, 32, 5, 4, "gelu", 0.0, 0.0).eval()
    coords = np.random.default_rng(0).uniform(0, 500, (60, 2))
    a = _edge_features(layer, coords)
    b = _edge_features(layer, _rotate(coords, angle, reflect))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def _net(n_genes=5, k=4, feat=6):
    torch.manual_seed(0)
    return nets.Denoiser(feat, n_genes, 16, 16, 2, 2, k, "gelu", 0.0, 0.0, 2.0, True).eval()


def test_whole_denoiser_is_invariant_to_rotating_the_slide():
    net, rng = _net(), np.random.default_rng(1)
    c = rng.uniform(0, 300, (30, 2))
    x, f = torch.rand(1, 30, 5), torch.randn(1, 30, 6)
    t, m = torch.tensor([0.3]), torch.ones(1, 30, dtype=torch.bool)
    a = net(x, f, torch.as_tensor(c, dtype=torch.float32)[None], t, m)
    b = net(x, f, torch.as_tensor(_rotate(c, 1.1, True), dtype=torch.float32)[None], t, m)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_padded_spots_never_change_a_real_spots_prediction():
    """Two items of 20 and 12 spots padded to 20 with garbage (features, coordinates at the slide
    centre, expression) give each real spot exactly its prediction when run alone."""
    net, rng = _net(), np.random.default_rng(2)
    sizes, n = (20, 12), 20
    xs = [torch.rand(s, 5) for s in sizes]
    fs = [torch.randn(s, 6) for s in sizes]
    cs = [torch.as_tensor(rng.uniform(-100, 100, (s, 2)), dtype=torch.float32) for s in sizes]
    t = torch.tensor([0.2, 0.8])
    mask = torch.zeros(2, n, dtype=torch.bool)
    X, Fe, C = torch.randn(2, n, 5) * 9, torch.randn(2, n, 6) * 9, torch.zeros(2, n, 2)  # ghosts at (0, 0)
    for b, s in enumerate(sizes):
        mask[b, :s], X[b, :s], Fe[b, :s], C[b, :s] = True, xs[b], fs[b], cs[b]
    out = net(X, Fe, C, t, mask)
    assert (out[~mask] == 0).all()
    for b, s in enumerate(sizes):
        alone = net(xs[b][None], fs[b][None], cs[b][None], t[b:b + 1], torch.ones(1, s, dtype=torch.bool))
        torch.testing.assert_close(out[b, :s], alone[0], rtol=1e-5, atol=1e-6)


def test_neighbour_graph_matches_brute_force_and_stays_inside_items():
    rng = np.random.default_rng(4)
    c = rng.uniform(0, 10, (25, 2))
    item = np.r_[np.zeros(15, int), np.ones(7, int), np.full(3, 2)]
    idx, valid = nets.neighbour_graph(c, item, 4)
    for i in range(25):
        same = np.flatnonzero((item == item[i]) & (np.arange(25) != i))
        want = same[np.argsort(np.linalg.norm(c[same] - c[i], axis=1))][:4]
        assert sorted(idx[i][valid[i]].tolist()) == sorted(want.tolist())
    assert valid[22:].sum(1).tolist() == [2, 2, 2]  # an item of 3 spots: 2 neighbours each


def _fit(views, overrides=None, seed=0):
    seed_everything(seed)
    m = STFlow(STFlow.make_config("tiny", overrides), seed=seed, device="cpu")
    return m, m.fit(views.train, views.val).predict(views.test)


def test_same_seed_identical_predictions_and_recorded_deviations(views):
    m, a = _fit(views)
    _, b = _fit(views)
    for p, q, s in zip(a, b, views.test.slides):
        assert p.shape == (s.n_spots, views.test.n_genes) and p.dtype == np.float32 and (p >= 0).all()
        np.testing.assert_array_equal(p, q)
    _, c = _fit(views, seed=1)
    assert not np.array_equal(a[0], c[0])
    dev = m.summary["deviations"]
    for key in ("padding", "validation", "readout", "coords", "knn", "expression_difference"):
        assert key in dev
    assert m.summary["sampling"]["nfe"] == 4 and m.summary["validations"] >= 1


def test_switches_linear_readout_pixels_and_gaussian_prior(views):
    m, p = _fit(views, {"non_negative": False, "coords": "px", "prior": "gaussian", "max_subslide": 10})
    assert "linear" in m.summary["deviations"]["readout"] and "pixels" in m.summary["deviations"]["coords"]
    assert m.summary["subslide_spots_mean"] <= 10 and all(np.isfinite(x).all() for x in p)
