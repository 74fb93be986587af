"""Location-sensitive metrics (ssc_spot, Lee's L) and depth-normalised GSC: brute-force and esda
parity, the sampled path, location sensitivity on a synthetic field, degenerate input."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from scipy import stats

import flag_bench.metrics.location as location
from flag_bench.errors import CellFailure
from flag_bench.metrics.base import SlideContext
from flag_bench.metrics.location import (
    LEE_L,
    SSC_SPOT,
    block_pair_sums,
    gram_pair_sums,
    lee_scores,
    lee_statistics,
    lee_weights,
    make_ssc_spot,
    ssc_spot_scores,
    unit_rows,
)
from flag_bench.metrics.structure import DEFAULT_WEIGHTS, GSC, GSC_CPM, gsc_cpm_scores, gsc_scores


def _ctx(xy, g, seed=0, transform="log1p"):
    return SlideContext("s", xy, tuple(f"g{i}" for i in range(g)), seed=seed, target_transform=transform)


def _low_rank(n, g, seed=0, rank=4, noise=1.0):
    """Spots that share a few programs (so spot-spot correlations vary), and a noisy copy."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, g)) + noise * rng.normal(size=(n, g))
    return y, y + rng.normal(size=(n, g))


def _brute_ssc_spot(yt, yp):
    keep = np.ptp(yt, axis=1) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant prediction rows: corrcoef divides by 0
        ct, cp = np.corrcoef(yt[keep]), np.corrcoef(yp[keep])
    cp = np.nan_to_num(cp, nan=0.0)  # a constant prediction spot correlates 0 with every spot
    iu = np.triu_indices(int(keep.sum()), k=1)
    return stats.pearsonr(ct[iu], cp[iu])[0]


# ----------------------------------------------------------------------------- ssc_spot


@pytest.mark.parametrize("n, g", [(300, 40), (60, 250)])  # (G, G) identity route; (N, N) row blocks
def test_ssc_spot_exact_matches_corrcoef_and_pearsonr(n, g):
    yt, yp = _low_rank(n, g)
    yt[4] = 2.0  # constant in the truth: excluded
    yp[7] = -1.0  # constant in the prediction: a zero row
    s = ssc_spot_scores(yt, yp)
    assert s.values["ssc_spot"] == pytest.approx(_brute_ssc_spot(yt, yp), abs=1e-12)
    assert s.notes["n_valid_spots"] == n - 1 and s.notes["n_const_true_spots"] == 1
    assert s.notes["n_const_pred_spots"] == 1
    assert s.notes["ssc_spot_method"] == "exact" and s.notes["ssc_spot_n_pairs"] == (n - 1) * (n - 2) // 2
    assert s.notes["ssc_spot_ci_low"] == s.notes["ssc_spot_ci_high"] == s.values["ssc_spot"]


def test_both_exact_routes_and_any_block_size_agree(monkeypatch):
    yt, yp = _low_rank(150, 30, seed=3)
    a, b = unit_rows(yt), unit_rows(yp)
    ref = gram_pair_sums(a, b)
    for block_bytes in (1, 16 * 150 * 7, 2**30):  # one row per block, 7 rows, everything at once
        np.testing.assert_allclose(block_pair_sums(a, b, block_bytes), ref, rtol=1e-12, atol=1e-9)
    whole = ssc_spot_scores(yt, yp).values["ssc_spot"]
    monkeypatch.setattr(location, "_BLOCK_BYTES", 16 * 150 * 5)  # forces the row-block route, 5 rows a block
    assert ssc_spot_scores(yt, yp).values["ssc_spot"] == pytest.approx(whole, abs=1e-12)


