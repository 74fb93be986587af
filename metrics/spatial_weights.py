"""Spatial weights for Moran's I: small builder objects that turn spot coordinates into a sparse W.

A builder holds only its parameters (validated in ``__init__``); ``build(coords)`` returns a
``SpatialWeights``: the (N, N) scipy.sparse CSR matrix after the requested transformation plus
the provenance (builder name, parameters, transformation, isolated-spot count) that must travel
with any Moran result, because binary and row-standardised weights give different I as soon as
degrees differ (symmetrised kNN, grid borders). No builder ever forms a dense N x N matrix.

Builders:
- ``KNNWeights(k=6, symmetric=True)``: k nearest neighbours by Euclidean distance, self excluded;
  ``symmetric`` takes the union A | A.T (FLAG spec section 5.4), otherwise directed (squidpy).
- ``RadiusWeights(radius)``: every other spot within ``radius`` (same units as the coordinates).
- ``GridWeights(layout="hex"|"square", rings=1, queen=False)``: neighbours on the integer
  array grid (Visium ``array_row``/``array_col``: hex, columns step by 2 within a row; legacy
  ST: square). Border spots simply have fewer neighbours.

Transformations: ``"R"`` row-standardises (rows of isolated spots stay all-zero, as in libpysal's
``Graph.transform("R")`` and squidpy), ``"B"`` keeps binary weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import scipy.sparse as sp

# scipy.sparse and scipy.spatial are imported where weights are built, not here: structure.py
# imports this module, and `flag-bench list` reads structure's outputs within its 0.5 s budget.

Transform = Literal["R", "B"]


@dataclass(frozen=True, eq=False)
class SpatialWeights:
    """A transformed sparse weights matrix and how it was made.

    matrix : scipy.sparse.csr_matrix (N, N) float64, zero diagonal
    s0, s1, s2 : the libpysal moments of ``matrix``:
        S0 = sum_ij w_ij; S1 = 1/2 sum_ij (w_ij + w_ji)^2; S2 = sum_i (sum_j w_ij + sum_j w_ji)^2
    """

    matrix: sp.csr_matrix
    builder: str
    params: dict[str, Any]
    transform: Transform
    n_isolated: int
    s0: float = field(init=False)
    s1: float = field(init=False)
    s2: float = field(init=False)

    def __post_init__(self) -> None:
        w = self.matrix
        sym = w + w.T
        object.__setattr__(self, "s0", float(w.sum()))
        object.__setattr__(self, "s1", float(0.5 * sym.multiply(sym).sum()))
        deg = np.asarray(w.sum(axis=1)).ravel() + np.asarray(w.sum(axis=0)).ravel()
        object.__setattr__(self, "s2", float((deg * deg).sum()))

    @property
    def n(self) -> int:
        return self.matrix.shape[0]

    def notes(self) -> dict[str, Any]:
        """Provenance to log next to any statistic computed with these weights."""
        return {
            "weights": self.builder,
            **{f"weights_{k}": v for k, v in self.params.items()},
            "weights_transform": self.transform,
            "weights_n_isolated": self.n_isolated,
            "weights_mean_degree": float(self.matrix.nnz / max(self.n, 1)),
        }


def _check_coords(coords: np.ndarray) -> np.ndarray:
    c = np.asarray(coords, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] < 1:
        raise ValueError(f"coordinates must be an (N, d) array, got shape {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError(f"coordinates contain {int((~np.isfinite(c)).sum())} non-finite values")
    return c


def _finish(adj: sp.spmatrix, transform: Transform, builder: str, params: dict) -> SpatialWeights:
    """Binary adjacency (any sparse, zero diagonal) -> transformed SpatialWeights."""
    import scipy.sparse as sp

    transform = _validate_transform(transform)
    a = sp.csr_matrix(adj, dtype=np.float64)
    a.setdiag(0.0)
    a.eliminate_zeros()
    a.data[:] = 1.0
    a.sort_indices()
    deg = np.diff(a.indptr)
    n_iso = int((deg == 0).sum())
    if transform == "R":
        # isolated rows have no stored entries, so dividing only stored values leaves them zero
        a.data /= np.repeat(deg, deg).astype(np.float64)
    return SpatialWeights(a, builder, dict(params), transform, n_iso)


def _validate_transform(transform: str) -> Transform:
    t = str(transform).upper()
    if t not in ("R", "B"):
        raise ValueError(f"transform must be 'R' (row-standardised) or 'B' (binary), got {transform!r}")
    return t  # type: ignore[return-value]


class KNNWeights:
    """k nearest neighbours (self excluded), binary, optionally symmetrised, then transformed."""

    name = "knn"

    def __init__(self, k: int = 6, *, symmetric: bool = True, transform: str = "R"):
        if int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self.k = int(k)
        self.symmetric = bool(symmetric)
        self.transform = _validate_transform(transform)

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "symmetric": self.symmetric}

    def build(self, coords: np.ndarray) -> SpatialWeights:
        """coords (N, d) -> SpatialWeights; needs N >= k + 1 (ValueError otherwise)."""
        c = _check_coords(coords)
        n, k = c.shape[0], self.k
        if n < k + 1:
            raise ValueError(f"kNN weights need at least k + 1 = {k + 1} spots, the slide has {n}")
        import scipy.sparse as sp
        from scipy.spatial import cKDTree

        _, idx = cKDTree(c).query(c, k=k + 1)
        idx = np.asarray(idx).reshape(n, k + 1)
        # with duplicate coordinates self need not come first, so drop it by identity, and where
        # it was not returned at all drop the farthest candidate instead
        keep = idx != np.arange(n)[:, None]
        no_self = keep.all(axis=1)
        keep[no_self, -1] = False
        cols = idx[keep].reshape(n, k)
        rows = np.repeat(np.arange(n), k)
        a = sp.csr_matrix((np.ones(n * k), (rows, cols.ravel())), shape=(n, n))
        if self.symmetric:
            a = a.maximum(a.T)
        return _finish(a, self.transform, self.name, self.params())


class RadiusWeights:
    """All other spots within ``radius`` (inclusive), binary, then transformed."""

    name = "radius"

    def __init__(self, radius: float, *, transform: str = "R"):
        if not np.isfinite(radius) or radius <= 0:
            raise ValueError(f"radius must be a positive finite number, got {radius!r}")
        self.radius = float(radius)
        self.transform = _validate_transform(transform)

    def params(self) -> dict[str, Any]:
        return {"radius": self.radius}

    def build(self, coords: np.ndarray) -> SpatialWeights:
        """coords (N, d) -> SpatialWeights (spots with nobody in range are isolated)."""
        c = _check_coords(coords)
        n = c.shape[0]
        import scipy.sparse as sp
        from scipy.spatial import cKDTree

        pairs = cKDTree(c).query_pairs(self.radius, output_type="ndarray")
        i, j = pairs[:, 0], pairs[:, 1]
        a = sp.csr_matrix(
            (np.ones(2 * len(pairs)), (np.concatenate([i, j]), np.concatenate([j, i]))), shape=(n, n)
        )
        return _finish(a, self.transform, self.name, self.params())


_HEX_STEPS = np.array([(0, 2), (0, -2), (1, 1), (1, -1), (-1, 1), (-1, -1)])
_ROOK_STEPS = np.array([(0, 1), (0, -1), (1, 0), (-1, 0)])
_QUEEN_STEPS = np.concatenate([_ROOK_STEPS, np.array([(1, 1), (1, -1), (-1, 1), (-1, -1)])])


class GridWeights:
    """Neighbours on an integer array grid (row, col), ``rings`` steps out, binary, transformed.

    ``layout="hex"``: Visium convention, a spot at (r, c) touches (r, c+-2) and (r+-1, c+-1).
    ``layout="square"``: 4 neighbours (rook), or 8 with ``queen=True``.
    """

    name = "grid"

    def __init__(self, layout: str = "hex", *, rings: int = 1, queen: bool = False, transform: str = "R"):
        if layout not in ("hex", "square"):
            raise ValueError(f"layout must be 'hex' or 'square', got {layout!r}")
        if int(rings) != rings or rings < 1:
            raise ValueError(f"rings must be a positive integer, got {rings!r}")
        self.layout = layout
        self.rings = int(rings)
        self.queen = bool(queen)
        self.transform = _validate_transform(transform)

    def params(self) -> dict[str, Any]:
        return {"layout": self.layout, "rings": self.rings, "queen": self.queen}

    def build(self, array_coords: np.ndarray) -> SpatialWeights:
        """array_coords (N, 2) integer (row, col) -> SpatialWeights."""
        import scipy.sparse as sp

        rc = np.asarray(array_coords)
        if rc.ndim != 2 or rc.shape[1] != 2:
            raise ValueError(f"array coordinates must be (N, 2) (row, col), got shape {rc.shape}")
        if not np.all(np.isfinite(rc)) or not np.array_equal(rc, np.round(rc)):
            raise ValueError("array coordinates must be integers (row, col)")
        rc = rc.astype(np.int64)
        n = rc.shape[0]
        steps = _HEX_STEPS if self.layout == "hex" else (_QUEEN_STEPS if self.queen else _ROOK_STEPS)
        lo = rc.min(axis=0) - 2
        span = rc.max(axis=0) + 2 - lo + 1
        key = (rc[:, 0] - lo[0]) * span[1] + (rc[:, 1] - lo[1])
        order = np.argsort(key, kind="stable")
        skey = key[order]
        if n and np.any(skey[1:] == skey[:-1]):
            raise ValueError("array coordinates contain duplicate (row, col) positions")
        rows_l, cols_l = [], []
        for dr, dc in steps:
            nb = (rc[:, 0] + dr - lo[0]) * span[1] + (rc[:, 1] + dc - lo[1])
            pos = np.searchsorted(skey, nb)
            pos_c = np.minimum(pos, max(n - 1, 0))
            hit = (pos < n) & (skey[pos_c] == nb)
            rows_l.append(np.nonzero(hit)[0])
            cols_l.append(order[pos_c[hit]])
        rows = np.concatenate(rows_l) if rows_l else np.zeros(0, int)
        cols = np.concatenate(cols_l) if cols_l else np.zeros(0, int)
        a1 = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
        a = a1.copy()
        frontier = a1.copy()
        for _ in range(self.rings - 1):
            # walk one more ring: anything reachable in one more step
            frontier = frontier @ a1
            frontier.data[:] = 1.0
            a = a.maximum(frontier)
        return _finish(a, self.transform, self.name, self.params())
