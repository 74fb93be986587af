import numpy as np
from sklearn.linear_model import Ridge

from flag_bench.methods.controls import MeanControl, RidgeControl, _ridge_path
from flag_bench.metrics.core import pearson_per_gene

from conftest import make_views


def test_ridge_path_matches_sklearn():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 8)), rng.normal(size=(60, 3))
    for alpha in (0.1, 10.0):
        coef, b = _ridge_path(x, y, [alpha])[0]
        sk = Ridge(alpha=alpha).fit(x, y)
        np.testing.assert_allclose(coef, sk.coef_.T, atol=1e-10)
        np.testing.assert_allclose(b, sk.intercept_, atol=1e-10)


def test_ridge_beats_mean_on_learnable_data_and_mean_scores_zero():
    train, test, truths = make_views(n_train_slides=4, n_test_slides=1, n_spots=100, n_genes=10, emb_dim=16)
    mean = MeanControl(MeanControl.make_config("small"), seed=0).fit(train)
    ridge = RidgeControl(RidgeControl.make_config("small"), seed=0).fit(train)
    r_mean, valid = pearson_per_gene(truths[0], mean.predict(test)[0])
    r_ridge, _ = pearson_per_gene(truths[0], ridge.predict(test)[0])
    assert np.all(r_mean[valid] == 0.0)
    assert r_ridge[valid].mean() > 0.3
    assert ridge.summary["alpha_cv"] == "leave-one-training-slide-out"