def test_sampled_path_brackets_the_exact_value_and_is_seeded(monkeypatch):
    yt, yp = _low_rank(1500, 30, seed=1, noise=2.0)
    exact = ssc_spot_scores(yt, yp).values["ssc_spot"]
    kw = dict(exact_max_spots=100, n_pairs=200_000, n_batches=20)
    s = ssc_spot_scores(yt, yp, seed=5, **kw)
    lo, hi = s.notes["ssc_spot_ci_low"], s.notes["ssc_spot_ci_high"]
    assert s.notes["ssc_spot_method"] == "sampled" and s.notes["ssc_spot_n_pairs"] == 200_000
    assert lo < exact < hi and hi - lo < 0.05, (lo, exact, hi)
    assert lo < s.values["ssc_spot"] < hi
    # same seed -> same number, even with a different processing chunk; another seed -> another sample
    assert ssc_spot_scores(yt, yp, seed=5, **kw).values == s.values
    monkeypatch.setattr(location, "_BLOCK_BYTES", 32 * 30 * 1000)  # chunks of 1000 pairs
    assert ssc_spot_scores(yt, yp, seed=5, **kw).values["ssc_spot"] == pytest.approx(s.values["ssc_spot"], abs=1e-12)
    assert ssc_spot_scores(yt, yp, seed=6, **kw).values["ssc_spot"] != s.values["ssc_spot"]


def test_fifty_thousand_spots_go_through_the_sampled_path():
    yt, yp = _low_rank(50_000, 20, seed=2, noise=2.0)
    s = SSC_SPOT.compute(yt, yp, _ctx(None, 20, seed=3))
    assert s.notes["ssc_spot_method"] == "sampled" and s.notes["ssc_spot_n_pairs"] == 1_000_000
    assert s.notes["ssc_spot_seed"] == 3
    # the exact value is cheap here through the (G, G) identity: the sampled CI must contain it
    m = 50_000 * 49_999 / 2
    exact = location.pearson_from_sums(gram_pair_sums(unit_rows(yt), unit_rows(yp)), m)[0]
    assert s.notes["ssc_spot_ci_low"] < exact < s.notes["ssc_spot_ci_high"]


def test_ssc_spot_degenerate_input():
    yt, yp = _low_rank(80, 12)
    mean_control = np.tile(yt.mean(axis=0), (80, 1))
    s = ssc_spot_scores(yt, mean_control)
    assert s.values["ssc_spot"] == 0.0 and "prediction side is constant" in s.notes["ssc_spot_reason"]
    # every spot an affine copy of one profile: all spot correlations 1 up to rounding, still no spread
    rng = np.random.default_rng(0)
    affine = rng.uniform(0.5, 2, size=(80, 1)) * yt[:1] + rng.normal(size=(80, 1))
    assert ssc_spot_scores(yt, affine).values["ssc_spot"] == 0.0
    assert np.isnan(ssc_spot_scores(affine, yp).values["ssc_spot"])
    few = yt.copy()
    few[2:] = 1.0
    s = ssc_spot_scores(few, yp)
    assert np.isnan(s.values["ssc_spot"]) and "at least 3 spots" in s.notes["ssc_spot_reason"]
    bad = yp.copy()
    bad[3, 3] = np.nan
    with pytest.raises(CellFailure, match="1 non-finite"):
        ssc_spot_scores(yt, bad)


# ----------------------------------------------------------------------------- location sensitivity


