"""Null controls (metric-validity.md §4): what GSC, SSC and PCC give a prediction that knows
nothing about where the test expression is. On real her2st-mini folds (HMHVG-200, log1p; C2 left
out, and C -> B4): the shuffled truth scores GSC exactly 1, the rotated truth reproduces the
review's numbers, random training spots read only training data, and the gene prior's fields
reach each gene's training Moran's I while carrying no co-expression."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from flag_bench.catalog import METHODS, in_default_run, method_card
from flag_bench.datasets import views as data_views
from flag_bench.methods.base import MethodCard
from flag_bench.methods.controls import MeanControl
from flag_bench.methods.nulls import GenePrior, GenePriorConfig, RandomSpot, RandomSpotConfig
from flag_bench.methods.oracles import (NullRotate, NullShuffle, RotateConfig, ShuffleConfig, receives_truth,
                                        rotated_sources)
from flag_bench.methods.roles import is_null, is_oracle, is_reference, role_of
from flag_bench.metrics.moran import morans_i_values
from flag_bench.roles import Role, recorded_role
from flag_bench.metrics.structure import DEFAULT_WEIGHTS
from flag_bench.scoring import score_cell

from conftest import her2st_fold_views, make_views


@pytest.fixture(scope="module")
def folds():
    return {test[0]: views for test, views in her2st_fold_views(200).items()}  # "B4", "C2"


def _scores(preds, views):
    return score_cell(preds, views.truths, views.test, 0, views.annotations)[0]


def _truth_null(cls, cfg, views, seed=0):
    m = cls(cfg, seed=seed).fit(views.train)
    return m, m.predict_from_truth(views.test, views.truths)


def _method(cls, cfg, views, seed=0):
    m = cls(cfg, seed=seed).fit(views.train)
    return m, m.predict(views.test)


# -- roles ----------------------------------------------------------------------------------------

def test_roles_read_classes_cards_and_recorded_card_dicts():
    for obj in (RandomSpot, RandomSpot.card, RandomSpot.card.to_dict(), GenePrior.card.to_dict()):
        assert role_of(obj) is Role.NULL and is_null(obj) and is_reference(obj) and not is_oracle(obj)
    for obj in (NullShuffle, NullRotate.card, NullRotate.card.to_dict()):
        assert role_of(obj) is Role.TRUTH_NULL and is_null(obj) and is_reference(obj) and not is_oracle(obj)
    for obj in (METHODS.get("oracle-noise"), method_card("oracle-slide-mean").to_dict()):
        assert role_of(obj) is Role.ORACLE and is_oracle(obj) and is_reference(obj) and not is_null(obj)
    plain = MethodCard(name="plain", description="x", needs=frozenset())
    for obj in (plain, plain.to_dict(), {"extra": None}, {}):
        assert role_of(obj) is Role.METHOD and not is_reference(obj)
    assert role_of(MeanControl) is Role.NEGATIVE_CONTROL and not is_reference(MeanControl)


def test_records_written_before_the_role_field_read_as_then():
    """A card dict without ``role`` (records of an older flag-bench): extra['role'] for the
    references, the built-in controls by name, anything else a method."""
    for card, role in (({"name": "null-shuffle", "extra": {"role": "null", "reads_truth": True}}, Role.TRUTH_NULL),
                       ({"name": "gene-prior", "extra": {"role": "null", "reads_truth": False}}, Role.NULL),
                       ({"name": "oracle-noise", "extra": {"role": "oracle"}}, Role.ORACLE),
                       ({"name": "plug", "extra": {"role": "positive_control"}}, Role.POSITIVE_CONTROL),
                       ({"name": "mean", "extra": {}}, Role.NEGATIVE_CONTROL),
                       ({"name": "knn"}, Role.POSITIVE_CONTROL), ({"name": "flag", "extra": {}}, Role.METHOD)):
        assert recorded_role(card) is role and role_of(card) is role, card
    # the new shape wins over a name: the field is the one source
    assert recorded_role({"name": "mean", "role": "method"}) is Role.METHOD


def test_a_card_declares_its_role_in_the_field_only():
    with pytest.raises(ValueError, match="role field"):
        MethodCard(name="old", description="x", needs=frozenset(), extra={"role": "oracle"})
    with pytest.raises(ValueError, match="unknown role 'ghost'"):
        MethodCard(name="bad", description="x", needs=frozenset(), role="ghost")
    card = MethodCard(name="typed", description="x", needs=frozenset(), role="null")
    assert card.role is Role.NULL and card.to_dict()["role"] == Role.NULL.value
    for n in METHODS.names():  # no built-in keeps a role in extra
        assert "role" not in method_card(n).extra and isinstance(method_card(n).role, Role), n


def test_registry_places_the_nulls():
    nulls = [n for n in METHODS.names() if is_null(method_card(n))]
    assert nulls == ["random-spot", "gene-prior", "null-shuffle", "null-rotate"]
    # image-free nulls join the default run beside `mean`; the truth-reading ones never do
    assert [n for n in nulls if in_default_run(n)] == ["random-spot", "gene-prior"]
    assert [n for n in nulls if receives_truth(METHODS.get(n))] == ["null-shuffle", "null-rotate"]
    for n in ("null-shuffle", "null-rotate"):
        assert method_card(n).role is Role.TRUTH_NULL
    for n in ("random-spot", "gene-prior"):
        assert method_card(n).role is Role.NULL and "embeddings" not in method_card(n).needs


# -- null-shuffle -----------------------------------------------------------------------------------

@pytest.mark.parametrize("slide", ["C2", "B4"])
def test_shuffled_truth_keeps_co_expression_exactly(folds, slide):
    views = folds[slide]
    _, preds = _truth_null(NullShuffle, ShuffleConfig(), views)
    y, p = views.truths[0], preds[0]
    assert p.dtype == np.float32 and not np.array_equal(p, y)
    assert np.array_equal(np.sort(p, axis=0), np.sort(y, axis=0))  # each gene's values, reordered
    assert {r.tobytes() for r in p} == {r.tobytes() for r in y}  # whole spots move, not genes
    sc = _scores(preds, views)
    assert sc["gsc"] == pytest.approx(1.0, abs=1e-12)  # GSC is blind to where spots are
    assert abs(sc["pcc_mean"]) < 0.15


def test_shuffle_is_seeded_per_slide(folds):
    views = folds["B4"]
    a, b, c = (_truth_null(NullShuffle, ShuffleConfig(), views, seed=s)[1][0] for s in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# -- null-rotate ------------------------------------------------------------------------------------

def test_rotation_takes_the_nearest_spot_to_the_rotated_position():
    # a 4 x 3 lattice (x spacing 1, y spacing 2): rotating 180 degrees about the box centre maps
    # the lattice onto itself, so row-major order reverses
    xy = np.array([(x, y) for y in (0, 2, 4) for x in range(4)], dtype=float)
    assert np.array_equal(rotated_sources(xy), np.arange(12)[::-1])
    # drop the corner (3, 4): the box is unchanged; (0, 0) now rotates onto the gap, whose nearest
    # spot is (2, 4) (1 away along x; (3, 2) is 2 away along y), which also serves (1, 0)
    keep = ~((xy[:, 0] == 3) & (xy[:, 1] == 4))
    pts = xy[keep]
    src = rotated_sources(pts)
    index = {tuple(p): i for i, p in enumerate(pts)}
    assert src[index[(0, 0)]] == src[index[(1, 0)]] == index[(2, 4)]
    assert src[index[(3, 2)]] == index[(0, 2)] and src[index[(2, 4)]] == index[(1, 0)]
    # through the oracle: predictions are the source spots' truths, the summary counts the sources
    genes = ("g0", "g1")
    common = dict(genes=genes, gene_ids=("", ""), target_transform="log1p", dataset="unit")
    slide = data_views.SlideInput(slide_id="S", patient="P", barcodes=np.array([f"b{i}" for i in range(len(pts))]),
                       coords_um=pts.astype(np.float32) * 100, embeddings=None, image=None, spot_diameter_um=55.0)
    truth = np.stack([np.arange(len(pts)), -np.arange(len(pts))], axis=1).astype(np.float32)
    m = NullRotate(RotateConfig(), seed=0).fit(None)
    (pred,) = m.predict_from_truth(data_views.TestData(**common, slides=(slide,)), [truth])
    assert np.array_equal(pred, truth[src])
    assert m.summary["distinct_source_fraction"] == {"S": pytest.approx(10 / 11)}


# metric-validity.md appendix, "Rotated truth": the construction is deterministic, so the numbers agree
ROTATED = {"C2": (-0.164, 0.922, 0.761, None), "B4": (-0.065, 0.063, 0.216, 0.60)}


@pytest.mark.parametrize("slide", ["C2", "B4"])
def test_rotated_truth_reproduces_the_review(folds, slide):
    views = folds[slide]
    m, preds = _truth_null(NullRotate, RotateConfig(), views)
    sc = _scores(preds, views)
    pcc, gsc, ssc, frac = ROTATED[slide]
    assert sc["pcc_mean"] == pytest.approx(pcc, abs=0.005)
    assert sc["gsc"] == pytest.approx(gsc, abs=0.005)
    assert sc["ssc"] == pytest.approx(ssc, abs=0.005)
    if frac is not None:
        assert m.summary["distinct_source_fraction"][slide] == pytest.approx(frac, abs=0.005)


# -- random-spot ------------------------------------------------------------------------------------

def test_random_spot_draws_training_profiles_deterministically(folds):
    views = folds["C2"]
    a, b, c = (_method(RandomSpot, RandomSpotConfig(), views, seed=s)[1][0] for s in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.shape == views.truths[0].shape
    pool = {r.tobytes() for s in views.train.slides for r in np.asarray(s.targets, np.float32)}
    assert all(r.tobytes() in pool for r in a)  # every spot is a training spot's profile
    sc = _scores([a], views)
    assert sc["gsc"] > 0.85 and abs(sc["pcc_mean"]) < 0.15  # the image-free GSC floor, no PCC


def test_random_spot_reads_only_training_data(folds):
    """The draw depends on the training pool, the seed and the number of test spots: moving
    the test spots, or handing other test inputs, changes nothing."""
    views = folds["B4"]
    m, preds = _method(RandomSpot, RandomSpotConfig(), views)
    s = views.test.slides[0]
    moved = dataclasses.replace(s, coords_um=np.asarray(s.coords_um)[::-1].copy() + 1000, image=None,
                                barcodes=np.array([f"x{i}" for i in range(s.n_spots)]))
    again = m.predict(dataclasses.replace(views.test, slides=(moved,), dataset="elsewhere"))
    assert np.array_equal(preds[0], again[0])
    assert _scores(preds, views)["gsc"] > 0.3  # B4: the review's 0.40, depth factor and all


# -- gene-prior -------------------------------------------------------------------------------------

@pytest.mark.parametrize("slide", ["C2", "B4"])
def test_gene_prior_matches_each_genes_training_moran_i(folds, slide):
    views = folds[slide]
    m, preds = _method(GenePrior, GenePriorConfig(), views)
    s = views.test.slides[0]
    w = DEFAULT_WEIGHTS.build(np.asarray(s.coords_um, dtype=np.float64))
    target = np.nanmean([morans_i_values(np.asarray(t.targets, np.float64), DEFAULT_WEIGHTS.build(t.coords_um))
                         for t in views.train.slides], axis=0)
    achieved = morans_i_values(preds[0], w)
    d = m.diagnostics_[s.slide_id]
    np.testing.assert_allclose(d["target"], target, rtol=1e-12)
    inside = (target >= d["lo"]) & (target <= d["hi"])
    assert inside.sum() >= 0.9 * len(target)
    assert np.max(np.abs(achieved[inside] - target[inside])) < 0.05
    assert m.summary["last_slide"]["moran_median_abs_error"] == pytest.approx(
        float(np.median(np.abs(d["achieved"] - target))))
    assert m.summary["last_slide"]["moran_median_abs_error"] < 0.02
    sc = _scores(preds, views)
    assert abs(sc["gsc"]) < 0.05 and abs(sc["pcc_mean"]) < 0.05  # independent fields per gene
    # SSC is then about the SSC ingredient: Pearson(mean training I, test I)
    test_i = morans_i_values(views.truths[0], w)
    assert sc["ssc"] == pytest.approx(np.corrcoef(target, test_i)[0, 1], abs=0.05)


def test_gene_prior_levels_training_mean_and_sd(folds):
    views = folds["C2"]
    m, (p,) = _method(GenePrior, GenePriorConfig(), views)
    y = np.concatenate([np.asarray(s.targets, np.float64) for s in views.train.slides])
    sd = np.mean([np.asarray(s.targets, np.float64).std(axis=0) for s in views.train.slides], axis=0)
    np.testing.assert_allclose(p.mean(axis=0), y.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(p.std(axis=0), sd, rtol=1e-4, atol=1e-6)


def test_gene_prior_uses_test_coordinates_only(folds):
    views = folds["C2"]
    m, a = _method(GenePrior, GenePriorConfig(), views)
    again = m.predict(dataclasses.replace(views.test, slides=(dataclasses.replace(views.test.slides[0], image=None),)))
    assert np.array_equal(a[0], again[0])
    assert not np.array_equal(a[0], _method(GenePrior, GenePriorConfig(), views, seed=1)[1][0])


def test_gene_prior_is_cheap_at_visium_scale():
    train, test, _ = make_views(n_train_slides=2, n_test_slides=1, n_spots=5000, n_genes=200, emb_dim=4)
    m = GenePrior(GenePriorConfig(), seed=0).fit(train)
    t = time.perf_counter()
    (p,) = m.predict(test)
    assert time.perf_counter() - t < 10  # about 0.6 s on one loaded core
    assert p.shape == (5000, 200) and np.isfinite(p).all()
    assert m.summary["last_slide"]["moran_median_abs_error"] < 0.02
