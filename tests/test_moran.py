"""Moran's I: parity with esda (I, moments, analytic and permutation p-values), the squidpy
conventions, metamorphic properties and degenerate input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from flag_bench.metrics.moran import morans_i, morans_i_values
from flag_bench.metrics.spatial_weights import KNNWeights, RadiusWeights

esda = pytest.importorskip("esda")  # test-only dependency
libpysal = pytest.importorskip("libpysal")

TOL = 1e-10


def _smooth_data(n=300, g=20, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1000, size=(n, 2))
    freq = rng.uniform(1 / 600, 1 / 150, size=(1, g))
    smooth = np.sin(xy[:, :1] * freq + rng.uniform(0, 6, size=(1, g))) + np.cos(xy[:, 1:] * freq)
    noise = rng.normal(size=(n, g))
    mix = np.linspace(0, 1, g)  # from pure noise to pure pattern
    return xy, (1 - mix) * noise + mix * smooth * 2


def _esda_w(weights_binary):
    """libpysal W from our binary sparse matrix (esda applies the 'r' transform itself)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return libpysal.weights.WSP(weights_binary.matrix.tocsr()).to_W(silence_warnings=True)


def _assert_esda_parity(x, xy, k=6):
    wr = KNNWeights(k, symmetric=True, transform="R").build(xy)
    wb = KNNWeights(k, symmetric=True, transform="B").build(xy)
    w_esda = _esda_w(wb)
    for two_tailed in (True, False):
        ours = morans_i(x, wr, two_tailed=two_tailed)
        diffs = {}
        for g in range(x.shape[1]):
            ref = esda.Moran(x[:, g], w_esda, transformation="r", permutations=0, two_tailed=two_tailed)
            for field, theirs in (
                ("I", ref.I), ("z_norm", ref.z_norm), ("z_rand", ref.z_rand), ("p_norm", ref.p_norm),
                ("p_rand", ref.p_rand), ("var_rand", ref.VI_rand),
            ):
                diffs[field] = max(diffs.get(field, 0.0), abs(getattr(ours, field)[g] - theirs))
            diffs["var_norm"] = max(diffs.get("var_norm", 0.0), abs(ours.var_norm - ref.VI_norm))
            diffs["expected"] = max(diffs.get("expected", 0.0), abs(ours.expected - ref.EI))
        assert max(diffs.values()) < TOL, diffs
    return diffs


def test_parity_with_esda_on_seeded_random_data():
    xy, x = _smooth_data()
    _assert_esda_parity(x, xy)


def test_parity_with_esda_on_her2st_mini_slide():
    from flag_bench.datasets.her2st_mini import load

    slide = next(s for s in load().slides if s.id == "C2")
    counts = slide.counts.toarray()
    top = np.argsort(-counts.mean(axis=0), kind="stable")[:50]
    x = np.log1p(counts[:, top].astype(np.float64))
    assert np.ptp(x, axis=0).min() > 0
    _assert_esda_parity(x, slide.coords_um)


def test_permutation_inference_reproduces_esda_draws():
    xy, x = _smooth_data(n=150, g=3, seed=3)
    wr = KNNWeights(6).build(xy)
    w_esda = _esda_w(KNNWeights(6, transform="B").build(xy))
    n, p = x.shape[0], 199
    for g in range(x.shape[1]):
        # esda draws np.random.permutation(z) from the legacy global RNG: replay those draws
        np.random.seed(100 + g)
        ref = esda.Moran(x[:, g], w_esda, transformation="r", permutations=p)
        np.random.seed(100 + g)
        perms = np.stack([np.random.permutation(n) for _ in range(p)])
        ours = morans_i(x[:, g], wr, permutations=perms, keep_sim=True)
        assert np.max(np.abs(ours.sim[:, 0] - ref.sim)) < TOL
        assert ours.p_sim[0] == ref.p_sim
        assert abs(ours.expected_sim[0] - ref.EI_sim) < TOL
        assert abs(ours.var_sim[0] - ref.VI_sim) < TOL
        assert abs(ours.z_sim[0] - ref.z_sim) < 1e-8
        assert abs(ours.p_z_sim[0] - ref.p_z_sim) < TOL


def test_squidpy_analytic_convention_is_one_tailed_half():
    xy, x = _smooth_data(g=8)
    w = KNNWeights(6).build(xy)
    two, one = morans_i(x, w), morans_i(x, w, two_tailed=False)
    np.testing.assert_allclose(two.p_norm, 2 * one.p_norm, rtol=1e-14)
    np.testing.assert_array_equal(two.I, one.I)


def test_squidpy_row_null_differs_from_esda_value_null():
    xy, x = _smooth_data(n=200, g=20, seed=5)
    w = KNNWeights(6).build(xy)
    smooth = x[:, -1:]  # the pure-pattern gene
    p = 3000
    vals = morans_i(smooth, w, permutations=p, seed=1, keep_sim=True)
    rows = morans_i(smooth, w, permutations=p, seed=1, null="rows", keep_sim=True)
    # same draws: the rows null is exactly sum_i z[pi(i)] (Wz)_i, the formula squidpy uses
    rng = np.random.default_rng(1)
    perms = np.stack([rng.permutation(200) for _ in range(p)])
    z = smooth[:, 0] - smooth[:, 0].mean()
    ref = (200 / w.s0) * (z[perms] @ (w.matrix @ z)) / (z @ z)
    np.testing.assert_allclose(rows.sim[:, 0], ref, rtol=1e-12, atol=1e-14)
    # the value null is centred on E[I] and has the randomisation variance; the rows null is
    # centred on 0 and, for a smooth gene, much wider
    se_mean = np.sqrt(vals.var_sim[0] / p)
    assert abs(vals.expected_sim[0] - vals.expected) < 5 * se_mean
    assert abs(rows.expected_sim[0]) < 5 * np.sqrt(rows.var_sim[0] / p)
    assert vals.var_sim[0] == pytest.approx(vals.var_rand[0], rel=0.15)
    assert rows.var_sim[0] > 1.5 * vals.var_sim[0]


