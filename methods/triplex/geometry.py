"""Spot-grid geometry for TRIPLEX: the grid inferred from µm coordinates (APEG, neighbourhoods,
target smoothing), the 5x5 neighbourhood with its mask, and the 3x3 smoothing of targets.

The harness hands methods µm centres, not array indices, so the grid is inferred: per axis, the
step is the median over spots of the smallest clear offset to a near neighbour along that axis
(square legacy-ST lattices get the spot pitch on both axes, Visium's hexagonal lattice gets half
the pitch along x and sqrt(3)/2 of it along y, so no two spots share a cell on a clean lattice).
Rounding a jittered or rotated array can still put two spots in one cell; those merges are
counted (``Grid.collisions``) and recorded, never hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np

from flag_bench.errors import UserError


@dataclass(frozen=True)
class Grid:
    index: np.ndarray  # (n, 2) int64 (col, row) from 0
    shape: tuple[int, int]  # (H rows, W cols)
    step_um: tuple[float, float]  # (x, y)
    cell_row: np.ndarray  # (n,) row of each spot in the occupied-cell table
    cells: np.ndarray  # (n_cells,) flat ids (row * W + col) of the occupied cells, sorted

    @property
    def collisions(self) -> int:
        """Spots that share a cell with an earlier spot (merged by the rounding)."""
        return int(len(self.index) - len(self.cells))


def _pitch_and_steps(c: np.ndarray) -> tuple[float, float, float]:
    from scipy.spatial import cKDTree

    k = min(len(c), 9)
    d, nb = cKDTree(c).query(c, k=k)
    pitch = float(np.median(d[:, 1])) or 1.0
    steps = []
    for axis in (0, 1):
        off = np.abs(c[nb[:, 1:], axis] - c[:, None, axis])
        # an offset below a quarter pitch is jitter along a row or column, not a lattice step
        off = np.where(off > 0.25 * pitch, off, np.inf).min(axis=1)
        off = off[np.isfinite(off)]
        steps.append(float(np.median(off)) if off.size else pitch)
    return pitch, steps[0], steps[1]


def infer_grid(coords_um: np.ndarray, step_um: float | None = None, max_cells: int = 4_000_000) -> Grid:
    """(n, 2) µm centres -> the grid; ``step_um`` forces one square step on both axes."""
    c = np.asarray(coords_um, dtype=np.float64)
    if len(c) == 0:
        return Grid(np.zeros((0, 2), np.int64), (1, 1), (1.0, 1.0), np.zeros(0, np.int64), np.zeros(0, np.int64))
    if step_um is not None:
        sx = sy = float(step_um)
    elif len(c) < 2:
        sx = sy = 1.0
    else:
        _, sx, sy = _pitch_and_steps(c)
    index = np.rint((c - c.min(axis=0)) / np.array([sx, sy])).astype(np.int64)
    h, w = int(index[:, 1].max()) + 1, int(index[:, 0].max()) + 1
    if h * w > max_cells:
        raise UserError(f"method 'triplex': the inferred spot grid is {h} x {w} cells (step {sx:.4g} x {sy:.4g} um), "
                        f"above max_grid_cells={max_cells}; set [methods.triplex] grid_step_um to the spot pitch")
    cells, cell_row = np.unique(index[:, 1] * w + index[:, 0], return_inverse=True)
    return Grid(index, (h, w), (sx, sy), cell_row.astype(np.int64), cells)


def cell_means(grid: Grid, values: np.ndarray) -> np.ndarray:
    """(n, F) per-spot values -> (n_cells, F) mean over the spots of each occupied cell."""
    v = np.asarray(values, dtype=np.float64)
    out = np.zeros((len(grid.cells), v.shape[1]))
    np.add.at(out, grid.cell_row, v)
    counts = np.bincount(grid.cell_row, minlength=len(grid.cells))
    return (out / np.maximum(counts, 1)[:, None]).astype(np.float32)


def neighbourhood(grid: Grid, radius: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """-> (rows (n, (2r+1)^2) int64 into the cell table, mask (n, (2r+1)^2) bool).

    Positions are the (2r+1) x (2r+1) cells around each spot's cell, row-major (rows follow y),
    the centre being the spot's own cell. A position off the grid or on an empty cell (outside
    the tissue, or a gap in it) is masked and points at row 0 (its feature is never attended).
    """
    h, w = grid.shape
    table = np.full(h * w, -1, dtype=np.int64)
    table[grid.cells] = np.arange(len(grid.cells))
    off = np.arange(-radius, radius + 1)
    dr, dc = np.meshgrid(off, off, indexing="ij")
    rows = grid.index[:, 1:2] + dr.ravel()[None]
    cols = grid.index[:, 0:1] + dc.ravel()[None]
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    found = np.where(inside, table[np.clip(rows, 0, h - 1) * w + np.clip(cols, 0, w - 1)], -1)
    mask = found >= 0
    return np.where(mask, found, 0), mask


def smooth_targets(grid: Grid, y: np.ndarray) -> np.ndarray:
    """Each spot -> the mean of the spots in its 3x3 block of cells, itself included (the
    official legacy-ST target smoothing, array row and column within one)."""
    h, w = grid.shape
    g = y.shape[1]
    sums = np.zeros((h + 2, w + 2, g))
    counts = np.zeros((h + 2, w + 2))
    r, c = grid.index[:, 1] + 1, grid.index[:, 0] + 1
    np.add.at(sums, (r, c), np.asarray(y, dtype=np.float64))
    np.add.at(counts, (r, c), 1.0)
    # cast: sum() of no arrays would be 0; there are always nine here
    box_s = cast(np.ndarray, sum(sums[1 + a:h + 1 + a, 1 + b:w + 1 + b] for a in (-1, 0, 1) for b in (-1, 0, 1)))
    box_n = cast(np.ndarray, sum(counts[1 + a:h + 1 + a, 1 + b:w + 1 + b] for a in (-1, 0, 1) for b in (-1, 0, 1)))
    return (box_s[r - 1, c - 1] / box_n[r - 1, c - 1, None]).astype(np.float32)


def on_slide(coords_um: np.ndarray, points_um: np.ndarray, reach_um: float) -> np.ndarray:
    """(m,) bool: points within ``reach_um`` of some spot centre (the tissue the slide covers)."""
    from scipy.spatial import cKDTree

    if len(coords_um) == 0:
        return np.zeros(len(points_um), bool)
    d, _ = cKDTree(np.asarray(coords_um, dtype=np.float64)).query(np.asarray(points_um, dtype=np.float64))
    return d <= reach_um
