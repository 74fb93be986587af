"""Generative methods are scored on each draw as well as on the mean of their draws
(flag_bench.scoring.score_samples, wired in flag_bench/cell.py): the per-draw columns are the
mean and sd over draws of exactly what score_cell gives each draw, and the prediction the harness
scores is the mean of the draws."""

from __future__ import annotations

import numpy as np
import pytest

from flag_bench.catalog import METHODS
from flag_bench.config import RunConfig
from flag_bench.driver import Driver
from flag_bench.errors import CellFailure
from flag_bench.methods.base import MethodCard
from flag_bench.methods.controls import MeanConfig, MeanControl
from flag_bench.scoring import SAMPLE_SCORES, check_samples, sample_name, score_cell, score_samples
from flag_bench.store import ResultsStore

SYN = "synthetic:n_slides=3,spots_per_slide=60,n_genes=80,seed=3"


class NoisyDraws(MeanControl):
    """Three draws per slide: the training mean plus seeded noise of three sizes."""

    card = MethodCard(name="noisy-draws", description="test: a generative stand-in with three draws",
                      needs=frozenset(), generative=True, default_run=False)
    Config = MeanConfig

    def predict(self, test):
        return [x.mean(axis=0) for x in self.predict_samples(test)]

    def predict_samples(self, test):
        rng = np.random.default_rng(self.seed)
        out = []
        for p in super().predict(test):
            out.append(np.stack([p + s * rng.standard_normal(p.shape) for s in (0.1, 0.5, 1.0)]).astype(np.float32))
        return out


@pytest.fixture(scope="module")
def views():
    from flag_bench.check import fold_views, synthetic_dataset

    return fold_views(NoisyDraws, synthetic_dataset())


def _draws(views, n):
    rng = np.random.default_rng(0)
    return [np.stack([y + s * rng.standard_normal(y.shape) for s in np.linspace(0.2, 1.5, n)]).astype(np.float32)
            for y in views.truths]


def test_per_draw_scores_are_mean_and_sd_of_score_cell_per_draw(views):
    draws = _draws(views, 4)
    got = score_samples(draws, views.truths, views.test, 0, views.annotations, target_transform="log1p")
    each = [score_cell([d[k] for d in draws], views.truths, views.test, 0, views.annotations)[0] for k in range(4)]
    assert got["n_samples"] == 4
    for key in ("pcc_mean", "mse", "gsc", "ssc"):
        vals = np.array([e[key] for e in each])
        assert got[sample_name(key)] == pytest.approx(vals.mean(), rel=1e-12, abs=1e-12)
        assert got[sample_name(key, sd=True)] == pytest.approx(vals.std(ddof=1), rel=1e-12, abs=1e-12)
    # noisier draws score worse, so the draws do vary: the sd is not a constant 0
    assert got[sample_name("pcc_mean", sd=True)] > 0.05
    assert set(k.split(".", 1)[1] for k in got if k.startswith("sample.")) <= set(SAMPLE_SCORES)


def test_one_draw_has_no_spread(views):
    got = score_samples(_draws(views, 1), views.truths, views.test, 0, views.annotations)
    assert got["n_samples"] == 1 and np.isnan(got[sample_name("pcc_mean", sd=True)])
    assert np.isfinite(got[sample_name("pcc_mean")])


@pytest.mark.parametrize("bad, message", [
    (lambda d: d[:-1], "of length"),
    (lambda d: [x[:, :-1] for x in d], "sampled shape"),
    (lambda d: [d[0], d[1][:1]] + d[2:], "drew 1 samples"),
    (lambda d: [np.where(x == x.max(), np.nan, x) for x in d], "non-finite"),
])
def test_check_samples_names_what_is_wrong(views, bad, message):
    draws = _draws(views, 2)
    assert len(draws) >= 2
    with pytest.raises(CellFailure, match=message):
        check_samples("m", bad(draws), views.test)


def test_the_harness_scores_the_mean_of_draws_and_each_draw(tmp_path):
    METHODS.register("noisy-draws", NoisyDraws)
    try:
        cfg = RunConfig(datasets=(SYN,), methods=("noisy-draws", "mean"), genes=(10,), encoder="color-stats",
                        preset="tiny", device="cpu", results_dir=str(tmp_path / "res"), folds=(0,))
        assert Driver(cfg).run().exit_code == 0
    finally:
        METHODS.unregister("noisy-draws")
    recs = {r.cell.method: r for r in ResultsStore(tmp_path / "res").records()}
    draws, mean = recs["noisy-draws"].scores, recs["mean"].scores
    assert draws["n_samples"] == 3
    # the draws carry noise, so a single draw has a worse MSE than the mean of the three
    assert draws[sample_name("mse")] > draws["mse"]
    assert draws[sample_name("mse", sd=True)] > 0
    # a method without draws records no per-draw columns
    assert not any(k.startswith(("sample.", "sample_sd.")) for k in mean) and "n_samples" not in mean
