"""FLAG and its variants (flag-spec §3–4): graph-conditioned score diffusion over gene tokens.

FLAG = spatial graph encoder over a window of spots (image embeddings, static edge conditions)
-> per-spot condition -> gene-token DiT (adaLN-Zero) predicting the VE-SDE score, trained by
sigma^2-weighted denoising score matching plus a REPA-style alignment of DiT layer k to frozen
per-gene embeddings from a gene foundation model; sampled with a Heun probability-flow ODE and a
Tweedie step, n samples clipped at 0 and averaged.

Registered variants (one class each, same Config, different presets / mechanism):

- ``flag``: the released code's default (``use_cond_e_in_attn=False``: the static edge
  conditions are built but do not enter attention). flag-spec §3.1 recommends this as "FLAG-code".
- ``flag-paper``: the paper's description (``use_cond_e_in_attn=True``).
- ``flag-joint``: joint node–edge graph diffusion (graph model in mode 1 outputs node and edge
  scores; edge target = spot–spot gene PCC; consistency loss), flag-spec §3.6.
- ``flag-node``: node-only graph diffusion (the same graph model with A_t ≡ 0).
- ``flag-no-gfm``: FLAG without the alignment loss.
- ``flag-no-graph``: DiT conditioned on t_emb + MLP(image embedding), with alignment (§3.7).
- ``flag-regression``: FLAG's backbone trained as a deterministic MSE regressor (§3.7 [R]).

Presets. ``paper`` is the released configuration (§4) and keeps the reference's behaviour: the
graph encoder reads X_t, one t per window, one token per gene, raw log targets and raw score
output. ``small`` (CPU) deviates through named switches, each recorded in ``summary``; the why,
measured on her2st-mini (train C3–C5, val C6, test C2, G=50, efficientnet-lite0):

- ``graph_input="cond"``: the graph encoder reads only the image conditions (C_v, C_e), the
  paper's H_spatial = GraphEncoder(C_v, C_e), instead of the noisy X_t (released code). X_t
  swamps the image signal at high noise; with "cond" PCC went 0.28 -> 0.48 at the old settings
  (flag-no-graph scored 0.46, so the graph path had been hurting), and the graph runs once per
  window at sampling time instead of at each of the 41 ODE evaluations.
- ``t_per="spot"``: one diffusion time per spot rather than per window: a window of ~12 spots
  otherwise gives one noise level per 12 spots per step (PCC 0.09 -> 0.23 at 400 steps, lr 1e-3).
- ``lr=3e-3``, 16 windows per step, 600 steps: lr 1e-3 -> 3e-3 at 8 windows took PCC 0.23 -> 0.44,
  and 16 windows x 300 steps 0.53; with the EDM head, 300 -> 600 steps took GSC 0.868 / 0.875 ->
  0.935 / 0.915 on the test slides C3 / C6 (4 samples).
- ``n_samples=8`` (the paper's test setting) rather than 4: one fit, sampled twice, gave PCC
  0.506 / 0.494 -> 0.551 / 0.523 on C3 / C6; sampling costs ~1 s per extra 4 samples here.
- ``max_gene_tokens=16`` with ``max_genes_per_token=16``: gene grouping bounds the sequence
  length; the cap on the group size keeps each token's k values learnable by a 32-wide state
  (k=50 > hidden at G=800 gave PCC 0.00 and MSE 6; the cap makes it 50 tokens of 16).
- ``score_output="edm"``: the network reads x_t / sqrt(1 + sigma^2) and its output is a correction
  to the exact score of a unit Gaussian (targets are per-gene z-scores, so sigma_data = 1). With
  the raw (or score/sigma) head, the denoiser at sigma >= 3 was worse than plain shrinkage
  x_t / (1 + sigma^2) (x0 error 4.5 vs 1.0 at sigma = 3 for flag-node), and PF-ODE samples that
  start at sigma = 10 inherited it: flag-node PCC 0.003 / MSE 7.10 -> 0.395 / 0.835, flag-joint
  ~0 / 7-8 -> 0.399 / 0.819, flag 0.504 / 0.707 -> 0.585 / 0.616 (G = 50); flag at G = 800
  0.043 / 0.730 -> 0.274 / 0.613. The loss is unchanged (sigma^2-weighted DSM).
- ``standardize_targets``, ``time_scale=1000``, ``ema_warmup``: short runs; per-gene z-scores; a
  time embedding whose frequencies resolve t in [0.01, 1].
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from flag_bench.methods.base import Method, MethodCard
from flag_bench.methods.diffusion import training
from flag_bench.methods.diffusion.dit import GeneDiT, TimestepEmbedder, TokenProjector, auto_genes_per_token
from flag_bench.methods.diffusion.edges import pair_mask, spot_pcc, static_edge_conditions, windows
from flag_bench.methods.diffusion.inputs import EmbeddingNormalizer, require_embeddings
from flag_bench.methods.diffusion.sampler import heun_pf_ode, randn
from flag_bench.methods.diffusion.sde import VESDE, dsm_loss, masked_mean

CITATION = ("Si, Wang, Wu, Jiao, Liu, Guo, Qi, Cheng. FLAG: Foundation model representation with Latent "
            "diffusion Alignment via Graph for spatial gene expression prediction. ICML 2026 (arXiv 2605.18055)")
CODE_URL = "https://github.com/darkflash03/FLAG"


@dataclass(frozen=True)
class FlagConfig:
    """FLAG hyper-parameters; defaults are the released code (flag-spec §4).

    CPU switches (off by default, on in ``small``; why: module docstring): ``graph_input``
    ("x_t" | "cond"), ``t_per`` ("window" | "spot"), ``max_gene_tokens`` / ``max_genes_per_token``,
    ``standardize_targets``, ``score_output``, ``time_scale``, ``ema_warmup``.
    """

    # spatial graph encoder (flag-spec §3.1)
    graph_dim: int = 384
    graph_layers: int = 6
    graph_heads: int = 8
    graph_dropout: float = 0.1
    use_cond_e_in_attn: bool = False  # released code: False; paper text: True
    # what the graph encoder's node stem reads (FLAG DiT variants only; the graph-diffusion variants
    # always read X_t): "x_t" = the noisy expression (released code); "cond" = the image conditions
    # only, H_spatial = GraphEncoder(C_v, C_e) as the paper's text writes it. With "cond" the graph
    # is evaluated once per window at sampling time and reused across all ODE steps.
    graph_input: str = "x_t"
    # gene-token DiT (§3.3) and conditioning projection (§3.2)
    hidden: int = 384
    depth: int = 12
    heads: int = 6
    mlp_ratio: float = 4.0
    d_gene: int = 512
    max_gene_tokens: int | None = None  # None: one token per gene; else genes grouped to fit (CPU)
    max_genes_per_token: int | None = None  # caps the group size (wins over max_gene_tokens), see dit.py
    # GFM alignment (§3.5)
    align_weight: float = 0.5
    align_layer: int = 8
    projector_dim: int = 2048
    gene_embeddings: str = "her2st-expr"  # provider name (methods/gene_embeddings.py)
    gene_embedding_options: tuple[tuple[str, Any], ...] = ()
    # VE-SDE (§3.4)
    sigma_min: float = 0.01
    sigma_max: float = 10.0
    t_min: float = 0.01
    # one diffusion time per window (reference) or one per spot ("spot": more noise levels per
    # step; the DiT treats spots as independent sequences, so this only changes the training noise)
    t_per: str = "window"
    # how the network's output becomes the score: "raw" (the reference: the output is the score),
    # "over_sigma" (score = output / sigma), or "edm" (Karras et al. 2022 preconditioning with
    # sigma_data = 1: the network reads x_t / sqrt(1 + sigma^2) and the score is
    # -x_t / (1 + sigma^2) + output / (sigma sqrt(1 + sigma^2)), i.e. the exact score of a unit
    # Gaussian plus a learned correction). The loss is the same sigma^2-weighted DSM in every case.
    score_output: str = "raw"
    time_scale: float = 1.0  # the DiT time embedding sees t * time_scale (reference: raw t in [t_min, 1])
    # windows / static edges (§1.5, §2.2): 2048 px at ~0.5 um/px; sigma_dist 224 px
    window_um: float = 1024.0
    sigma_dist_um: float = 112.0
    max_window_spots: int | None = None
    # joint node–edge diffusion (§3.6)
    lambda_edge: float = 1.0
    lambda_cons: float = 0.1
    # inputs
    cond_pca: int | None = None
    standardize_targets: bool = False  # diffuse per-gene z-scores (train statistics); reference: raw log2
    # training (§4)
    lr: float = 3e-4
    weight_decay: float = 0.01
    windows_per_batch: int = 1  # for flag-no-graph: spots per batch
    grad_accum: int = 16
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = False
    epochs: int = 2000  # used when ``steps`` is None; one epoch = one pass over the training windows
    steps: int | None = None
    eval_every_epochs: float = 10.0
    eval_every_steps: int | None = None  # overrides eval_every_epochs
    patience: int = 20  # validations without improvement
    val_metric: str = "pcc"  # "pcc" (FLAG) or "mse" (graph diffusion)
    val_windows: int | None = 5  # random validation windows per evaluation; None = all
    val_sampling_steps: int = 20
    val_samples: int = 1
    max_seconds: float | None = None
    # sampling (§3.4)
    sampling_steps: int = 100
    n_samples: int = 8
    predict_windows: int = 64  # windows (x samples) per sampling batch
    clip_at_zero: bool = True
    amp: bool = False
    compile: bool = False

    def __post_init__(self):
        if self.hidden % self.heads or self.graph_dim % self.graph_heads:
            raise ValueError("hidden/heads and graph_dim/graph_heads must divide")
        if self.graph_input not in ("x_t", "cond"):
            raise ValueError("graph_input must be 'x_t' or 'cond'")
        if self.t_per not in ("window", "spot"):
            raise ValueError("t_per must be 'window' or 'spot'")
        if self.score_output not in ("raw", "over_sigma", "edm"):
            raise ValueError("score_output must be 'raw', 'over_sigma' or 'edm'")
        if self.val_metric not in ("pcc", "mse"):
            raise ValueError("val_metric must be 'pcc' or 'mse'")
        if not 0 <= self.align_layer <= self.depth:
            raise ValueError(f"align_layer must be in [0, depth={self.depth}]")
        if min(self.n_samples, self.sampling_steps, self.windows_per_batch, self.grad_accum) < 1:
            raise ValueError("n_samples, sampling_steps, windows_per_batch and grad_accum must be >= 1")
        object.__setattr__(self, "gene_embedding_options", tuple(tuple(kv) for kv in self.gene_embedding_options))


# ------------------------------------------------------------------------------------- network
class FlagNet(nn.Module):
    """Graph encoder and/or gene-token DiT, depending on the variant.

    forward(x_t (B,N,G), t (B,) or (B,N), cond_v (B,N,Dc), cond_e (B,N,N,2)|None, mask (B,N), a_t|None,
    capture, ctx (M,hidden)|None) -> (node out (B,N,G), edge out (B,N,N,1)|None, aligned tokens
    (M,G,z)|None), where M is the number of valid spots in mask order. ``ctx`` is a precomputed
    ``spot_context`` (only possible when the graph does not read X_t).
    """

    def __init__(self, variant: str, n_genes: int, cond_dim: int, cfg: FlagConfig, z_dim: int | None):
        super().__init__()
        self.variant, self.n_genes = variant, n_genes
        self.graph, self.graph_sees_xt = None, False
        if variant != "no-graph":
            from flag_bench.methods.diffusion.graph_encoder import GraphEncoder, GraphEncoderConfig

            mode1 = variant in ("joint", "node")
            self.graph_sees_xt = mode1 or cfg.graph_input == "x_t"
            self.graph = GraphEncoder(GraphEncoderConfig(
                n_genes=n_genes, d_model=cfg.graph_dim, n_layers=cfg.graph_layers, n_heads=cfg.graph_heads,
                dropout=cfg.graph_dropout, node_cond_dim=cond_dim, edge_cond_dim=2, edge_dim=1,
                ada_norm=mode1, use_cond_e_in_attn=True if mode1 else cfg.use_cond_e_in_attn,
                use_edge_stream=variant == "joint", node_input="x_t" if self.graph_sees_xt else "cond"))
        self.dit = None
        if variant in ("flag", "no-graph", "regression"):
            gpt = auto_genes_per_token(n_genes, cfg.max_gene_tokens, cfg.max_genes_per_token)
            self.t_embed = TimestepEmbedder(cfg.hidden)
            self.dit = GeneDiT(n_genes, cfg.hidden, cfg.depth, cfg.heads, cfg.mlp_ratio, 1, gpt)
            if self.graph is not None:
                self.context = nn.Sequential(nn.Linear(n_genes, cfg.d_gene), nn.SiLU(), nn.Linear(cfg.d_gene, cfg.hidden))
            else:  # flag-no-graph: the image embedding itself is the condition (Stem-like)
                self.context = nn.Sequential(nn.Linear(cond_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cfg.hidden))
            for lin in (self.context[0], self.context[2]):
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)
            for lin in (self.t_embed.mlp[0], self.t_embed.mlp[2]):
                nn.init.normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)
            self.align_layer, self.time_scale = cfg.align_layer, cfg.time_scale
            self.projector = (TokenProjector(cfg.hidden, cfg.projector_dim, z_dim, gpt)
                              if z_dim and cfg.align_layer > 0 else None)

    def spot_context(self, cond_v, cond_e, mask) -> torch.Tensor:
        """Per-spot condition (M, hidden) for graphs that do not read X_t (or no graph)."""
        if self.graph is None:
            return self.context(cond_v[mask])
        node, _ = self.graph(None, None, cond_v, cond_e, mask)
        return self.context(node[mask])

    def forward(self, x_t, t, cond_v, cond_e, mask, a_t=None, capture: bool = False, ctx=None):
        edge_out = None
        if ctx is None:
            if self.graph is not None and self.graph_sees_xt:
                node, edge_out = self.graph(x_t, t, cond_v, cond_e, mask, a_t)
                if self.dit is None:
                    return node, edge_out, None
                ctx = self.context(node[mask])
            else:
                ctx = self.spot_context(cond_v, cond_e, mask)
        B, N, G = x_t.shape
        tt = (t[:, None].expand(B, N) if t.dim() == 1 else t)[mask]
        want = self.align_layer if (capture and self.projector is not None) else None
        out, h = self.dit(x_t[mask], self.t_embed(tt * self.time_scale) + ctx, capture_layer=want)
        full = x_t.new_zeros(B, N, G)
        full[mask] = out[..., 0].to(full.dtype)
        z = self.projector(h, G) if want is not None else None
        return full, edge_out, z


# ----------------------------------------------------------------------------------- windows
@dataclass
class _Slide:
    x0: torch.Tensor | None  # (n, G) targets
    cond: torch.Tensor  # (n, Dc)
    windows: list[np.ndarray]
    cond_e: list[torch.Tensor | None]  # per window (n_w, n_w, 2)
    align: torch.Tensor | None = None  # (n, G, z) float16
    align_mask: torch.Tensor | None = None  # (n, G) bool


def _pad_stack(tensors: list[torch.Tensor], n: int) -> torch.Tensor:
    """Pad each (n_i, ...) tensor to (n, ...) on dim 0 and stack -> (B, n, ...)."""
    return torch.stack([F.pad(x, (0, 0) * (x.dim() - 1) + (0, n - x.shape[0])) for x in tensors])


def _pad_pairs(tensors: list[torch.Tensor], n: int) -> torch.Tensor:
    """Pad (n_i, n_i, C) tensors to (n, n, C) and stack -> (B, n, n, C)."""
    return torch.stack([F.pad(x, (0, 0, 0, n - x.shape[1], 0, n - x.shape[0])) for x in tensors])


@dataclass
class _Batch:
    mask: torch.Tensor  # (B, N) bool
    cond_v: torch.Tensor  # (B, N, Dc)
    cond_e: torch.Tensor | None  # (B, N, N, 2)
    x0: torch.Tensor | None = None  # (B, N, G)
    align: torch.Tensor | None = None  # (M, G, z)
    align_mask: torch.Tensor | None = None  # (M, G)
    where: list[tuple[int, np.ndarray]] | None = None  # (slide, spot index) per window

    def repeat(self, k: int) -> "_Batch":
        """Each window repeated k times along the batch axis (for k samples at once)."""
        rep = lambda x: None if x is None else x.repeat_interleave(k, dim=0)
        return _Batch(rep(self.mask), rep(self.cond_v), rep(self.cond_e))


def _collate(slides: list[_Slide], picks: list[tuple[int, int]], device, with_targets: bool) -> _Batch:
    """picks = [(slide, window)] -> padded batch."""
    idx = [slides[s].windows[w] for s, w in picks]
    n = max(len(i) for i in idx)
    mask = torch.zeros(len(picks), n, dtype=torch.bool)
    for b, i in enumerate(idx):
        mask[b, : len(i)] = True
    cond_v = _pad_stack([slides[s].cond[i] for (s, _), i in zip(picks, idx)], n)
    ce = [slides[s].cond_e[w] for s, w in picks]
    cond_e = None if ce[0] is None else _pad_pairs(ce, n).to(device)
    batch = _Batch(mask.to(device), cond_v.to(device), cond_e, where=[(s, i) for (s, _), i in zip(picks, idx)])
    if with_targets:
        batch.x0 = _pad_stack([slides[s].x0[i] for (s, _), i in zip(picks, idx)], n).to(device)
        if slides[picks[0][0]].align is not None:
            batch.align = torch.cat([slides[s].align[i] for (s, _), i in zip(picks, idx)]).to(device).float()
            batch.align_mask = torch.cat([slides[s].align_mask[i] for (s, _), i in zip(picks, idx)]).to(device)
    return batch


# ------------------------------------------------------------------------------------ method
class Flag(Method):
    card = MethodCard(
        name="flag",
        description="FLAG (released-code default): graph-conditioned VE-SDE score diffusion over gene tokens "
                    "with GFM alignment; Heun PF-ODE, n samples averaged",
        citation=CITATION, code_url=CODE_URL, needs=frozenset({"embeddings", "coords", "counts"}),
        generative=True, uses_validation=True, default_run=True,
    )
    Config = FlagConfig
    variant: ClassVar[str] = "flag"
    presets = {
        # GPU memory, paper preset, one training window (batch 1): N=100 spots, G=200 -> 71.8 M
        # parameters, ~1.3 GiB weights+grads+AdamW+EMA and ~10 GiB autograd-saved activations in
        # fp32 (measured on CPU by summing saved tensors), so plan ~12-15 GiB per window; the DiT
        # part grows ~linearly in N*G (one sequence of G tokens per spot), the graph part in N^2.
        # bf16 autocast (amp=True) roughly halves the activations.
        "paper": {},
        # CPU demo: the same mechanisms, narrow and shallow, fixed step count (deterministic),
        # model selection on the validation slide every 100 steps. Deviations from the reference,
        # each a config switch recorded in ``summary`` (measured on her2st-mini, see the module
        # docstring): graph_input="cond", t_per="spot", genes grouped into <= 16 tokens of <= 16
        # genes, per-gene standardised targets, EDM-preconditioned score, t*1000 time embedding, EMA
        # warm-up, lr 3e-3 with 16 windows per step and no accumulation.
        "small": dict(graph_dim=32, graph_layers=2, graph_heads=2, graph_dropout=0.0, hidden=32, depth=2, heads=2,
                      d_gene=64, max_gene_tokens=16, max_genes_per_token=16, align_layer=1, projector_dim=64,
                      cond_pca=64, lr=3e-3, windows_per_batch=16, grad_accum=1, steps=600, ema_decay=0.99,
                      ema_warmup=True, eval_every_steps=100, patience=0, val_windows=None, val_sampling_steps=10,
                      sampling_steps=20, n_samples=8, standardize_targets=True, score_output="edm",
                      time_scale=1000.0, graph_input="cond", t_per="spot"),
        "tiny": dict(graph_dim=16, graph_layers=1, graph_heads=2, graph_dropout=0.0, hidden=16, depth=1, heads=2,
                     d_gene=16, max_gene_tokens=8, align_layer=1, projector_dim=16, cond_pca=8, lr=1e-3,
                     windows_per_batch=2, grad_accum=1, steps=6, ema_decay=0.9, ema_warmup=True,
                     eval_every_steps=3, patience=0, val_windows=2, val_sampling_steps=2,
                     sampling_steps=3, n_samples=2, window_um=400.0, standardize_targets=True,
                     score_output="edm", time_scale=1000.0, graph_input="cond", t_per="spot"),
    }

    # -- configuration helpers -------------------------------------------------------------
    @property
    def uses_graph(self) -> bool:
        return self.variant != "no-graph"

    @property
    def reads_cond_e(self) -> bool:
        """Whether the static edge conditions enter the graph attention (mode 1 always uses them)."""
        return self.uses_graph and (self.variant in ("joint", "node") or self.config.use_cond_e_in_attn)

    @property
    def t_per(self) -> str:
        """One diffusion time per "spot" or per "window"; graph diffusion (mode 1) always uses "window"."""
        return "window" if self.variant in ("joint", "node") else self.config.t_per

    @property
    def uses_alignment(self) -> bool:
        return self.variant in ("flag", "no-graph") and self.config.align_weight > 0 and self.config.align_layer > 0

    def _sde(self) -> VESDE:
        c = self.config
        return VESDE(c.sigma_min, c.sigma_max, c.t_min)

    # -- data --------------------------------------------------------------------------------
    def _prepare(self, data, with_targets: bool, dev) -> list[_Slide]:
        cfg = self.config
        out = []
        for s in data.slides:
            cond = torch.as_tensor(self.norm_(s.embeddings))
            if self.uses_graph:
                coords = np.asarray(s.coords_um, dtype=np.float64)
                wins = [np.asarray(w, dtype=np.int64) for w in windows(coords, cfg.window_um, cfg.max_window_spots)]
                ces = ([torch.as_tensor(static_edge_conditions(coords[w], cond[w].numpy(), cfg.sigma_dist_um),
                                        dtype=torch.float32) for w in wins]
                       if self.reads_cond_e else [None] * len(wins))
            else:  # no graph: every spot is its own one-node "window"
                wins = [np.array([i]) for i in range(s.n_spots)]
                ces = [None] * len(wins)
            x0 = None
            if with_targets:
                x0 = torch.tensor((np.asarray(s.targets, dtype=np.float32) - self.mu_) / self.sd_, dtype=torch.float32)
            out.append(_Slide(x0, cond, wins, ces))
        return out

    def _attach_alignment(self, slides: list[_Slide], train) -> dict:
        from flag_bench.methods.gene_embeddings import get_provider

        cfg = self.config
        provider = get_provider(cfg.gene_embeddings, **dict(cfg.gene_embedding_options))
        for sl, s in zip(slides, train.slides):
            emb, m = provider.embed(np.asarray(s.counts), train.genes, train.gene_ids)
            # float16 keeps G=800 x D targets for a few thousand spots within CPU memory
            sl.align = torch.as_tensor(np.asarray(emb), dtype=torch.float16)
            sl.align_mask = torch.as_tensor(np.asarray(m, dtype=bool))
        self.provider_ = provider
        return provider.describe()

    # -- losses ------------------------------------------------------------------------------
    def _loss(self, net, batch: _Batch, gen, dev) -> tuple[torch.Tensor, dict]:
        cfg, sde = self.config, self._sde()
        B, N, G = batch.x0.shape
        m3 = batch.mask[..., None]
        if self.variant == "regression":
            loss = masked_mean((self._regress(net, batch, G, dev) - batch.x0) ** 2, m3)
            return loss, {"mse": float(loss.detach())}
        per_spot = self.t_per == "spot"
        t = sde.sample_t(B * N, gen, dev).view(B, N) if per_spot else sde.sample_t(B, gen, dev)
        noise = randn((B, N, G), gen, dev) * m3
        if per_spot:
            sigma = sde.sigma(t)[..., None]  # (B, N, 1)
            x_t = batch.x0 + sigma * noise
        else:
            x_t, sigma = sde.perturb(batch.x0, t, noise)
        a_t = a0 = noise_a = pm = None
        if self.variant == "joint":
            pm = self._pair_mask(batch.mask)
            a0 = spot_pcc(batch.x0, batch.mask)
            noise_a = randn(a0.shape, gen, dev) * pm
            a_t = a0 + sigma[..., None] * noise_a
        capture = self.uses_alignment
        s_x, s_a, z = self._score(net, x_t, t, sigma, batch.cond_v, batch.cond_e, batch.mask, a_t, capture)
        loss_x = dsm_loss(s_x, noise, sigma, m3)
        logs = {"score": float(loss_x.detach())}
        loss = loss_x
        if self.variant == "joint":
            loss_a = dsm_loss(s_a, noise_a, sigma[..., None], pm)
            a_hat = a_t + sigma[..., None] ** 2 * s_a
            with torch.no_grad():  # as in the reference: the gradient reaches only the edge branch
                p_pred = spot_pcc(x_t + sigma ** 2 * s_x, batch.mask)
            loss_c = masked_mean((a_hat - p_pred).abs(), pm)
            loss = loss + cfg.lambda_edge * loss_a + cfg.lambda_cons * loss_c
            logs.update(edge=float(loss_a.detach()), consistency=float(loss_c.detach()))
        if capture and z is not None:
            align = alignment_loss(z.float(), batch.align, batch.align_mask)
            loss = loss + cfg.align_weight * align
            logs["align"] = float(align.detach())
        return loss, logs

    def _regress(self, net, batch: _Batch, n_genes: int, dev) -> torch.Tensor:
        """flag-regression's deterministic forward: zero input, fixed t = 1 -> (B, N, G) expression."""
        B, N = batch.mask.shape
        zeros = torch.zeros(B, N, n_genes, device=dev)
        with training.autocast(self.device, self.config.amp):
            pred, _, _ = net(zeros, torch.ones(B, device=dev), batch.cond_v, batch.cond_e, batch.mask)
        return pred.float()

    def _score(self, net, x_t, t, sigma, cond_v, cond_e, mask, a_t=None, capture=False, ctx=None):
        """Network call in score space -> (s_x (B,N,G), s_a (B,N,N,1)|None, aligned tokens|None).

        sigma broadcasts against x_t: (B,1,1) or (B,N,1). The edge state A_t shares sigma.
        """
        mode = self.config.score_output
        x_in, a_in = x_t, a_t
        if mode == "edm":
            c_in = torch.rsqrt(1 + sigma ** 2)
            x_in = x_t * c_in
            a_in = None if a_t is None else a_t * c_in[..., None]
        with training.autocast(self.device, self.config.amp):
            out_x, out_a, z = net(x_in, t, cond_v, cond_e, mask, a_in, capture, ctx=ctx)

        def to_score(out, x, sig):
            out = out.float()
            if mode == "over_sigma":
                return out / sig
            if mode == "edm":
                return -x / (1 + sig ** 2) + out / (sig * torch.sqrt(1 + sig ** 2))
            return out

        s_x = to_score(out_x, x_t, sigma)
        s_a = None if out_a is None else to_score(out_a, a_t, sigma[..., None])
        return s_x, s_a, z

    @staticmethod
    def _pair_mask(mask: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, N, N, 1) valid off-diagonal pairs."""
        return pair_mask(mask)[..., None]

    # -- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def _sample_batch(self, net, batch: _Batch, n_samples: int, steps: int, gen, dev) -> torch.Tensor:
        """-> (B, n_samples, N, G) samples, each clipped at 0 when configured."""
        cfg, sde = self.config, self._sde()
        B, N = batch.mask.shape
        G = self.n_genes_
        if self.variant == "regression":
            out = self._to_target(self._regress(net, batch, G, dev)[:, None])
            return out.clamp_min(0) if cfg.clip_at_zero else out
        rb = batch.repeat(n_samples)
        m3 = rb.mask[..., None]
        pm = self._pair_mask(rb.mask).float()
        joint = self.variant == "joint"
        ctx = None
        if not net.graph_sees_xt:
            # the condition does not depend on X_t or t: one graph pass per window, reused by every
            # ODE step and every sample
            with training.autocast(self.device, cfg.amp):
                one = net.spot_context(batch.cond_v, batch.cond_e, batch.mask)
            full = one.new_zeros(*batch.mask.shape, one.shape[-1])
            full[batch.mask] = one
            ctx = full.repeat_interleave(n_samples, dim=0)[rb.mask]

        def post(states):
            states = list(states)
            states[0] = states[0] * m3
            if joint:
                a = states[1]
                states[1] = 0.5 * (a + a.transpose(1, 2)) * pm
            return states

        def score_fn(states, t):
            a_t = states[1] if joint else None
            sig = sde.sigma(t).view(-1, 1, 1)
            s_x, s_a, _ = self._score(net, states[0], t, sig, rb.cond_v, rb.cond_e, rb.mask, a_t, ctx=ctx)
            out = [s_x * m3]
            if joint:
                out.append(s_a * pm)
            return out

        init = [randn((B * n_samples, N, G), gen, dev) * sde.sigma_max]
        if joint:
            init.append(randn((B * n_samples, N, N, 1), gen, dev) * sde.sigma_max)
        xs = heun_pf_ode(score_fn, post(init), sde, steps, post=post)
        x = self._to_target(xs[0].view(B, n_samples, N, G))
        return x.clamp_min(0) if cfg.clip_at_zero else x

    def _to_target(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> target space (undo the optional per-gene standardisation)."""
        mu = torch.as_tensor(self.mu_, device=x.device)
        sd = torch.as_tensor(self.sd_, device=x.device)
        return x * sd + mu

    def _predict_slides(self, net, slides: list[_Slide], n_spots: list[int], n_samples: int, steps: int,
                        gen, dev, max_windows: int | None = None) -> list[np.ndarray]:
        """Mean of n samples per spot; each spot belongs to exactly one window."""
        cfg = self.config
        picks = [(i, w) for i, sl in enumerate(slides) for w in range(len(sl.windows))]
        if max_windows is not None and max_windows < len(picks):
            sel = torch.randperm(len(picks), generator=gen)[:max_windows].sort().values.tolist()
            picks = [picks[i] for i in sel]
        preds = [np.full((n, self.n_genes_), np.nan, dtype=np.float32) for n in n_spots]
        per = max(1, cfg.predict_windows // (1 if self.variant == "regression" else n_samples))
        if not self.uses_graph:
            per = max(per, 1024 // max(1, n_samples))
        for a in range(0, len(picks), per):
            batch = _collate(slides, picks[a:a + per], dev, with_targets=False)
            mean = self._sample_batch(net, batch, n_samples, steps, gen, dev).mean(1).cpu().numpy()
            for b, (s, idx) in enumerate(batch.where):
                preds[s][idx] = mean[b, : len(idx)]
        return preds

    # -- contract ----------------------------------------------------------------------------
    def fit(self, train, val=None):
        cfg = self.config
        require_embeddings(train, self.card.name)
        dev = torch.device(self.device)
        torch.manual_seed(self.seed)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        self.n_genes_ = G = train.n_genes
        self.norm_ = EmbeddingNormalizer(np.concatenate([s.embeddings for s in train.slides]), cfg.cond_pca)
        y = np.concatenate([np.asarray(s.targets, dtype=np.float64) for s in train.slides])
        self.mu_ = (y.mean(0) if cfg.standardize_targets else np.zeros(G)).astype(np.float32)
        sd = y.std(0) if cfg.standardize_targets else np.ones(G)
        self.sd_ = np.where(sd > 1e-6, sd, 1.0).astype(np.float32)
        slides = self._prepare(train, True, dev)
        provider_info = None
        z_dim = None
        if self.uses_alignment:
            provider_info = self._attach_alignment(slides, train)
            z_dim = self.provider_.dim
        net = FlagNet(self.variant, G, self.norm_.dim, cfg, z_dim).to(dev)
        fwd = torch.compile(net) if cfg.compile and dev.type == "cuda" else net

        picks = [(i, w) for i, sl in enumerate(slides) for w in range(len(sl.windows))]
        per_batch = min(cfg.windows_per_batch, len(picks))
        steps_per_epoch = max(1, math.ceil(len(picks) / (per_batch * cfg.grad_accum)))
        steps = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch

        def micro_step(step, micro):
            sel = torch.randperm(len(picks), generator=gen)[:per_batch].tolist()
            batch = _collate(slides, [picks[i] for i in sel], dev, with_targets=True)
            return self._loss(fwd, batch, gen, dev)

        validate, eval_every = None, 0
        if val is not None and val.slides and (cfg.eval_every_steps or cfg.eval_every_epochs):
            require_embeddings(val, self.card.name)
            vslides = self._prepare(val, False, dev)  # validate() scores against val.slides' targets
            vgen = torch.Generator(device="cpu").manual_seed(self.seed + 7)
            eval_every = cfg.eval_every_steps or max(1, round(cfg.eval_every_epochs * steps_per_epoch))

            def validate(model):
                preds = self._predict_slides(model, vslides, [s.n_spots for s in val.slides], cfg.val_samples,
                                             cfg.val_sampling_steps, vgen, dev, cfg.val_windows)
                return _val_score(preds, [np.asarray(s.targets) for s in val.slides], cfg.val_metric)

        settings = training.LoopSettings(
            steps=steps, lr=cfg.lr, weight_decay=cfg.weight_decay, grad_accum=cfg.grad_accum,
            grad_clip=cfg.grad_clip, ema_decay=cfg.ema_decay, ema_warmup=cfg.ema_warmup, eval_every=eval_every,
            patience=cfg.patience, max_seconds=cfg.max_seconds)
        self.ema_, loop = training.train(self, net, micro_step, settings, validate, description="train")
        self.net_ = net
        win_sizes = [len(w) for sl in slides for w in sl.windows]
        self.summary = {
            "trained": True, "variant": self.variant, **loop,
            "epochs": round(loop["optimizer_steps"] / steps_per_epoch, 2), "steps_per_epoch": steps_per_epoch,
            "n_train_windows": len(picks), "window_spots_mean": float(np.mean(win_sizes)),
            "window_spots_max": int(np.max(win_sizes)), "window_um": cfg.window_um if self.uses_graph else None,
            "use_cond_e_in_attn": self.reads_cond_e if self.uses_graph else None,
            "graph_input": ("x_t" if net.graph_sees_xt else "cond (C_v, C_e only)") if self.uses_graph else None,
            "t_per": self.t_per,
            "gene_embeddings": provider_info, "align_weight": cfg.align_weight if self.uses_alignment else 0.0,
            "genes_per_token": net.dit.k if net.dit is not None else None,
            "condition": self.norm_.describe(), "val_metric": cfg.val_metric if validate else None,
            "sampler": "deterministic regressor" if self.variant == "regression" else
            f"Heun PF-ODE {cfg.sampling_steps} steps + Tweedie",
            "n_samples": 1 if self.variant == "regression" else cfg.n_samples,
            "standardize_targets": cfg.standardize_targets, "time_scale": cfg.time_scale,
            "clip_at_zero": cfg.clip_at_zero, "score_output": cfg.score_output,
            "amp": cfg.amp and dev.type == "cuda",
        }
        return self

    def predict(self, test):
        cfg = self.config
        require_embeddings(test, self.card.name)
        dev = torch.device(self.device)
        gen = torch.Generator(device="cpu").manual_seed(self.seed + 1)
        slides = self._prepare(test, False, dev)
        preds = self._predict_slides(self.ema_, slides, [s.n_spots for s in test.slides], cfg.n_samples,
                                     cfg.sampling_steps, gen, dev)
        for p, s in zip(preds, test.slides):
            if np.isnan(p).any():
                raise RuntimeError(f"windows of slide {s.slide_id} did not cover every spot")
        return preds

    def n_parameters(self):
        return int(sum(p.numel() for p in self.net_.parameters())) if hasattr(self, "net_") else None


def alignment_loss(z: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REPA loss: minus the mean cosine between projected tokens and GFM embeddings.

    z, target (M, G, D); mask (M, G) bool, True where the gene was present in the spot's GFM input.
    Absent genes (zero targets) are excluded, as in the reference.
    """
    cos = F.cosine_similarity(z, target, dim=-1, eps=1e-8)
    return -masked_mean(cos, mask)


def _val_score(preds: list[np.ndarray], truths: list[np.ndarray], metric: str) -> float:
    """Higher is better: mean per-gene Pearson over the sampled spots, or minus MSE."""
    p = np.concatenate(preds)
    y = np.concatenate(truths).astype(np.float32)
    keep = ~np.isnan(p).any(axis=1)  # spots of windows not drawn this time
    p, y = p[keep], y[keep]
    if metric == "mse":
        return -float(np.mean((p - y) ** 2))
    pc, yc = p - p.mean(0), y - y.mean(0)
    den = np.sqrt((pc ** 2).sum(0) * (yc ** 2).sum(0))
    r = np.where(den > 0, (pc * yc).sum(0) / np.where(den > 0, den, 1), np.nan)
    return float(np.nanmean(r)) if np.isfinite(r).any() else -1.0


# ---------------------------------------------------------------------------------- variants
def _card(name: str, description: str) -> MethodCard:
    return dataclasses.replace(Flag.card, name=name, description=description, default_run=False)


def _presets(**changes_by_preset) -> dict:
    return {p: {**Flag.presets[p], **changes_by_preset.get(p, {}), **changes_by_preset.get("all", {})}
            for p in Flag.presets}


class FlagPaper(Flag):
    card = _card("flag-paper", "FLAG as the paper describes it: static edge conditions (distance, image "
                 "similarity) enter the graph attention (use_cond_e_in_attn=True)")
    presets = _presets(all=dict(use_cond_e_in_attn=True))


class FlagNoGFM(Flag):
    card = _card("flag-no-gfm", "FLAG ablation without gene-foundation-model alignment (score loss only)")
    presets = _presets(all=dict(align_weight=0.0))


class FlagNoGraph(Flag):
    card = _card("flag-no-graph", "FLAG ablation without the spatial graph: DiT conditioned on t_emb + "
                 "MLP(image embedding), with GFM alignment")
    variant = "no-graph"
    # a "window" is one spot: windows_per_batch becomes spots per batch
    presets = _presets(paper=dict(windows_per_batch=256, grad_accum=1),
                       small=dict(windows_per_batch=192, steps=600),  # ~ as many spots per step as flag
                       tiny=dict(windows_per_batch=16, val_windows=16))


class FlagRegression(Flag):
    card = _card("flag-regression", "FLAG ablation without diffusion: the same graph + DiT backbone trained "
                 "as a deterministic MSE regressor")
    variant = "regression"
    presets = _presets(all=dict(align_weight=0.0, n_samples=1), paper=dict(val_metric="pcc"))


_GRAPH_DIFFUSION_PAPER = dict(lr=1e-4, graph_layers=6, graph_dim=384, graph_heads=8, val_metric="mse",
                              val_windows=None, val_sampling_steps=100, align_weight=0.0)
_GRAPH_DIFFUSION_SMALL = dict(graph_dim=48, graph_layers=2, graph_heads=2, lr=1e-3, align_weight=0.0,
                              windows_per_batch=8, val_metric="mse", steps=800)


class FlagJoint(Flag):
    card = _card("flag-joint", "joint node–edge graph diffusion (nodes: expression; edges: spot–spot gene PCC; "
                 "consistency loss) — the Gene-Dimension-Curse failure mode")
    variant = "joint"
    presets = _presets(paper=_GRAPH_DIFFUSION_PAPER, small=_GRAPH_DIFFUSION_SMALL, tiny=dict(align_weight=0.0))


class FlagNodeOnly(Flag):
    card = _card("flag-node", "node-only graph diffusion (the graph model scores expression with A_t = 0)")
    variant = "node"
    presets = _presets(paper=_GRAPH_DIFFUSION_PAPER, small=_GRAPH_DIFFUSION_SMALL, tiny=dict(align_weight=0.0))
