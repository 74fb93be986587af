"""GSC, SSC, RVD and domain agreement: reference parity, properties, degenerate input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from flag_bench.errors import CellFailure
from flag_bench.metrics.base import SlideContext
from flag_bench.metrics.domains import DOMAINS, cluster_labels, domain_scores, pca_scores
from flag_bench.metrics.moran import morans_i_values
from flag_bench.metrics.spatial_weights import KNNWeights, RadiusWeights
from flag_bench.metrics.structure import GSC, RVD, SSC, gsc_scores, make_ssc


def _slide(n=400, g=40, seed=0, noise=0.3):
    """Spatially patterned truth (a few smooth programs) and a noisy prediction of it."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 2000, size=(n, 2))
    waves = np.concatenate(
        [np.sin(xy @ rng.normal(size=(2, 1)) / 300 + rng.uniform(0, 6)) for _ in range(4)], axis=1
    )
    scale = rng.uniform(0.2, 1.5, size=(1, g))  # genes differ in how spatial they are
    y = (waves @ rng.normal(size=(4, g))) * scale + rng.normal(size=(n, g))
    return xy, y, y + noise * rng.normal(size=(n, g))


def _ctx(xy, g, annotations=None):
    return SlideContext("s", xy, tuple(f"g{i}" for i in range(g)), annotations=annotations)


def test_gsc_matches_numpy_and_scipy_reference():
    _, y, yh = _slide(g=25)
    s = gsc_scores(y, yh)
    iu = np.triu_indices(25, k=1)
    c, ch = np.corrcoef(y.T)[iu], np.corrcoef(yh.T)[iu]
    assert s.values["gsc"] == pytest.approx(stats.pearsonr(c, ch)[0], abs=1e-12)
    assert s.values["gsc_spearman"] == pytest.approx(stats.spearmanr(c, ch)[0], abs=1e-12)
    fro = 1 - np.linalg.norm(np.corrcoef(y.T) - np.corrcoef(yh.T)) / np.linalg.norm(np.corrcoef(y.T) - np.eye(25))
    assert s.values["gsc_frobenius"] == pytest.approx(fro, abs=1e-12)


def test_ssc_matches_pearson_of_moran_vectors():
    xy, y, yh = _slide()
    s = SSC.compute(y, yh, _ctx(xy, 40))
    w = KNNWeights(6, symmetric=True, transform="R").build(xy)
    it, ip = morans_i_values(y, w), morans_i_values(yh, w)
    assert s.values["ssc"] == pytest.approx(stats.pearsonr(it, ip)[0], abs=1e-12)
    top = np.argsort(-it)[:32]
    assert s.values["ssc@32"] == pytest.approx(stats.pearsonr(it[top], ip[top])[0], abs=1e-12)
    assert s.values["moran_abs_err"] == pytest.approx(np.abs(it - ip).mean(), abs=1e-14)
    np.testing.assert_array_equal(s.per_gene["moran_i_true"], it)
    np.testing.assert_array_equal(s.per_gene["moran_i_pred"], ip)
    assert s.notes["weights"] == "knn" and s.notes["weights_k"] == 6 and s.notes["weights_transform"] == "R"


def test_identical_prediction_scores_perfectly():
    xy, y, _ = _slide()
    ctx = _ctx(xy, 40)
    g, s, d = GSC.compute(y, y, ctx).values, SSC.compute(y, y, ctx).values, DOMAINS.compute(y, y, ctx).values
    assert g["gsc"] == pytest.approx(1.0, abs=1e-12) and g["gsc_spearman"] == pytest.approx(1.0, abs=1e-12)
    assert g["gsc_frobenius"] == pytest.approx(1.0, abs=1e-12)
    assert s["ssc"] == pytest.approx(1.0, abs=1e-12) and s["ssc@32"] == pytest.approx(1.0, abs=1e-12)
    assert s["moran_abs_err"] == 0.0
    assert d["ari"] == 1.0 and d["nmi"] == pytest.approx(1.0)
    assert RVD.compute(y, y, ctx).values["rvd"] == 0.0


def test_shuffling_spots_kills_ssc_but_not_marginal_statistics():
    xy, y, yh = _slide(n=600, g=60, seed=1)
    shuffled = yh[np.random.default_rng(0).permutation(600)]
    ctx = _ctx(xy, 60)
    before, after = SSC.compute(y, yh, ctx).values["ssc"], SSC.compute(y, shuffled, ctx).values["ssc"]
    assert before > 0.9 and abs(after) < 0.3
    # per-gene statistics of the prediction do not see the spot order: means, variances, RVD and
    # gene-gene correlations (GSC) are unchanged
    np.testing.assert_allclose(shuffled.mean(0), yh.mean(0), rtol=1e-12)
    np.testing.assert_allclose(shuffled.var(0), yh.var(0), rtol=1e-12)
    assert RVD.compute(y, shuffled, ctx).values["rvd"] == pytest.approx(RVD.compute(y, yh, ctx).values["rvd"], rel=1e-10)
    assert GSC.compute(y, shuffled, ctx).values["gsc"] == pytest.approx(GSC.compute(y, yh, ctx).values["gsc"], abs=1e-10)


