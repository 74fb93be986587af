"""Every registered metric honours the contract the runner and the report rely on.

Parametrised over ``METRICS.names()``, so a new metric (built-in or plugin) is checked without
editing this file. The slide has clear spatial domains so that k-means finds the same partition
whatever the spot order, and jittered coordinates so that kNN weights have no distance ties.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from flag_bench.catalog import METRICS
from flag_bench.metrics.base import Metric, SlideContext

N, G = 240, 40


def _slide(seed=0):
    """-> (truth (N, G), coords (N, 2), domain labels (N,)): 4 spatial quadrants, distinct profiles."""
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0.0, 1000.0, size=(N, 2))
    domain = (coords[:, 0] > 500).astype(int) + 2 * (coords[:, 1] > 500).astype(int)
    profiles = rng.gamma(2.0, 1.5, size=(4, G))
    truth = np.log1p(rng.poisson(np.exp(profiles[domain])))
    return truth.astype(np.float64), coords, domain


def _ctx(coords, domain):
    return SlideContext("s", coords, tuple(f"g{j}" for j in range(G)), seed=0, annotations=domain)


def _best(out) -> float | None:
    if out.higher_is_better is None:
        return None
    return out.range[1] if out.higher_is_better else out.range[0]


@pytest.fixture(scope="module")
def slide():
    return _slide()


@pytest.fixture(scope="module", params=["independent", "noisy"])
def prediction(request, slide):
    truth = slide[0]
    rng = np.random.default_rng(1)
    if request.param == "independent":
        return rng.permutation(truth)  # same marginals, no relation to the truth
    return truth + rng.normal(scale=0.7, size=truth.shape)


@pytest.fixture(params=METRICS.names())
def metric(request) -> Metric:
    return METRICS.get(request.param)


def test_outputs_declare_direction_and_range(metric):
    assert metric.outputs, f"{metric.name} declares no outputs"
    for out in metric.outputs:
        assert out.higher_is_better in (True, False, None), f"{metric.name}.{out.name}"
        low, high = out.range
        assert isinstance(low, float) and isinstance(high, float) and low < high, f"{metric.name}.{out.name}"
    assert len({o.name for o in metric.outputs}) == len(metric.outputs)


def test_values_lie_in_range_and_per_gene_has_length_g(metric, slide, prediction):
    truth, coords, domain = slide
    s = metric.compute(truth, prediction, _ctx(coords, domain))
    assert set(s.values) == {o.name for o in metric.outputs}
    for out in metric.outputs:
        v = s.values[out.name]
        assert math.isfinite(v), f"{out.name} = {v} ({s.notes.get(out.name + '_reason')})"
        assert out.range[0] <= v <= out.range[1], f"{out.name} = {v} outside {out.range}"
    for name, vec in s.per_gene.items():
        assert np.shape(vec) == (G,), f"per-gene {name} has shape {np.shape(vec)}"


def test_invariant_to_permuting_spots(metric, slide, prediction):
    truth, coords, domain = slide
    perm = np.random.default_rng(7).permutation(N)
    a = metric.compute(truth, prediction, _ctx(coords, domain))
    b = metric.compute(truth[perm], prediction[perm], _ctx(coords[perm], domain[perm]))
    for name, v in a.values.items():
        assert b.values[name] == pytest.approx(v, rel=1e-9, abs=1e-12), name
    for name, vec in a.per_gene.items():
        np.testing.assert_allclose(b.per_gene[name], vec, rtol=1e-9, atol=1e-12, err_msg=name)


def test_perfect_prediction_scores_the_best_end(metric, slide):
    truth, coords, domain = slide
    s = metric.compute(truth, truth.copy(), _ctx(coords, domain))
    for out in metric.outputs:
        best = _best(out)
        if best is None or not math.isfinite(best):
            continue  # a diagnostic, or a metric with no attainable best end
        # the *_annot outputs reach 1 here only because the annotations are the true domains
        assert s.values[out.name] == pytest.approx(best, abs=1e-9), out.name
