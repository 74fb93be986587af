"""Window batches with pad-and-mask collation.

A slide is prepared once as a :class:`WindowedSlide`: per-spot tensors (targets, conditions, any
per-spot extra), its windows (``common.windows``) and optional per-window pair tensors (edge
features). A batch is a list of picks ``(slide, window)``; :func:`collate` pads every window to
the longest one and returns a :class:`WindowBatch` with a validity mask. Spot-wise methods use
one-spot windows and get (B, 1, ...) batches from the same code.

Per-spot fields come back either padded, (B, N, ...), or packed, (M, ...) with the M valid spots
in mask order (``padded[mask]`` order); packing keeps large per-spot targets (e.g. FLAG's
(G, D) gene embeddings) out of the padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, cast

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class WindowedSlide:
    spots: dict[str, torch.Tensor]  # name -> (n_spots, ...) per-spot tensor
    windows: list[np.ndarray]  # spot indices of each window
    pairs: list[torch.Tensor | None] | None = None  # per window (n_w, n_w, C), or None


@dataclass
class WindowBatch:
    mask: torch.Tensor  # (B, N) bool
    padded: dict[str, torch.Tensor]  # name -> (B, N, ...)
    pairs: torch.Tensor | None = None  # (B, N, N, C), zero on padded pairs
    packed: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (M, ...)
    where: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (slide, spot indices) per window

    def repeat(self, k: int) -> "WindowBatch":
        """Each window repeated k times along the batch axis (k samples at once); packed fields
        and ``where`` are dropped because they no longer line up with the batch."""
        def rep(x):
            return None if x is None else x.repeat_interleave(k, dim=0)

        return WindowBatch(rep(self.mask), {n: rep(v) for n, v in self.padded.items()}, rep(self.pairs))


def pad_stack(tensors: Sequence[torch.Tensor], n: int) -> torch.Tensor:
    """Pad each (n_i, ...) tensor to (n, ...) on dim 0 and stack -> (B, n, ...)."""
    return torch.stack([F.pad(x, (0, 0) * (x.dim() - 1) + (0, n - x.shape[0])) for x in tensors])


def pad_pairs(tensors: Sequence[torch.Tensor], n: int) -> torch.Tensor:
    """Pad (n_i, n_i, C) tensors to (n, n, C) and stack -> (B, n, n, C)."""
    return torch.stack([F.pad(x, (0, 0, 0, n - x.shape[1], 0, n - x.shape[0])) for x in tensors])


def all_picks(slides: Sequence[WindowedSlide]) -> list[tuple[int, int]]:
    """Every (slide, window) pair, slide-major."""
    return [(i, w) for i, sl in enumerate(slides) for w in range(len(sl.windows))]


def collate(slides: Sequence[WindowedSlide], picks: Sequence[tuple[int, int]], device,
            padded: Sequence[str], packed: Sequence[str] = ()) -> WindowBatch:
    """picks = [(slide, window)] -> batch with the named per-spot fields padded or packed.

    A named field that the slides do not carry (absent or None) is left out of the batch.
    """
    idx = [slides[s].windows[w] for s, w in picks]
    n = max(len(i) for i in idx)
    mask = torch.zeros(len(picks), n, dtype=torch.bool)
    for b, i in enumerate(idx):
        mask[b, : len(i)] = True
    first = slides[picks[0][0]]

    def has(name):
        return first.spots.get(name) is not None

    out = {name: pad_stack([slides[s].spots[name][i] for (s, _), i in zip(picks, idx)], n).to(device)
           for name in padded if has(name)}
    pairs = None
    if first.pairs is not None and first.pairs[picks[0][1]] is not None:
        # cast: windowed together, every slide carries pairs when the first one does
        pairs = pad_pairs([cast("list[torch.Tensor]", slides[s].pairs)[w] for s, w in picks], n).to(device)
    pack = {name: torch.cat([slides[s].spots[name][i] for (s, _), i in zip(picks, idx)]).to(device)
            for name in packed if has(name)}
    return WindowBatch(mask.to(device), out, pairs, pack, [(s, i) for (s, _), i in zip(picks, idx)])


def scatter_windows(values: np.ndarray, where: Sequence[tuple[int, np.ndarray]], out: list[np.ndarray]) -> None:
    """Write window rows ``values`` (B, N, ...) back to per-slide arrays ``out[slide][spot]``."""
    for b, (s, idx) in enumerate(where):
        out[s][idx] = values[b, : len(idx)]
