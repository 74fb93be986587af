"""The one embedding normaliser: its relative spread floor (defect 6) and the callers' options."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from flag_bench.methods.common.inputs import RELATIVE_SPREAD_FLOOR, EmbeddingNormalizer, informative_spread
from flag_bench.methods.controls import RidgeControl

from conftest import make_views


def test_features_without_training_spread_are_dropped_on_every_slide():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12))
    x[:, 1] = 0.7  # constant
    x[:, 2] = 0.7 + 1e-6 * rng.normal(size=300)  # nearly constant: sd 1e-6 next to ~1
    x[:, 3] *= 1e-3  # small but real spread: kept
    assert informative_spread(x.std(0)).tolist() == [True, False, False] + [True] * 9
    norm = EmbeddingNormalizer(x)
    other = rng.normal(size=(50, 12))  # another slide, where every feature varies
    z = norm(other)
    assert np.all(z[:, [1, 2]] == 0) and np.abs(z).max() < 1e4
    assert norm.describe()["uninformative_features_dropped"] == 2
    np.testing.assert_allclose(norm(x)[:, 3].std(), 1.0, rtol=1e-6)
    assert np.all(EmbeddingNormalizer(np.ones((10, 3)))(rng.normal(size=(4, 3))) == 0)


def test_the_floor_is_relative_to_the_median_spread():
    sd = np.array([0.0, 1e-5, 2e-4, 1.0, 2.0, 3.0])  # median positive spread 1.0
    assert informative_spread(sd).tolist() == [False, False, True, True, True, True]
    assert informative_spread(sd * 1e-3).tolist() == [False, False, True, True, True, True]
    assert RELATIVE_SPREAD_FLOOR == 1e-4


def test_caller_options_whiten_and_output_dtype():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 8)) * np.arange(1, 9)
    plain = EmbeddingNormalizer(x, 3, dtype=np.float64)
    whitened = EmbeddingNormalizer(x, 3, whiten=True, centre_before_svd=True)
    assert plain(x).dtype == np.float64 and whitened(x).dtype == np.float32
    np.testing.assert_allclose(whitened(x).std(0, ddof=1), 1.0, rtol=1e-5)
    # the same directions: whitening only rescales the components
    np.testing.assert_allclose(plain(x) / plain(x).std(0, ddof=1), whitened(x), rtol=1e-4, atol=1e-4)
    assert plain.describe()["pca_components"] == 3 and not plain.describe()["whitened"]


def _replace_embeddings(data, extra):
    slides = tuple(dataclasses.replace(s, embeddings=np.concatenate([s.embeddings, e[:, None]], 1).astype(np.float32))
                   for s, e in zip(data.slides, extra))
    return dataclasses.replace(data, slides=slides)


def test_ridge_ignores_a_feature_that_is_constant_in_training_but_not_on_the_test_slide():
    """HEST re-cut sections: a training spread of ~1e-6 became ~1e5 after standardising on a slide
    from another patient and dominated ridge (PCC 0.10, MSE 47-75 instead of 0.59)."""
    train, test, truths = make_views(n_train_slides=4, n_test_slides=1, n_spots=80, n_genes=6, emb_dim=12)
    rng = np.random.default_rng(3)
    flat = [0.5 + 1e-6 * rng.normal(size=s.n_spots) for s in train.slides]
    lively = [0.5 + rng.normal(size=s.n_spots) for s in test.slides]
    with_feature = RidgeControl(RidgeControl.make_config("small"), seed=0).fit(_replace_embeddings(train, flat))
    without = RidgeControl(RidgeControl.make_config("small"), seed=0).fit(train)
    pred = with_feature.predict(_replace_embeddings(test, lively))[0]
    ref = without.predict(test)[0]
    np.testing.assert_allclose(pred, ref, rtol=1e-4, atol=1e-4)
    assert with_feature.summary["embeddings"]["uninformative_features_dropped"] == 1
    assert np.mean((pred - truths[0]) ** 2) == pytest.approx(np.mean((ref - truths[0]) ** 2), rel=1e-3)
