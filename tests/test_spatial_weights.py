"""Spatial weights builders: structure, provenance, moments, degenerate input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from flag_bench.metrics.spatial_weights import GridWeights, KNNWeights, RadiusWeights


def _points(n=120, seed=0):
    return np.random.default_rng(seed).uniform(0, 1000, size=(n, 2))


def test_knn_directed_excludes_self_and_has_k_neighbours():
    xy = _points()
    w = KNNWeights(6, symmetric=False, transform="B").build(xy)
    a = w.matrix
    assert sp.isspmatrix_csr(a) or sp.issparse(a)
    assert np.all(np.diff(a.indptr) == 6)
    assert a.diagonal().sum() == 0
    # the stored neighbours are the 6 closest other points
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    for i in (0, 17, 99):
        assert set(a[i].indices) == set(np.argsort(d[i])[:6])


def test_knn_symmetric_is_union_and_row_standardised():
    xy = _points()
    directed = KNNWeights(6, symmetric=False, transform="B").build(xy).matrix
    w = KNNWeights(6, symmetric=True, transform="R").build(xy)
    union = (directed + directed.T) > 0
    assert ((w.matrix > 0) != union).nnz == 0
    np.testing.assert_allclose(np.asarray(w.matrix.sum(axis=1)).ravel(), 1.0, rtol=0, atol=1e-12)
    assert w.transform == "R" and w.n_isolated == 0
    assert w.notes()["weights_k"] == 6 and w.notes()["weights_symmetric"] is True


def test_moments_match_their_formulas():
    xy = _points(60)
    w = KNNWeights(4, symmetric=False).build(xy)
    d = w.matrix.toarray()
    assert w.s0 == pytest.approx(d.sum(), rel=1e-12)
    assert w.s1 == pytest.approx(0.5 * ((d + d.T) ** 2).sum(), rel=1e-12)
    assert w.s2 == pytest.approx(((d.sum(1) + d.sum(0)) ** 2).sum(), rel=1e-12)


def test_knn_with_duplicate_coordinates_still_excludes_self():
    xy = np.repeat(_points(20), 3, axis=0)  # each location three times
    w = KNNWeights(4, symmetric=False, transform="B").build(xy)
    assert w.matrix.diagonal().sum() == 0
    assert np.all(np.diff(w.matrix.indptr) == 4)


def test_knn_needs_k_plus_one_spots():
    with pytest.raises(ValueError, match="k \\+ 1 = 7"):
        KNNWeights(6).build(_points(6))
    KNNWeights(6).build(_points(7))  # the minimum works


def test_radius_and_isolated_spots():
    xy = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [50.0, 50.0]])
    w = RadiusWeights(1.0).build(xy)
    assert w.n_isolated == 1
    assert w.matrix[3].nnz == 0  # isolated row stays empty, no division by zero
    np.testing.assert_allclose(np.asarray(w.matrix.sum(axis=1)).ravel(), [1, 1, 1, 0])
    assert w.s0 == pytest.approx(3.0)


def test_hex_grid_interior_has_six_neighbours():
    rows, cols = np.meshgrid(np.arange(10), np.arange(0, 20, 2), indexing="ij")
    cols = cols + (rows % 2)  # Visium offset rows
    rc = np.stack([rows.ravel(), cols.ravel()], 1)
    w = GridWeights("hex", transform="B").build(rc)
    deg = np.diff(w.matrix.indptr)
    interior = (rc[:, 0] > 0) & (rc[:, 0] < 9) & (rc[:, 1] > 1) & (rc[:, 1] < 17)
    assert np.all(deg[interior] == 6)
    assert deg.max() == 6 and deg.min() >= 2
    assert (w.matrix != w.matrix.T).nnz == 0


def test_square_grid_rook_queen_and_rings():
    rc = np.stack(np.meshgrid(np.arange(5), np.arange(5), indexing="ij"), -1).reshape(-1, 2)
    centre = 12  # (2, 2)
    rook = GridWeights("square", transform="B").build(rc).matrix
    queen = GridWeights("square", queen=True, transform="B").build(rc).matrix
    two = GridWeights("square", rings=2, transform="B").build(rc).matrix
    assert rook[centre].nnz == 4 and queen[centre].nnz == 8
    assert two[centre].nnz == 12  # manhattan distance 1 or 2, self excluded
    assert two.diagonal().sum() == 0


def test_bad_parameters_name_the_parameter():
    with pytest.raises(ValueError, match="k must be"):
        KNNWeights(0)
    with pytest.raises(ValueError, match="transform"):
        KNNWeights(6, transform="Z")
    with pytest.raises(ValueError, match="radius"):
        RadiusWeights(-1)
    with pytest.raises(ValueError, match="layout"):
        GridWeights("tri")
    with pytest.raises(ValueError, match="duplicate"):
        GridWeights("square").build(np.array([[0, 0], [0, 0], [1, 1]]))
    with pytest.raises(ValueError, match="non-finite"):
        KNNWeights(1).build(np.array([[0.0, np.nan], [1, 1], [2, 2]]))
