"""What TRIPLEX reads from a slide, packed once per fit or prediction: the target tiles, frozen
features of every spot (global stream), the neighbourhood features with their mask, the inferred
grid, and the training targets in the configured normalisation.

Frozen features come from the harness's embedding cache: the run's embeddings, a named encoder
(``slide.image.embeddings``), or the Ciga ResNet-18 wrapped as an encoder (its cache key holds
the weights' hash). Neighbourhood features come either from the spot grid (the 5x5 cells around
the spot; cheap, reuses the cached per-spot features) or from 5x5 tiles cut out of
``slide.image.region`` and encoded (the official geometry; no cache, 25 encodings per spot).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from flag_bench.datasets.base import median_spacing
from flag_bench.errors import UserError
from flag_bench.methods.common.images import tiles_to_tensor
from flag_bench.methods.triplex import geometry


@dataclass
class Bank:
    tiles: torch.Tensor  # (N, 3, px, px) uint8
    feats: torch.Tensor  # (N, F) normalised frozen features (global stream)
    table: torch.Tensor  # (M, F) neighbourhood feature rows
    rows: torch.Tensor  # (N, K) long rows of ``table``
    mask: torch.Tensor  # (N, K) bool, False = off-slide / empty position
    slides: list[tuple[int, int, torch.Tensor, tuple[int, int]]]  # (start, n, flat cell (n,), grid shape)
    targets: torch.Tensor | None = None  # (N, G)
    info: list[dict] = field(default_factory=list)


def panel_counts(slide) -> np.ndarray:
    c = slide.counts
    return np.asarray(c.toarray() if hasattr(c, "toarray") else c, dtype=np.float64)


def normalise_targets(slide, how: str) -> np.ndarray:
    """The official code versions' targets, library size over the panel genes only (they subset
    the genes before normalising): scprep median library size + log10(1+x) (CVPR code) or
    normalize_total(1e4) + ln(1+x) (new code); ``harness``: the fold's targets unchanged."""
    if how == "harness":
        return np.asarray(slide.targets, dtype=np.float32)
    x = panel_counts(slide)
    lib = np.maximum(x.sum(axis=1, keepdims=True), 1.0)
    if how == "scprep_panel_log10":
        return np.log10(1.0 + x / lib * np.median(lib)).astype(np.float32)
    return np.log1p(x / lib * 1e4).astype(np.float32)


def region_tiles(slide, radius: int, patch_um: float, px: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (tiles (n * K, px, px, 3) uint8 in spot-major, row-major order; on-slide mask (n, K))."""
    k = 2 * radius + 1
    img = slide.image
    out = np.empty((slide.n_spots, k, k, px, px, 3), dtype=np.uint8)
    for i in range(slide.n_spots):
        reg = img.region(i, k * patch_um, k * px)
        out[i] = reg.reshape(k, px, k, px, 3).transpose(0, 2, 1, 3, 4)
    off = (np.arange(k) - radius) * patch_um
    dy, dx = np.meshgrid(off, off, indexing="ij")  # rows follow y, as region()
    centres = slide.coords_um[:, None, :] + np.stack([dx.ravel(), dy.ravel()], axis=1)[None]
    pitch = _pitch(slide.coords_um)
    # a tile is off the slide when no spot lies within one spot pitch of its centre
    mask = geometry.on_slide(slide.coords_um, centres.reshape(-1, 2), pitch).reshape(slide.n_spots, k * k)
    mask[:, (k * k) // 2] = True
    return out.reshape(-1, px, px, 3), mask


def _pitch(coords: np.ndarray) -> float:
    if len(coords) < 2:
        return 1.0
    return median_spacing(coords) or 1.0


def check_images(data) -> None:
    for s in data.slides:
        if s.image is None:
            raise UserError(f"method 'triplex' needs image tiles but slide {s.slide_id} has none; "
                            "use a dataset with images")


def stack_bank(parts: list[dict], targets: list[np.ndarray] | None) -> Bank:
    """Concatenate per-slide parts (tiles, feats, table, rows, mask, grid, info) into one Bank."""
    start, row0, slides = 0, 0, []
    for p in parts:
        n = len(p["feats"])
        slides.append((start, n, torch.as_tensor(p["grid"].index[:, 1] * p["grid"].shape[1] + p["grid"].index[:, 0]),
                       p["grid"].shape))
        p["rows_g"] = torch.as_tensor(p["rows"]) + row0
        start, row0 = start + n, row0 + len(p["table"])
    cat = lambda key: torch.cat([torch.as_tensor(p[key]) for p in parts])  # noqa: E731
    y = None if targets is None else torch.as_tensor(np.concatenate(targets))
    return Bank(tiles=torch.cat([tiles_to_tensor(p["tiles"]) for p in parts]), feats=cat("feats"),
                table=cat("table"), rows=torch.cat([p["rows_g"] for p in parts]), mask=cat("mask"),
                slides=slides, targets=y, info=[p["info"] for p in parts])
