"""ridge-smooth: the smoothing rule, choice on training slides only, and no test expression."""

from __future__ import annotations

import numpy as np
import pytest

from flag_bench.methods.base import seed_everything
from flag_bench.methods.controls import RidgeControl, RidgeSmoothControl, spatial_smooth

from conftest import make_views


def test_spatial_smooth_blends_own_and_neighbour_mean():
    coords = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [10.0, 0.0]])
    pred = np.array([[0.0], [3.0], [6.0], [9.0]])
    out = spatial_smooth(pred, coords, k=1, blend=0.5)
    # spot 1 has two nearest spots at the same distance: either is a correct neighbour
    assert out[0, 0] == 1.5 and out[2, 0] == 4.5 and out[3, 0] == 7.5 and out[1, 0] in (1.5, 4.5)
    np.testing.assert_array_equal(spatial_smooth(pred, coords, k=3, blend=0.0), pred)
    capped = spatial_smooth(pred, coords, k=1, blend=1.0, distance_quantile=0.5)
    assert capped[3, 0] == 9.0  # its only neighbour lies beyond the cap: it keeps its own


def _fit(views, cls, overrides=None):
    train, test, _ = views
    seed_everything(0)
    m = cls(cls.make_config("small", overrides), seed=0, device="cpu").fit(train)
    return m, m.predict(test)


def test_choice_uses_training_slides_and_reduces_to_ridge_at_blend_zero():
    views = make_views(n_train_slides=3, n_test_slides=1, n_spots=49, n_genes=6)
    m, preds = _fit(views, RidgeSmoothControl)
    assert m.summary["smoothing_chosen_by"].startswith("leave-one-training-slide-out")
    assert m.blend_ in m.config.blends and m.k_ in m.config.ks
    _, ridge = _fit(views, RidgeControl)
    _, zero = _fit(views, RidgeSmoothControl, {"blend": 0.0, "k": 4})
    np.testing.assert_allclose(zero[0], ridge[0], rtol=1e-6)
    # smooth expression fields: smoothing helps on held-out data
    truth = views[2][0]
    assert np.mean((preds[0] - truth) ** 2) <= np.mean((ridge[0] - truth) ** 2) + 1e-9


def test_paper_preset_is_the_published_recipe():
    c = RidgeSmoothControl.make_config("paper")
    assert (c.blend, c.k, c.distance_quantile) == (0.25, 8, 0.95)


def test_bad_blend_is_a_config_error():
    from flag_bench.errors import UserError

    with pytest.raises(UserError, match="blend"):
        RidgeSmoothControl.make_config("small", {"blend": 1.5})