def test_results_do_not_depend_on_gene_order():
    xy, y, yh = _slide(g=36, seed=2)
    perm = np.random.default_rng(1).permutation(36)
    ctx = _ctx(xy, 36)
    for metric in (GSC, SSC, RVD, DOMAINS):
        a = metric.compute(y, yh, ctx)
        b = metric.compute(y[:, perm], yh[:, perm], ctx)
        for name, v in a.values.items():
            if np.isnan(v):
                assert np.isnan(b.values[name])
            else:
                assert b.values[name] == pytest.approx(v, abs=1e-9), (metric.name, name)
        for name, col in a.per_gene.items():
            np.testing.assert_allclose(b.per_gene[name], col[perm], rtol=1e-12, atol=1e-15)


def test_constant_genes_in_truth_are_excluded_and_counted():
    xy, y, yh = _slide(g=20)
    y2, yh2 = y.copy(), yh.copy()
    y2[:, 3] = 0.0
    ctx = _ctx(xy, 20)
    keep = np.arange(20) != 3
    for metric in (GSC, SSC, RVD):
        with_const, without = metric.compute(y2, yh2, ctx), metric.compute(y[:, keep], yh[:, keep], ctx)
        assert with_const.notes["n_const_true"] == 1
        for name, v in without.values.items():
            if name != "ssc@32":  # top-32 of 19 vs 20 genes differ only through gene 3 itself
                assert with_const.values[name] == pytest.approx(v, abs=1e-12), (metric.name, name)
    assert np.isnan(SSC.compute(y2, yh2, ctx).per_gene["moran_i_true"][3])


def test_constant_genes_in_prediction_predict_no_structure():
    xy, y, yh = _slide(g=20)
    yh2 = yh.copy()
    yh2[:, 5] = 1.0
    ctx = _ctx(xy, 20)
    s = SSC.compute(y, yh2, ctx)
    assert s.notes["n_const_pred"] == 1 and np.isnan(s.per_gene["moran_i_pred"][5])
    it = s.per_gene["moran_i_true"]
    ip = np.where(np.isnan(s.per_gene["moran_i_pred"]), 0.0, s.per_gene["moran_i_pred"])
    assert s.values["ssc"] == pytest.approx(stats.pearsonr(it, ip)[0], abs=1e-12)
    g = GSC.compute(y, yh2, ctx)
    assert g.notes["n_const_pred"] == 1 and np.isfinite(g.values["gsc"])


def test_all_constant_prediction_gets_no_credit():
    xy, y, _ = _slide()
    flat = np.tile(y.mean(axis=0), (y.shape[0], 1))  # the `mean` control
    ctx = _ctx(xy, 40)
    g, s, d = GSC.compute(y, flat, ctx), SSC.compute(y, flat, ctx), DOMAINS.compute(y, flat, ctx)
    assert g.values["gsc"] == 0.0 and "constant" in g.notes["gsc_reason"]
    assert s.values["ssc"] == 0.0 and s.values["ssc@32"] == 0.0
    assert s.values["moran_abs_err"] == pytest.approx(np.abs(s.per_gene["moran_i_true"]).mean())
    assert d.values["ari"] == 0.0 and d.values["nmi"] == 0.0


def test_too_few_spots_for_knn_is_nan_with_reason():
    xy, y, yh = _slide(n=6, g=5)
    s = SSC.compute(y, yh, _ctx(xy, 5))
    assert all(np.isnan(v) for v in s.values.values())
    assert "k + 1 = 7" in s.notes["ssc_reason"]
    assert np.isnan(s.per_gene["moran_i_true"]).all()
    d = DOMAINS.compute(y[:4], yh[:4], _ctx(xy[:4], 5))
    assert np.isnan(d.values["ari"]) and "at least k spots" in d.notes["ari_reason"]


def test_isolated_spots_with_radius_weights():
    xy, y, yh = _slide(n=300, g=10)
    xy = np.concatenate([xy, [[1e6, 1e6]]])
    y, yh = np.concatenate([y, y[:1]]), np.concatenate([yh, yh[:1]])
    s = make_ssc(weights=RadiusWeights(250.0)).compute(y, yh, _ctx(xy, 10))
    assert s.notes["weights_n_isolated"] == 1
    assert np.isfinite(s.values["ssc"])


