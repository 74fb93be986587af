"""Stem: tiny fit/predict, determinism, respacing and divergence handling."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from flag_bench.errors import CellFailure
from flag_bench.methods.base import seed_everything
from flag_bench.methods.stem import Stem

from conftest import make_views


@pytest.fixture(scope="module")
def data():
    return make_views(n_train_slides=2, n_test_slides=1, n_spots=30, n_genes=10, emb_dim=12)


def _fit(data, overrides=None, seed=0):
    train, test, _ = data
    seed_everything(seed)
    m = Stem(Stem.make_config("tiny", overrides), seed=seed, device="cpu")
    return m, m.fit(train).predict(test)


def test_stem_tiny_contract_and_determinism(data):
    m, preds = _fit(data)
    _, test, _ = data
    p = preds[0]
    assert p.shape == (test.slides[0].n_spots, test.n_genes) and p.dtype == np.float32
    assert np.isfinite(p).all() and (p >= 0).all()
    s = m.summary
    assert s["respaced"] and s["n_samples"] == m.config.n_samples and s["optimizer_steps"] == m.config.steps
    assert {"mse", "vb"} <= set(s["last_loss_terms"])
    _, again = _fit(data)
    np.testing.assert_array_equal(p, again[0])
    _, other = _fit(data, seed=1)
    assert not np.array_equal(p, other[0]), "a different seed must change a stochastic prediction"


def test_stem_groups_genes_when_capped(data):
    m, _ = _fit(data, {"max_gene_tokens": 4})
    assert m.summary["genes_per_token"] == 3 and m.summary["n_tokens"] == 4


def test_stem_presets_match_the_spec():
    paper = Stem.make_config("paper")
    assert (paper.hidden, paper.depth, paper.heads, paper.diffusion_steps, paper.sampling_steps, paper.n_samples,
            paper.lr, paper.batch_size, paper.ema_decay) == (384, 12, 6, 1000, 1000, 20, 1e-4, 256, 0.9999)


def test_stem_nan_targets_fail_the_cell(data):
    train, _, _ = data
    from flag_bench.datasets.views import TrainSlide

    s0 = train.slides[0]
    fields = {f.name: getattr(s0, f.name) for f in dataclasses.fields(s0)}
    bad = TrainSlide(**{**fields, "targets": np.full_like(np.asarray(s0.targets), np.nan)})
    m = Stem(Stem.make_config("tiny"), seed=0, device="cpu")
    with pytest.raises(CellFailure, match=r"'stem' diverged.*step 0"):
        m.fit(dataclasses.replace(train, slides=(bad,)))
