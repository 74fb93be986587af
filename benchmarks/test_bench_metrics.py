"""The metric kernels on one Visium-sized slide: Pearson per gene, Moran's I, GSC and SSC.

4,000 spots x 200 genes (an HMHVG-200 panel on a full Visium capture area), the fixed-seed
synthetic slide of ``bench_moran.py`` (spatial waves, Poisson counts, log1p, noisy prediction).
Each benchmark first checks its answer against a plain reference computed another way here
(``np.corrcoef``, Moran's I summed edge by edge), so a fast wrong kernel fails.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench_moran import synthetic_slide
from flag_bench.metrics.kernels import constant_columns, pearson_columns
from flag_bench.metrics.moran import morans_i
from flag_bench.metrics.structure import DEFAULT_WEIGHTS, gsc_scores, ssc_scores

SPOTS, GENES, SEED = 4_000, 200, 0
TOP = 32  # ssc@32, the registered SSC's default


@pytest.fixture(scope="module")
def slide():
    xy, truth, pred = synthetic_slide(SPOTS, GENES, seed=SEED)
    keep = ~constant_columns(truth)  # the references below assume genes that vary
    return xy, truth[:, keep], pred[:, keep]


@pytest.fixture(scope="module")
def weights(slide):
    return DEFAULT_WEIGHTS.build(slide[0])  # what ssc_scores builds: kNN k = 6, symmetric, row-standardised


def reference_moran(x: np.ndarray, w) -> np.ndarray:
    """Moran's I per column, summed over the weight matrix's edges (no gene blocks, no W @ Z)."""
    coo = w.matrix.tocoo()
    z = x - x.mean(0)
    cross = (coo.data[:, None] * z[coo.row] * z[coo.col]).sum(0)
    return w.n / w.s0 * cross / (z * z).sum(0)


def upper(c: np.ndarray) -> np.ndarray:
    return c[np.triu_indices(c.shape[0], k=1)]


def test_pearson_columns(benchmark, slide):
    _, truth, pred = slide
    r, valid = benchmark(pearson_columns, truth, pred)
    want = np.array([np.corrcoef(truth[:, j], pred[:, j])[0, 1] for j in range(truth.shape[1])])
    assert valid.all()
    np.testing.assert_allclose(r, want)


def test_morans_i(benchmark, slide, weights):
    _, truth, _ = slide
    res = benchmark(morans_i, truth, weights)
    np.testing.assert_allclose(res.I, reference_moran(truth, weights))
    assert np.isfinite(res.p_rand).all() and res.n_constant == 0


def test_gsc(benchmark, slide):
    _, truth, pred = slide
    s = benchmark(gsc_scores, truth, pred)
    want = np.corrcoef(upper(np.corrcoef(truth.T)), upper(np.corrcoef(pred.T)))[0, 1]
    np.testing.assert_allclose(s.values["gsc"], want)
    assert s.notes["n_valid_genes"] == truth.shape[1]


def test_ssc(benchmark, slide, weights):
    xy, truth, pred = slide
    s = benchmark(ssc_scores, truth, pred, xy, top=TOP)
    i_true, i_pred = reference_moran(truth, weights), reference_moran(pred, weights)
    np.testing.assert_allclose(s.values["ssc"], np.corrcoef(i_true, i_pred)[0, 1])
    top = np.argsort(-i_true, kind="stable")[:TOP]
    np.testing.assert_allclose(s.values[f"ssc@{TOP}"], np.corrcoef(i_true[top], i_pred[top])[0, 1])
    np.testing.assert_allclose(s.values["moran_abs_err"], np.abs(i_pred - i_true).mean())