def test_missing_coordinates_is_nan_with_reason():
    _, y, yh = _slide(g=5)
    s = SSC.compute(y, yh, _ctx(None, 5))
    assert np.isnan(s.values["ssc"]) and "coordinates" in s.notes["ssc_reason"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_prediction_fails_the_cell(bad):
    xy, y, yh = _slide(g=8)
    yh = yh.copy()
    yh[1, 2] = bad
    yh[7, 0] = bad
    for metric in (GSC, SSC, RVD, DOMAINS):
        with pytest.raises(CellFailure, match="2 non-finite"):
            metric.compute(y, yh, _ctx(xy, 8))


def test_single_gene_gsc_is_nan_with_reason():
    xy, y, yh = _slide(g=1)
    g = GSC.compute(y, yh, _ctx(xy, 1))
    assert all(np.isnan(v) for v in g.values.values())
    assert "at least 3 genes" in g.notes["gsc_reason"]
    s = SSC.compute(y, yh, _ctx(xy, 1))
    assert np.isnan(s.values["ssc"]) and "at least 2" in s.notes["ssc_reason"]
    assert np.isfinite(s.values["moran_abs_err"])
    assert np.isfinite(DOMAINS.compute(y, yh, _ctx(xy, 1)).values["ari"])


def test_domain_scores_equal_sklearn_on_the_labelings():
    xy, y, yh = _slide(n=500, g=50, seed=4, noise=1.0)
    d = domain_scores(y, yh, k=5, seed=0)
    lt, lp = cluster_labels(y, 5, seed=0), cluster_labels(yh, 5, seed=0)
    assert d.values["ari"] == adjusted_rand_score(lt, lp)
    assert d.values["nmi"] == normalized_mutual_info_score(lt, lp)
    assert 0.0 < d.values["ari"] < 1.0


def test_pca_scores_match_sklearn_up_to_sign():
    from sklearn.decomposition import PCA

    _, y, _ = _slide(n=300, g=60)
    z = (y - y.mean(0)) / y.std(0)
    ref = PCA(n_components=30, svd_solver="full").fit_transform(z)
    ours = pca_scores(y, 30).astype(np.float64)
    signs = np.sign((ours * ref).sum(0))
    np.testing.assert_allclose(ours * signs, ref, atol=2e-4 * np.abs(ref).max())
    wide = pca_scores(y[:20], 30)  # N < G: the (N, N) route
    ref_w = PCA(n_components=20, svd_solver="full").fit_transform((y[:20] - y[:20].mean(0)) / y[:20].std(0))
    np.testing.assert_allclose(np.abs(wide[:, :19]), np.abs(ref_w[:, :19]), atol=1e-3 * np.abs(ref_w).max())


def test_annotations_set_k_and_score_the_prediction():
    from flag_bench.datasets.her2st_mini import load

    slide = next(s for s in load().slides if s.id == "C2")
    ann = np.asarray(slide.meta["annotations"])
    counts = slide.counts.toarray()
    top = np.argsort(-counts.mean(axis=0), kind="stable")[:100]
    y = np.log1p(counts[:, top].astype(np.float64))
    s = DOMAINS.compute(y, y, _ctx(slide.coords_um, 100, annotations=ann))
    valid = ann >= 0
    assert s.notes["domains_k"] == np.unique(ann[valid]).size
    assert s.notes["n_annotated_spots"] == int(valid.sum()) < ann.size
    assert s.values["ari_annot"] == pytest.approx(s.notes["ari_annot_truth"])
    labels = cluster_labels(y, s.notes["domains_k"], seed=0)
    assert s.values["ari_annot"] == adjusted_rand_score(ann[valid], labels[valid])
    no_ann = DOMAINS.compute(y, y, _ctx(slide.coords_um, 100))
    assert np.isnan(no_ann.values["ari_annot"]) and no_ann.notes["domains_k"] == 5


def test_metric_objects_declare_their_outputs_and_pickle():
    xy, y, yh = _slide(g=10)
    for metric in (GSC, SSC, RVD, DOMAINS):
        out = metric.compute(y, yh, _ctx(xy, 10))
        declared = {o.name for o in metric.outputs}
        assert set(out.values) == declared, metric.name
        for o in metric.outputs:
            lo, hi = o.range
            v = out.values[o.name]
            assert np.isnan(v) or lo <= v <= hi, (o.name, v)
        clone = pickle.loads(pickle.dumps(metric))
        assert clone.compute(y, yh, _ctx(xy, 10)).values.keys() == out.values.keys()
    assert SSC.needs_coords and not GSC.needs_coords
    assert SSC.output("moran_abs_err").higher_is_better is False and RVD.output("rvd").higher_is_better is None
