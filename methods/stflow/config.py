"""STFlow's Config and presets, torch-free: method.py takes them from here, and planning
(`flag-bench run --dry-run`, `flag-bench show stflow`) reads them without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from flag_bench.methods.config_home import ConfigHome

PRIORS = ("zinb", "gaussian", "zero")
SIZES = ("uniform", "constant")
ACTIVATIONS = ("swiglu", "gelu", "silu", "relu")
PAPER = dict(hidden_dim=128, edge_dim=128, n_layers=4, n_heads=4, n_neighbors=8, activation="swiglu", dropout=0.2,
             attn_dropout=0.2, lr=5e-4, epochs=100, batch_size=2, sample_times=10)


@dataclass(frozen=True)
class STFlowConfig:
    coords: str = "um"  # "px": pixels at pixel_size_um (the official code feeds level-0 pixels)
    pixel_size_um: float = 0.5
    feature_pca: int | None = None  # PCA of the standardised embeddings (None: all features)
    hidden_dim: int = 128
    edge_dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_neighbors: int = 8
    activation: str = "swiglu"
    dropout: float = 0.2
    attn_dropout: float = 0.2
    mlp_ratio: float = 4.0
    non_negative: bool = True  # ReLU read-out: the authors' intent (upstream's constructor raises)
    prior: str = "zinb"
    zinb_total_count: float = 1.0
    zinb_logits: float = 0.1
    zinb_zi_logits: float = 0.0
    n_sample_steps: int = 5  # grid points; n - 1 function evaluations
    # prior draws denoised per slide, averaged into the prediction; the official inference is one
    # draw, so the prediction is a single sample unless this is raised
    n_samples: int = 1
    t_start: float = 0.01
    lr: float = 5e-4
    grad_clip: float | None = 1.0
    epochs: int = 100
    batch_size: int = 2
    sample_times: int = 10  # sub-slides per training slide per epoch
    subslide_size: str = "uniform"  # "constant": whole slides
    min_subslide: int | None = None  # None: n_neighbors + 1 (upstream 2 leaves tiny draws without neighbours)
    max_subslide: int | None = None  # memory cap on a training item (None: whole slide possible)
    patience: int = 20  # validations without improvement
    val_metric: str = "pcc"  # "pcc": pooled per-gene Pearson as upstream; "mse": minus MSE
    amp: bool = False

    def __post_init__(self):
        for name, value, allowed in (("coords", self.coords, ("um", "px")), ("prior", self.prior, PRIORS),
                                     ("subslide_size", self.subslide_size, SIZES),
                                     ("activation", self.activation, ACTIVATIONS),
                                     ("val_metric", self.val_metric, ("pcc", "mse"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if min(self.hidden_dim, self.edge_dim, self.n_layers, self.n_heads, self.n_neighbors, self.epochs,
               self.batch_size, self.sample_times, self.n_samples) < 1:
            raise ValueError("widths, n_layers, n_heads, n_neighbors, epochs, batch_size, sample_times, n_samples "
                             "must be >= 1")
        if self.hidden_dim % self.n_heads or self.edge_dim % self.n_heads:
            raise ValueError("hidden_dim and edge_dim must be multiples of n_heads")
        if self.n_sample_steps < 2 or not 0.0 <= self.t_start < 1.0:
            raise ValueError("n_sample_steps must be >= 2 and t_start in [0, 1)")
        if self.min_subslide is not None and self.min_subslide < 2:
            raise ValueError("min_subslide must be >= 2")
        if self.max_subslide is not None and self.max_subslide < (self.min_subslide or self.n_neighbors + 1):
            raise ValueError("max_subslide must be >= min_subslide")
        if self.pixel_size_um <= 0:
            raise ValueError("pixel_size_um must be > 0")


# what each preset was chosen on: the card's tuned_on (card.py); keep it in step with this table
PRESETS = {
    # paper: upstream defaults (d 128, 4 layers, SwiGLU, k 8, Adam 5e-4, batch 2 sub-slides, 10 per
    # slide per epoch, 100 epochs, patience 20). GPU memory measured on an H200
    # (benchmarks/bench_stflow_gpu.py, 1,024-d UNI-width features, G 50): one training item of
    # 5,000 spots 2.3 GB fp32 / 1.7 GB bf16, of 20,000 spots 9.0 / 6.7 GB (linear in spots; a
    # batch holds 2 items); whole-slide 4-NFE sampling 1.3 GB at 5,000 and 5.1 GB at 20,000 spots.
    # The UNI v1 features the authors used come from the run's encoder (recorded by the run).
    "paper": {},
    # CPU (baselines-spec 5.10): d 64, 2 layers, GELU MLPs, Adam 1e-3, 4 sub-slides per slide per
    # epoch, 30 epochs, minimum sub-slide k + 8, PCA 64 of the standardised embeddings, training
    # items capped at 4,096 spots (memory: benchmarks/bench_stflow_memory.py). Batch 2 as upstream
    # (the spec's batch 1 doubles the optimiser steps; a step on her2st-mini's ~90-spot items
    # costs about the same at 1 or 2 items, so batch 2 halves fit time).
    "small": dict(feature_pca=64, hidden_dim=64, edge_dim=64, n_layers=2, activation="gelu", dropout=0.1,
                  attn_dropout=0.1, lr=1e-3, epochs=30, batch_size=2, sample_times=4, min_subslide=16,
                  max_subslide=4096, patience=10),
    "tiny": dict(feature_pca=8, hidden_dim=16, edge_dim=16, n_layers=1, n_heads=2, n_neighbors=4,
                 activation="gelu", dropout=0.0, attn_dropout=0.0, lr=1e-3, epochs=2, batch_size=2,
                 sample_times=1, patience=0),
}

HOMES = {"stflow": ConfigHome(STFlowConfig, PRESETS)}