def test_permutations_are_seeded_and_batch_invariant():
    xy, x = _smooth_data(n=120, g=6)
    w = KNNWeights(6).build(xy)
    a = morans_i(x, w, permutations=50, seed=7, batch_size=1, keep_sim=True)
    b = morans_i(x, w, permutations=50, seed=7, batch_size=13, keep_sim=True)
    c = morans_i(x, w, permutations=50, seed=7, keep_sim=True)
    d = morans_i(x, w, permutations=50, seed=8, keep_sim=True)
    np.testing.assert_allclose(a.sim, b.sim, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(a.sim, c.sim, rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(a.p_sim, b.p_sim)
    assert not np.allclose(a.sim, d.sim)
    assert a.notes["permutations"] == 50 and a.notes["seed"] == 7


def test_gene_order_is_kept():
    xy, x = _smooth_data(g=12)
    w = KNNWeights(6).build(xy)
    perm = np.random.default_rng(0).permutation(12)
    full, shuffled = morans_i(x, w), morans_i(x[:, perm], w)
    np.testing.assert_allclose(shuffled.I, full.I[perm], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(shuffled.p_rand, full.p_rand[perm], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(morans_i_values(x, w), full.I, rtol=0, atol=0)


def test_constant_gene_is_nan_and_does_not_disturb_others():
    xy, x = _smooth_data(g=5)
    x2 = np.concatenate([x[:, :2], np.full((x.shape[0], 1), 0.1), x[:, 2:]], axis=1)
    w = KNNWeights(6).build(xy)
    r = morans_i(x2, w, permutations=20)
    assert r.n_constant == 1 and r.notes["n_constant"] == 1
    for field in ("I", "var_rand", "z_norm", "z_rand", "p_norm", "p_rand", "p_sim"):
        assert np.isnan(getattr(r, field)[2]), field
    np.testing.assert_allclose(np.delete(r.I, 2), morans_i(x, w).I, rtol=1e-13)


def test_two_separated_cliques_give_exactly_one():
    xy = np.concatenate([np.zeros((10, 2)), np.full((10, 2), 1000.0)]) + np.arange(20)[:, None] * 1e-3
    w = KNNWeights(9).build(xy)  # each spot's 9 neighbours are its own clique
    x = np.repeat([0.0, 1.0], 10)[:, None]
    assert morans_i(x, w).I[0] == pytest.approx(1.0, abs=1e-14)


def test_isolated_spots_shrink_s0_and_match_the_definition():
    rng = np.random.default_rng(2)
    xy = np.concatenate([rng.uniform(0, 100, size=(40, 2)), [[5000.0, 5000.0]]])
    w = RadiusWeights(30.0).build(xy)
    assert w.n_isolated == 1 and w.s0 == pytest.approx(40.0)
    x = rng.normal(size=(41, 3))
    z = x - x.mean(axis=0)
    dense = w.matrix.toarray()
    expected = 41 / dense.sum() * np.einsum("ig,ij,jg->g", z, dense, z) / (z * z).sum(axis=0)
    np.testing.assert_allclose(morans_i(x, w).I, expected, rtol=1e-12)


def test_fewer_than_four_spots_leave_randomisation_variance_undefined():
    xy = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    w = KNNWeights(1).build(xy)
    r = morans_i(np.array([[1.0], [2.0], [4.0]]), w)
    assert np.isfinite(r.I[0]) and np.isnan(r.var_rand[0])


def test_bad_input_is_rejected():
    xy, x = _smooth_data(n=50, g=2)
    w = KNNWeights(6).build(xy)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        morans_i(bad, w)
    with pytest.raises(ValueError, match="shape"):
        morans_i(x[:10], w)
    with pytest.raises(ValueError, match="null"):
        morans_i(x, w, null="other")


def test_gene_blocks_and_memory_cap_do_not_change_results(monkeypatch):
    import flag_bench.metrics.moran as moran_mod

    xy, x = _smooth_data(n=100, g=9)
    w = KNNWeights(6).build(xy)
    full = morans_i(x, w, permutations=30, seed=2, keep_sim=True)
    values = morans_i_values(x, w)
    monkeypatch.setattr(moran_mod, "_DEFAULT_BATCH_BYTES", 8 * 100 * 2)  # 2 genes per block
    assert len(moran_mod._gene_blocks(100, 9)) == 5
    blocked = morans_i(x, w, permutations=30, seed=2, keep_sim=True)
    np.testing.assert_allclose(blocked.I, full.I, rtol=1e-13)
    np.testing.assert_allclose(blocked.var_rand, full.var_rand, rtol=1e-13)
    np.testing.assert_allclose(blocked.sim, full.sim, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(blocked.p_sim, full.p_sim)
    np.testing.assert_allclose(morans_i_values(x, w), values, rtol=1e-13)