def _smooth_field(seed, g=60, k=6, modes=40):
    """f(coords (N, 2)) -> (N, G): k programs, each a random smooth field (sum of plane waves with
    wavelengths 120-300 on a 1000-wide slide, random directions and phases), mixed into g genes."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, 2 * np.pi, (k, modes))
    wavelength = rng.uniform(120, 300, (k, modes))
    phase = rng.uniform(0, 2 * np.pi, (k, modes))
    wave = np.stack([np.cos(angle), np.sin(angle)], -1) * (2 * np.pi / wavelength)[..., None]
    load = rng.normal(size=(k, g))
    return lambda xy: (np.sin(np.einsum("nd,kmd->nkm", xy, wave) + phase).sum(-1) / np.sqrt(modes / 2)) @ load


def test_rotated_truth_scores_near_zero_while_noisy_truth_scores_high():
    rng = np.random.default_rng(100)
    xy = rng.uniform(0, 1000, size=(600, 2))
    field = _smooth_field(0)
    truth = field(xy)
    rotated = field(np.array([1000.0, 1000.0]) - xy)  # each spot takes the value at its 180-degree image
    noisy = truth + 0.5 * truth.std(axis=0) * rng.normal(size=truth.shape)
    ctx = _ctx(xy, 60)
    rot = {m.name: m.compute(truth, rotated, ctx).values for m in (SSC_SPOT, LEE_L, GSC)}
    ok = {m.name: m.compute(truth, noisy, ctx).values for m in (SSC_SPOT, LEE_L, GSC)}
    assert abs(rot["ssc_spot"]["ssc_spot"]) < 0.15 and ok["ssc_spot"]["ssc_spot"] > 0.8
    assert abs(rot["lee_l"]["lee_l"]) < 0.2 and ok["lee_l"]["lee_l"] > 0.8
    # the co-expression of the rotated truth is the truth's: GSC cannot tell the two apart
    assert rot["gsc"]["gsc"] > 0.95 and ok["gsc"]["gsc"] > 0.95


# ----------------------------------------------------------------------------- Lee's L


def _spatial_data(n=300, g=15, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1000, size=(n, 2))
    freq = rng.uniform(1 / 500, 1 / 150, size=(1, g))
    y = np.sin(xy[:, :1] * freq + rng.uniform(0, 6, size=(1, g))) + np.cos(xy[:, 1:] * freq)
    y = y + rng.uniform(0.2, 1.5, size=(1, g)) * rng.normal(size=(n, g))
    return xy, y, y + rng.normal(size=(n, g))


def test_lee_statistics_match_esda_spatial_pearson():
    esda = pytest.importorskip("esda")  # test-only dependency
    xy, x, y = _spatial_data()
    y[:, 4] = 3.0  # constant prediction: esda standardises it to 0, so L = 0 there
    w = lee_weights(DEFAULT_WEIGHTS.build(xy))
    l_xy, l_xx, l_yy, cos = lee_statistics(x, y, w)
    worst = 0.0
    for g in range(x.shape[1]):
        ref = esda.Spatial_Pearson(connectivity=w, permutations=0).fit(x[:, g : g + 1], y[:, g : g + 1]).association_
        ref_cos = ref[0, 1] / np.sqrt(ref[0, 0] * ref[1, 1]) if ref[1, 1] > 0 else 0.0
        worst = max(worst, abs(l_xy[g] - ref[0, 1]), abs(l_xx[g] - ref[0, 0]), abs(l_yy[g] - ref[1, 1]),
                    abs(cos[g] - ref_cos))
    assert worst < 1e-10
    s = LEE_L.compute(x, y, _ctx(xy, x.shape[1]))
    np.testing.assert_allclose(s.per_gene["lee_l_raw"], l_xy, rtol=0, atol=0)
    np.testing.assert_allclose(s.per_gene["lee_l"], cos, rtol=0, atol=0)
    assert s.values["lee_l"] == pytest.approx(cos.mean(), abs=1e-15)
    assert s.notes["n_const_pred"] == 1 and s.per_gene["lee_l"][4] == 0.0


def test_lee_weights_are_the_knn_graph_plus_self_row_standardised():
    xy, _, _ = _spatial_data(n=120)
    base = DEFAULT_WEIGHTS.build(xy)
    w = lee_weights(base)
    dense, adj = w.toarray(), (base.matrix.toarray() > 0)
    np.testing.assert_allclose(dense.sum(axis=1), 1.0, rtol=1e-14)
    np.testing.assert_array_equal(dense > 0, adj | np.eye(120, dtype=bool))
    np.testing.assert_allclose(np.diag(dense), 1.0 / (adj.sum(axis=1) + 1), rtol=1e-14)


def test_normalised_lee_rewards_the_truth_where_raw_lee_rewards_oversmoothing():
    xy, x, _ = _spatial_data(seed=2)
    w = lee_weights(DEFAULT_WEIGHTS.build(xy))
    oversmoothed = w.T @ (w @ x)
    raw_truth, _, _, cos_truth = lee_statistics(x, x, w)
    raw_smooth, _, _, cos_smooth = lee_statistics(x, oversmoothed, w)
    assert (raw_smooth > raw_truth).all()  # why raw L is not the score
    np.testing.assert_allclose(cos_truth, 1.0, atol=1e-12)
    assert (cos_smooth < 1.0 - 1e-6).all()


def test_lee_degenerate_input():
    xy, x, y = _spatial_data(g=8)
    x2 = x.copy()
    x2[:, 2] = 0.5
    s = LEE_L.compute(x2, y, _ctx(xy, 8))
    assert s.notes["n_const_true"] == 1 and s.notes["n_valid_genes"] == 7
    assert np.isnan(s.per_gene["lee_l"][2]) and np.isnan(s.per_gene["lee_l_raw"][2])
    assert s.values["lee_l"] == pytest.approx(np.delete(s.per_gene["lee_l"], 2).mean(), abs=1e-15)
    flat = np.tile(x.mean(axis=0), (x.shape[0], 1))
    assert LEE_L.compute(x, flat, _ctx(xy, 8)).values["lee_l"] == 0.0
    no = LEE_L.compute(x, y, _ctx(None, 8))
    assert np.isnan(no.values["lee_l"]) and "coordinates" in no.notes["lee_l_reason"]
    assert np.isnan(no.per_gene["lee_l"]).all()
    few = lee_scores(x[:5], y[:5], xy[:5])
    assert np.isnan(few.values["lee_l"]) and "k + 1 = 7" in few.notes["lee_l_reason"]


# ----------------------------------------------------------------------------- gsc_cpm


def _counts(n=200, g=30, seed=0):
    """Poisson counts with a strong per-spot depth factor, and an independent draw as the prediction."""
    rng = np.random.default_rng(seed)
    depth = rng.lognormal(0.0, 0.6, size=(n, 1))
    rate = depth * np.exp(rng.normal(1.0, 1.0, size=(1, g)) + 0.5 * rng.normal(size=(n, 3)) @ rng.normal(size=(3, g)))
    return rng.poisson(rate).astype(np.float64), rng.poisson(rate).astype(np.float64)


def _gsc_by_hand(ct, cp):
    tt, tp = ct.sum(1), cp.sum(1)
    keep = tt > 0
    target = np.median(tt[keep])
    nt = np.log1p(ct[keep] / tt[keep, None] * target)
    with np.errstate(divide="ignore", invalid="ignore"):
        npred = np.where(tp[keep, None] > 0, np.log1p(cp[keep] / tp[keep, None] * target), 0.0)
    g = ct.shape[1]
    iu = np.triu_indices(g, k=1)
    return stats.pearsonr(np.corrcoef(nt.T)[iu], np.corrcoef(npred.T)[iu])[0]


@pytest.mark.parametrize("transform, fwd", [("log1p", np.log1p), ("log2p1", lambda c: np.log2(1.0 + c))])
def test_gsc_cpm_is_gsc_on_normalised_counts(transform, fwd):
    ct, cp = _counts()
    s = GSC_CPM.compute(fwd(ct), fwd(cp), _ctx(None, 30, transform=transform))
    assert s.values["gsc_cpm"] == pytest.approx(_gsc_by_hand(ct, cp), abs=1e-10)
    assert s.notes["target_transform"] == transform and s.notes["n_zero_total_spots"] == 0


def test_gsc_cpm_ignores_depth_and_the_cpm_target():
    ct, cp = _counts(seed=1)
    base = gsc_cpm_scores(np.log1p(ct), np.log1p(cp)).values["gsc_cpm"]
    rng = np.random.default_rng(3)
    # per-spot depth factors on the prediction: removed exactly; plain GSC moves
    deep = cp * rng.uniform(0.2, 5.0, size=(cp.shape[0], 1))
    assert gsc_cpm_scores(np.log1p(ct), np.log1p(deep)).values["gsc_cpm"] == pytest.approx(base, abs=1e-12)
    plain, plain_deep = (gsc_scores(np.log1p(ct), np.log1p(p)).values["gsc"] for p in (cp, deep))
    assert abs(plain - plain_deep) > 1e-3
    # the same on truth spots above both middle totals (so the median target is unchanged)
    tot = ct.sum(1)
    above = tot > np.sort(tot)[tot.size // 2]
    ct2 = ct.copy()
    ct2[above] *= 3.0
    assert gsc_cpm_scores(np.log1p(ct2), np.log1p(cp)).values["gsc_cpm"] == pytest.approx(base, abs=1e-12)
    assert abs(gsc_scores(np.log1p(ct2), np.log1p(cp)).values["gsc"] - plain) > 1e-3
    # log1p_cpm targets invert to CPM, a per-spot rescaling of the counts: the proportions are the
    # same, but the scale target is the median *CPM* panel total, so the number is the one of the
    # CPM values, not the log1p run's (the log1p pseudo-count acts at another scale)
    lib = ct.sum(1) + 500.0
    cpm = lambda c: c / lib[:, None] * 1e6  # noqa: E731
    s = gsc_cpm_scores(np.log1p(cpm(ct)), np.log1p(cpm(cp)), "log1p_cpm")
    assert s.values["gsc_cpm"] == pytest.approx(_gsc_by_hand(cpm(ct), cpm(cp)), abs=1e-10)


def test_gsc_cpm_zero_totals_clipping_and_unknown_transform():
    ct, cp = _counts(seed=2)
    ct[[3, 9]] = 0.0
    cp[5] = 0.0
    s = gsc_cpm_scores(np.log1p(ct), np.log1p(cp))
    assert s.notes["n_zero_total_spots"] == 2 and s.notes["n_zero_total_pred_spots"] == 1
    assert s.values["gsc_cpm"] == pytest.approx(_gsc_by_hand(ct, cp), abs=1e-10)
    # negative predictions (below log1p(0)) are zero counts
    neg = np.log1p(cp)
    neg[cp == 0] = -0.7
    assert gsc_cpm_scores(np.log1p(ct), neg).values["gsc_cpm"] == pytest.approx(s.values["gsc_cpm"], abs=1e-12)
    bad = GSC_CPM.compute(np.log1p(ct), np.log1p(cp), _ctx(None, 30, transform="sqrt"))
    assert np.isnan(bad.values["gsc_cpm"]) and "unknown target transform 'sqrt'" in bad.notes["gsc_cpm_reason"]


# ----------------------------------------------------------------------------- Metric objects


def test_metric_objects_declare_outputs_use_the_seed_and_pickle():
    xy, x, y = _spatial_data(n=200, g=12)
    for metric in (SSC_SPOT, LEE_L, GSC_CPM):
        clone = pickle.loads(pickle.dumps(metric))
        out = clone.compute(x - x.min(), y - y.min(), _ctx(xy, 12))
        assert set(out.values) == {o.name for o in metric.outputs} and len(metric.outputs) == 1
        o = metric.outputs[0]
        assert o.higher_is_better is True and o.range == (-1.0, 1.0)
        assert o.range[0] <= out.values[o.name] <= o.range[1]
    assert LEE_L.needs_coords and not SSC_SPOT.needs_coords and not GSC_CPM.needs_coords
    assert "location" in SSC_SPOT.outputs[0].description
    sampled = make_ssc_spot(exact_max_spots=50, n_pairs=4000, n_batches=4)
    a, b, c = (sampled.compute(x, y, _ctx(xy, 12, seed=s)) for s in (1, 1, 2))
    assert a.notes["ssc_spot_method"] == "sampled" and a.values == b.values and a.values != c.values
