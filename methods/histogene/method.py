"""HisToGene (Pang, Su, Li; bioRxiv 2021): a ViT whose tokens are all the spots of a slide.

Token = Linear(flattened raw patch) + learned x and y embeddings of the spot's grid position;
pre-norm Transformer (no CLS token); LayerNorm + Linear head per token; MSE on every spot; Adam
at the tutorial's 1e-5 (the class default in ``vis_model.py`` is 1e-4) for a fixed number of
epochs, one slide per step, last weights kept.

The harness hands methods micrometre coordinates, not array indices, so grid positions are the
slide's coordinates minus their minimum, divided by the spot pitch (the median nearest-neighbour
distance, or ``grid_step_um``) and rounded. The position table has the official 64 rows
(``min_pos``), more when the training slides reach further (a test slide may be larger than every
training slide: her2st-mini's B4 reaches position 25 where patient C's sections stop at 22), and a
slide reaching beyond it is a one-line error naming the fix (``n_pos``). Memory guard:
a slide with more than ``max_seq_len`` spots is cut by recursive median bisection into spatially
contiguous windows (``common.windows``), each spot in exactly one window; positions stay
slide-level. Departures from the official code are config switches listed in
``summary["deviations"]``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from flag_bench.datasets.base import PatchSpec, median_spacing
from flag_bench.errors import UserError
from flag_bench.methods.histogene.card import HISTOGENE
from flag_bench.methods.histogene.config import PRESETS, HisToGeneConfig
from flag_bench.methods.common import training
from flag_bench.methods.common.inputs import EmbeddingNormalizer
from flag_bench.methods.common.torch_method import INIT, TRAIN, TorchMethod
from flag_bench.methods.common.windows import windows

WHOLE = 1e12  # a window side that covers any slide: only the max_seq_len split cuts it


class _Block(nn.Module):
    """Pre-norm attention (qkv without bias) and GELU feed-forward, residuals around both."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        self.ff = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim),
                                nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)  # memory-efficient kernels on CUDA
        x = x + self.out(a.transpose(1, 2).reshape(b, n, -1))
        return x + self.ff(self.norm2(x))


