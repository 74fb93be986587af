"""Contract tests generated from the method registry: every registered method, tiny preset."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from flag_bench.catalog import METHODS
from flag_bench.methods.base import Method, seed_everything

from conftest import make_views

ALL_METHODS = METHODS.names()


def _fit_predict(cls, train, test, val=None, seed=0):
    seed_everything(seed)
    m = cls(cls.make_config("tiny"), seed=seed, device="cpu")
    m.fit(train, val)
    return m, m.predict(test)


def _with_val(cls, data):
    """(train, val, test): a validation slide carved from train when the method asks for one."""
    from flag_bench.datasets.views import TrainData

    train, test, _ = data
    if not cls.card.uses_validation:
        return train, None, test
    common = dict(genes=train.genes, gene_ids=train.gene_ids, target_transform=train.target_transform,
                  dataset=train.dataset)
    return TrainData(**common, slides=train.slides[:-1]), TrainData(**common, slides=train.slides[-1:]), test


@pytest.fixture(scope="module")
def data():
    return make_views(n_train_slides=3, n_test_slides=2, n_spots=40, n_genes=10)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_card_config_and_presets(name):
    cls = METHODS.get(name)
    assert issubclass(cls, Method)
    assert cls.card.name == name
    assert {"tiny", "small", "paper"} <= set(cls.presets)
    assert cls.Config.__dataclass_params__.frozen, "configs are frozen dataclasses"
    for preset in cls.presets:
        assert dataclasses.is_dataclass(cls.make_config(preset))
    from flag_bench.errors import UserError

    with pytest.raises(UserError, match="no config key"):
        cls.make_config("tiny", {"definitely_not_a_key": 1})


@pytest.mark.parametrize("name", ALL_METHODS)
def test_fit_predict_contract(name, data):
    cls = METHODS.get(name)
    train, val, test = _with_val(cls, data)
    m, preds = _fit_predict(cls, train, test, val)
    assert isinstance(preds, list) and len(preds) == len(test.slides)
    for p, s in zip(preds, test.slides):
        assert p.shape == (s.n_spots, test.n_genes)
        assert p.dtype == np.float32
        assert np.isfinite(p).all()
    n = m.n_parameters()
    assert n is None or (isinstance(n, int) and n >= 0)
    assert isinstance(m.summary, dict) and m.summary, "a method must say what happened in fit"

    # same seed, same device -> identical predictions
    _, again = _fit_predict(cls, train, test, val)
    for a, b in zip(preds, again):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_no_access_to_test_expression(name, data):
    """TestData carries no expression, and inputs are read-only: predictions cannot depend on the
    held-out truth, and a method cannot scribble on the runner's arrays."""
    train, test, truths = data
    for s in test.slides:
        assert not hasattr(s, "targets") and not hasattr(s, "counts")
        assert not s.embeddings.flags.writeable and not s.coords_um.flags.writeable
    for s in train.slides:
        assert not s.targets.flags.writeable
    cls = METHODS.get(name)
    train, val, test = _with_val(cls, data)
    before = [s.targets.copy() for s in train.slides]
    _, preds = _fit_predict(cls, train, test, val)
    for b, s in zip(before, train.slides):
        np.testing.assert_array_equal(b, s.targets)
    # the truth lives only in the test: scrambling it cannot change what the method predicted
    for t in truths:
        t[:] = np.random.default_rng(1).permutation(t.ravel()).reshape(t.shape)
    _, again = _fit_predict(cls, train, test, val)
    for a, b in zip(preds, again):
        np.testing.assert_array_equal(a, b)
