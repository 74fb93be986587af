"""STFlow's denoiser: a local spatial Transformer over the k nearest spots of each spot.

Everything runs on the *packed* real spots of a batch (``padded[mask]``): padded rows are dropped
before the first layer, so they never enter the neighbour graph, the frames or the attention (the
official code finds padding from summed features *after* the time embedding was added, so its
zero-padded "ghost spots" join real spots' neighbourhoods; this is the fix).

Pieces, after the official ``model/{denoiser,transformer,fa}.py`` (read, not copied):

* :func:`neighbour_graph` — k nearest spots of each spot within its own item, self excluded, by a
  KD-tree per item (never an N x N matrix). Items with fewer than k + 1 spots get masked slots.
* :func:`frame_inputs` — frame averaging: the k relative vectors of a spot are centred, projected
  on the 4 sign-flipped eigenbases of their 2 x 2 covariance, and the norm ``|r_ij|`` appended;
  an edge MLP applied per frame and averaged over frames is E(2)-invariant.
* :class:`Block` — attention whose logits come from an MLP over ``[q_i, k_j, e_ij, x_j - x_i]``
  (x: the current expression estimate, all G genes), a message from ``[sum a v, sum a e]``, a
  feed-forward, and a per-layer gene read-out.
* :class:`Denoiser` — image projection + sinusoidal time embedding, the blocks, and the mean of the
  per-layer read-outs as the prediction of clean expression x1.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

N_FRAMES = 4  # sign flips of the two eigenvectors of a 2-D covariance
SIGNS = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])


class FeedForward(nn.Module):
    """fc1 -> activation -> dropout -> LayerNorm(hidden) -> fc2 -> dropout (timm's ``Mlp`` /
    ``SwiGLUPacked`` with ``norm_layer``). ``swiglu`` splits fc1's output in two halves,
    silu(first) * second, as the packed SwiGLU does."""

    def __init__(self, d_in: int, hidden: int, d_out: int, activation: str, drop: float):
        super().__init__()
        self.glu = activation == "swiglu"
        inner = hidden // 2 if self.glu else hidden
        self.fc1 = nn.Linear(d_in, hidden if not self.glu else 2 * inner)
        self.act = {"gelu": nn.GELU(), "silu": nn.SiLU(), "relu": nn.ReLU(), "swiglu": nn.SiLU()}[activation]
        self.norm, self.fc2 = nn.LayerNorm(inner), nn.Linear(inner, d_out)
        self.drop = nn.Dropout(drop)

    def from_pre(self, pre: torch.Tensor) -> torch.Tensor:
        """The rest of the MLP given fc1's output (lets callers build fc1's input in parts)."""
        if self.glu:
            a, b = pre.chunk(2, dim=-1)
            h = self.act(a) * b
        else:
            h = self.act(pre)
        return self.drop(self.fc2(self.norm(self.drop(h))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_pre(self.fc1(x))


def neighbour_graph(coords: np.ndarray, item: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """coords (M, 2) of packed spots, item (M,) their item index (sorted) -> (idx (M, k) long,
    valid (M, k) bool). Neighbours are found within the same item only, self excluded; a slot
    with no neighbour points at the spot itself and is invalid."""
    from scipy.spatial import cKDTree

    m = len(coords)
    idx = np.repeat(np.arange(m)[:, None], k, axis=1)
    valid = np.zeros((m, k), dtype=bool)
    bounds = np.flatnonzero(np.diff(np.r_[-1, item, -2])) if m else np.zeros(1, int)
    for a, b in zip(bounds[:-1], bounds[1:]):
        n = b - a
        kk = min(k, n - 1)
        if kk < 1:
            continue
        _, nb = cKDTree(coords[a:b]).query(coords[a:b], k=kk + 1)
        nb = nb.reshape(n, kk + 1)
        # drop self; where duplicate coordinates put self elsewhere than first, drop the farthest
        not_self = nb != np.arange(n)[:, None]
        no_self = not_self.all(axis=1)
        not_self[no_self, -1] = False
        order = np.argsort(~not_self, axis=1, kind="stable")[:, :kk]
        idx[a:b, :kk] = np.take_along_axis(nb, order, axis=1) + a
        valid[a:b, :kk] = True
    return torch.as_tensor(idx), torch.as_tensor(valid)


@torch.no_grad()
def frame_inputs(rel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """rel (M, k, 2) relative coordinates r_ij = c_j - c_i, valid (M, k) -> (M, 4, k, 3): the
    centred vectors in each of the 4 frames, then |r_ij|. Zero on invalid slots. Computed in
    float32 outside autocast (eigh has no half-precision kernel); eigenvectors carry no gradient,
    as in the official code."""
    with torch.autocast(rel.device.type, enabled=False):
        return _frame_inputs(rel.float(), valid)


def _frame_inputs(rel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    w = valid.unsqueeze(-1).float()
    centre = (rel * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
    xc = (rel - centre) * w
    cov = xc.transpose(1, 2) @ xc  # (M, 2, 2)
    _, vecs = torch.linalg.eigh(cov)
    frames = SIGNS.to(rel.device)[None, :, None, :] * vecs[:, None]  # (M, 4, 2, 2): column j times sign j
    proj = torch.einsum("mkd,mfde->mfke", xc, frames)
    norm = rel.norm(dim=-1, keepdim=True).mul(w).unsqueeze(1).expand(-1, N_FRAMES, -1, -1)
    return torch.cat([proj, norm], dim=-1) * w.unsqueeze(1)


class EdgeAttention(nn.Module):
    """Local attention of one layer over the k neighbours, with FA edge features and expression
    differences in the logits."""

    def __init__(self, d: int, d_edge: int, n_genes: int, heads: int, activation: str, drop: float,
                 attn_drop: float):
        super().__init__()
        self.h, self.dh, self.de = heads, d // heads, d_edge // heads
        self.qkv = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 3 * d))
        self.edge = FeedForward(3, d_edge, d_edge, activation, drop)
        # logits MLP over [q_i, k_j, e_ij, x_j - x_i]: one fc1 (the same parameters as on the
        # concatenation), applied in parts so the (M, k, heads, G) difference tensor is never built
        self.att = FeedForward(2 * self.dh + self.de + n_genes, d, 1, activation, drop)
        self.out = FeedForward(d + d_edge, d, d, activation, drop)
        self.attn_drop = nn.Dropout(attn_drop)

    def _logits(self, q, k, e, x, idx) -> torch.Tensor:
        w, b = self.att.fc1.weight, self.att.fc1.bias
        dh, de = self.dh, self.de
        wq, wk, we, wx = w[:, :dh], w[:, dh:2 * dh], w[:, 2 * dh:2 * dh + de], w[:, 2 * dh + de:]
        px = x @ wx.t()  # (M, H): the gene-difference part, shared by the heads
        pre = ((q @ wq.t()).unsqueeze(1) + (k @ wk.t())[idx] + e @ we.t()
               + (px[idx] - px.unsqueeze(1)).unsqueeze(2) + b)
        return self.att.from_pre(pre).squeeze(-1)  # (M, k, heads)

    def forward(self, x, h, fa, idx, valid) -> torch.Tensor:
        m, kn = idx.shape
        q, k, v = (t.reshape(m, self.h, self.dh) for t in self.qkv(h).chunk(3, dim=-1))
        e = self.edge(fa).mean(dim=1).reshape(m, kn, self.h, self.de)  # frame average
        logits = self._logits(q, k, e, x, idx).float().masked_fill(~valid.unsqueeze(-1), -math.inf)
        # a spot without neighbours (an item of one spot) gets an all-zero attention row, not NaN
        a = torch.softmax(logits, dim=1).nan_to_num(0.0) * valid.unsqueeze(-1)
        a = self.attn_drop(a).to(v.dtype)
        ctx = torch.einsum("mkh,mkhd->mhd", a, v[idx]).reshape(m, -1)
        ectx = torch.einsum("mkh,mkhd->mhd", a, e.to(v.dtype)).reshape(m, -1)
        return self.out(torch.cat([ctx, ectx], dim=-1))


class Block(nn.Module):
    def __init__(self, d: int, d_edge: int, n_genes: int, heads: int, activation: str, drop: float,
                 attn_drop: float, mlp_ratio: float, non_negative: bool):
        super().__init__()
        self.attn = EdgeAttention(d, d_edge, n_genes, heads, activation, drop, attn_drop)
        self.mlp = FeedForward(d, int(d * mlp_ratio), d, activation, drop)
        # the read-out ends in dropout on the predicted expression itself, as upstream
        self.readout = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Dropout(drop),
                                     nn.Linear(d, n_genes), nn.Dropout(drop))
        self.non_negative = non_negative

    def forward(self, x, h, fa, idx, valid):
        h = h + self.attn(x, h, fa, idx, valid)
        h = h + self.mlp(h)
        x = self.readout(h)
        return (F.relu(x) if self.non_negative else x), h


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1], unscaled (as the official code: with max period 1e4 most
    channels barely move over [0, 1]; kept for fidelity)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Denoiser(nn.Module):
    """(x_t, image features, coordinates, t, mask) of a padded batch -> x1 prediction, zero on
    padded rows. ``graph`` may be passed in when the same spots are denoised repeatedly (sampling)."""

    def __init__(self, feat_dim: int, n_genes: int, d: int, d_edge: int, n_layers: int, heads: int, k: int,
                 activation: str, drop: float, attn_drop: float, mlp_ratio: float, non_negative: bool):
        super().__init__()
        if d % heads or d_edge % heads:
            raise ValueError(f"hidden ({d}) and edge ({d_edge}) widths must be multiples of heads ({heads})")
        self.k = k
        self.image = nn.Linear(feat_dim, d)
        self.time = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(Block(d, d_edge, n_genes, heads, activation, drop, attn_drop, mlp_ratio,
                                          non_negative) for _ in range(n_layers))

    def graph(self, coords: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """-> (idx, valid, frame inputs) on the packed real spots of the batch."""
        item = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)[mask]
        c = coords[mask].float()
        idx, valid = neighbour_graph(c.detach().cpu().double().numpy(), item.cpu().numpy(), self.k)
        idx, valid = idx.to(c.device), valid.to(c.device)
        return idx, valid, frame_inputs(c[idx] - c.unsqueeze(1), valid)

    def forward(self, x_t, feats, coords, t, mask, graph=None) -> torch.Tensor:
        idx, valid, fa = graph if graph is not None else self.graph(coords, mask)
        item = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)[mask]
        h = self.image(feats[mask]) + self.time(timestep_embedding(t))[item]
        x = x_t[mask]
        fa = fa.to(h.dtype)
        reads = []
        for blk in self.blocks:
            x, h = blk(x, h, fa, idx, valid)
            reads.append(x.float())
        out = x_t.new_zeros(x_t.shape, dtype=torch.float32)
        out[mask] = torch.stack(reads).mean(dim=0)  # the read-outs of all layers, averaged
        return out