class HisToGeneNet(nn.Module):
    def __init__(self, in_dim: int, n_genes: int, n_pos: int, cfg: HisToGeneConfig):
        super().__init__()
        self.patch_embedding = nn.Linear(in_dim, cfg.dim)
        self.x_embed = nn.Embedding(n_pos, cfg.dim)
        self.y_embed = nn.Embedding(n_pos, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(cfg.dim, cfg.heads, cfg.dim_head, cfg.mlp_dim, cfg.dropout)
                                    for _ in range(cfg.depth))
        self.head = nn.Sequential(nn.LayerNorm(cfg.dim), nn.Linear(cfg.dim, n_genes))

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, in_dim), pos (B, N, 2) long (x, y) -> (B, N, G)."""
        x = self.patch_embedding(tokens) + self.x_embed(pos[..., 0]) + self.y_embed(pos[..., 1])
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def grid_positions(coords_um: np.ndarray, step_um: float | None) -> tuple[np.ndarray, float]:
    """(n, 2) µm -> ((n, 2) int64 grid indices from 0, the step used)."""
    c = np.asarray(coords_um, dtype=np.float64)
    if len(c) == 0:
        return np.zeros((0, 2), dtype=np.int64), float(step_um or 1.0)
    if step_um is None:
        if len(c) < 2:
            step_um = 1.0
        else:
            step_um = median_spacing(c) or 1.0
    return np.rint((c - c.min(axis=0)) / step_um).astype(np.int64), float(step_um)


class HisToGene(TorchMethod):
    card = HISTOGENE
    Config = HisToGeneConfig
    presets = PRESETS  # what each was chosen on: the card's tuned_on

    # -- inputs ------------------------------------------------------------------------------
    def _tokens(self, s) -> torch.Tensor:
        cfg = self.config
        if s.image is None:
            raise UserError(f"method 'histogene' needs image tiles but slide {s.slide_id} has none; "
                            "use a dataset with images")
        if cfg.tokens == "embeddings":
            return torch.as_tensor(self.norm_(s.image.embeddings(cfg.token_encoder)))

        um = cfg.patch_um if cfg.patch_um is not None else s.image.patch.size_um
        tiles = s.image.tiles(PatchSpec(float(um), int(cfg.patch_px)))
        return torch.from_numpy(np.ascontiguousarray(tiles)).reshape(len(tiles), -1)  # uint8 until used

    def _prepare(self, s) -> dict:
        """One slide: tokens, grid positions (checked against the table) and windows."""
        pos, step = grid_positions(s.coords_um, self.config.grid_step_um)
        self._check_positions(s.slide_id, pos, step)
        wins = windows(s.coords_um, WHOLE, self.config.max_seq_len)
        return {"tokens": self._tokens(s), "pos": torch.as_tensor(pos), "windows": wins, "step": step}

    def _check_positions(self, slide_id: str, pos: np.ndarray, step: float) -> None:
        if len(pos) and int(pos.max()) >= self.n_pos_:
            raise UserError(f"method 'histogene': slide {slide_id} reaches grid position {int(pos.max())} (step "
                            f"{step:.4g} um) beyond the position table (n_pos={self.n_pos_}); set "
                            f"[methods.histogene] n_pos = {int(pos.max()) + 1} or more")

    def _forward(self, net, sl: dict, idx: np.ndarray, dev) -> torch.Tensor:
        i = torch.as_tensor(idx)
        tok = (sl["tokens"][i].to(dev).float() * self.config.pixel_scale if self.config.tokens == "pixels"
               else sl["tokens"][i].to(dev))
        with training.autocast(self.device, self.config.amp):
            return net(tok[None], sl["pos"][i].to(dev)[None])[0].float()

    # -- fit / predict -----------------------------------------------------------------------
    def _init_inputs(self, train) -> int:
        cfg = self.config
        if cfg.tokens == "embeddings":
            self.norm_ = EmbeddingNormalizer(np.concatenate([s.image.embeddings(cfg.token_encoder)
                                                             for s in train.slides]).astype(np.float32))
        extent = max((int(grid_positions(s.coords_um, cfg.grid_step_um)[0].max(initial=0)) for s in train.slides),
                     default=0)
        self.n_pos_ = cfg.n_pos if cfg.n_pos is not None else max(cfg.min_pos, extent + 1 + cfg.pos_margin)
        return extent

    def fit(self, train, val=None):
        cfg = self.config
        dev = torch.device(self.device)
        extent = self._init_inputs(train)
        slides = [self._prepare(s) for s in train.slides]
        targets = [torch.tensor(np.asarray(s.targets, dtype=np.float32), device=dev) for s in train.slides]
        picks = [(i, w) for i, sl in enumerate(slides) for w in range(len(sl["windows"]))]
        torch.manual_seed(self.stream_seed(INIT))
        in_dim = slides[0]["tokens"].shape[1]
        net = HisToGeneNet(in_dim, train.n_genes, self.n_pos_, cfg).to(dev)
        gen = self.generator(TRAIN)
        stream = _pick_stream(picks, gen)

        def micro_step(step, micro):
            i, w = next(stream)
            idx = slides[i]["windows"][w]
            pred = self._forward(net, slides[i], idx, dev)
            return F.mse_loss(pred, targets[i][torch.as_tensor(idx, device=dev)]), {}

        # Adam without weight decay is AdamW with weight_decay 0 (the shared loop's optimiser)
        settings = training.LoopSettings(steps=cfg.epochs * len(picks), lr=cfg.lr, weight_decay=0.0,
                                         grad_clip=None, ema_decay=None)
        self.net_, loop = training.train(self, net, micro_step, settings)
        longest = max(len(slides[i]["windows"][w]) for i, w in picks)
        self.summary = {"trained": True, **loop, "epochs": cfg.epochs, "sequences_per_epoch": len(picks),
                        "windowed_slides": sum(len(sl["windows"]) > 1 for sl in slides),
                        "longest_sequence": longest, "n_pos": self.n_pos_, "train_grid_extent": extent,
                        "grid_step_um": [round(sl["step"], 3) for sl in slides], "token_dim": in_dim,
                        "sequence_memory_mb": round(self._memory_mb(longest, in_dim), 1),
                        "deviations": self._deviations(train)}
        return self

    def _memory_mb(self, n: int, in_dim: int) -> float:
        """Rough training memory of one sequence: inputs, kept attention scores, activations."""
        c = self.config
        per_layer = c.heads * n * n * 2 + n * (c.dim * 8 + c.mlp_dim * 3 + c.heads * c.dim_head * 4)
        return 4 * (n * in_dim + c.depth * per_layer) / 2**20

    def _deviations(self, train) -> dict:
        cfg = self.config
        dev = {"target": f"harness target ({train.target_transform}) on the fold panel, not scprep log10",
               "grid_positions": "rounded um coordinates / spot pitch (no array indices in the harness)",
               "n_pos": f"{self.n_pos_} (official: 64; grown to the training slides' extent where they reach further)"}
        if cfg.lr != 1e-5:
            dev["lr"] = f"{cfg.lr:g} (tutorial 1e-5, class default 1e-4)"
        if cfg.tokens == "embeddings":
            dev["tokens"] = f"standardised {cfg.token_encoder} embeddings instead of raw pixels"
        elif cfg.patch_px != 112 or cfg.pixel_scale != 1.0:
            dev["patch"] = f"{cfg.patch_px} px x {cfg.pixel_scale:g} (official: 112 px, raw 0-255)"
        if (cfg.dim, cfg.depth, cfg.heads, cfg.dim_head, cfg.mlp_dim) != (1024, 8, 16, 64, 2048):
            dev["size"] = f"d {cfg.dim}, {cfg.depth} layers, {cfg.heads} x {cfg.dim_head} heads, mlp {cfg.mlp_dim}"
        if cfg.max_seq_len is not None:
            dev["windows"] = f"slides above {cfg.max_seq_len} spots cut into contiguous windows"
        return dev

    @torch.no_grad()
    def predict(self, test):
        dev = torch.device(self.device)
        self.net_.eval()
        out = []
        for s in test.slides:
            sl = self._prepare(s)
            pred = np.zeros((s.n_spots, test.n_genes), dtype=np.float32)
            for idx in sl["windows"]:
                pred[idx] = self._forward(self.net_, sl, idx, dev).cpu().numpy()
            out.append(pred)
        return out


def _pick_stream(picks: list, gen: torch.Generator):
    """Endless (slide, window) picks, every one once per epoch in a fresh random order."""
    while True:
        for j in torch.randperm(len(picks), generator=gen).tolist():
            yield picks[j]
