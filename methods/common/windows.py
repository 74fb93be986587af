"""Groups of spots that a model sees together ("windows"), and the pair mask of a padded window.

A window is an int64 array of spot indices into one slide. Three layouts cover the methods we
have and the ones planned: square tiles of the slide (FLAG; TRIPLEX/STFlow-style neighbourhoods),
one spot per window (spot-wise models), and the whole slide as one window (HisToGene). Every
layout puts each spot in exactly one window, so predictions scatter back without overlap.
"""

from __future__ import annotations

import numpy as np
import torch


def pair_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, N) bool -> (B, N, N) bool: both ends valid and i != j."""
    m = mask.bool()
    eye = torch.eye(m.shape[1], dtype=torch.bool, device=m.device)
    return m[:, :, None] & m[:, None, :] & ~eye


def single_spot_windows(n_spots: int) -> list[np.ndarray]:
    """Every spot its own window (models without spatial context)."""
    return [np.array([i]) for i in range(n_spots)]


def whole_slide_window(n_spots: int) -> list[np.ndarray]:
    """All spots of the slide in one window (models that attend over the whole slide)."""
    return [np.arange(n_spots, dtype=np.int64)] if n_spots else []


def _sort_in_window(coords: np.ndarray, idx: np.ndarray, size: float) -> np.ndarray:
    # FLAG's reference orders a window's spots by x·window + y (x-major); kept so windows match it
    key = coords[idx, 0] * size + coords[idx, 1]
    return idx[np.argsort(key, kind="stable")]


def _split(coords: np.ndarray, idx: np.ndarray, max_spots: int) -> list[np.ndarray]:
    """Bisect along the longer side at the median until every part has ≤ max_spots spots."""
    if len(idx) <= max_spots:
        return [idx]
    pts = coords[idx]
    axis = int(np.ptp(pts[:, 1]) > np.ptp(pts[:, 0]))
    order = np.lexsort((pts[:, 1 - axis], pts[:, axis]))  # ties broken by the other axis
    half = len(idx) // 2
    return _split(coords, idx[order[:half]], max_spots) + _split(coords, idx[order[half:]], max_spots)


def _check_coords(c: np.ndarray, size_um: float, max_spots: int | None) -> None:
    if c.ndim != 2 or c.shape[1] != 2:
        raise ValueError(f"coords must be (N, 2), got {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("coords contain NaN or inf")
    if size_um <= 0:
        raise ValueError(f"size_um must be > 0, got {size_um}")
    if max_spots is not None and max_spots < 1:
        raise ValueError(f"max_spots must be >= 1, got {max_spots}")


def windows(coords_um, size_um: float, max_spots: int | None = None) -> list[np.ndarray]:
    """Non-overlapping square tiles of side ``size_um`` on a grid anchored at 0, x-major tile
    order, empty tiles skipped, spots sorted inside a tile by x·size + y. Every spot lands in
    exactly one window.

    coords_um : (N, 2) µm. max_spots : if set, tiles with more spots are split by recursive
    median bisection (deterministic), which bounds the O(N²) attention memory on dense slides.
    Returns a list of int64 index arrays into ``coords_um``.
    """
    c = np.asarray(coords_um, dtype=np.float64)
    _check_coords(c, size_um, max_spots)
    if len(c) == 0:
        return []
    tile = np.floor(c / size_um).astype(np.int64)
    order = np.lexsort((tile[:, 1], tile[:, 0]))
    keys = tile[order]
    starts = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)])
    out: list[np.ndarray] = []
    for idx in np.split(order, starts[1:]):
        parts = [idx] if max_spots is None else _split(c, np.sort(idx), max_spots)
        out.extend(_sort_in_window(c, p, size_um).astype(np.int64) for p in parts)
    return out
