"""Stem's Config and presets, torch-free: stem.py takes them from here, and planning
(`flag-bench run --dry-run`, `flag-bench show stem`) reads them without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from flag_bench.methods.config_home import ConfigHome


@dataclass(frozen=True)
class StemConfig:
    hidden: int = 384
    depth: int = 12
    heads: int = 6
    mlp_ratio: float = 4.0
    max_gene_tokens: int | None = None  # None: one token per gene; else genes are grouped to fit
    max_genes_per_token: int | None = None  # caps the group size (wins over max_gene_tokens), see dit.py
    cond_pca: int | None = None  # PCA-reduce the standardised embeddings (train spots only)
    diffusion_steps: int = 1000
    sampling_steps: int = 1000  # respaced when smaller
    n_samples: int = 20
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 4000  # used when ``steps`` is None
    steps: int | None = None
    grad_clip: float | None = None
    ema_decay: float = 0.9999
    ema_warmup: bool = False
    max_seconds: float | None = None
    predict_batch: int = 4096  # sequences per sampling forward
    clip_at_zero: bool = True
    amp: bool = False
    compile: bool = False

    def __post_init__(self):
        if self.hidden % self.heads:
            raise ValueError("hidden must be divisible by heads")
        if self.n_samples < 1 or self.sampling_steps < 1 or self.batch_size < 1:
            raise ValueError("n_samples, sampling_steps and batch_size must be >= 1")


# what each preset was chosen on: the card's tuned_on (stem_card.py); keep it in step with this table
PRESETS = {
    "paper": {},
    # CPU demo: baselines-spec §4.10 (D 32, 2 blocks, batch 64, EMA 0.99, respaced sampling,
    # 4 samples); fixed step count so the same seed gives the same numbers. For the 35 s
    # budget per her2st-mini fold: genes grouped into <= 16 tokens of <= 16 genes and lr 2e-3
    # for 800 steps (her2st-mini C2, G=50: PCC 0.544 vs 0.542 with 64 tokens / lr 1e-3 / 1200
    # steps, in a third of the time)
    "small": dict(hidden=32, depth=2, heads=2, max_gene_tokens=16, max_genes_per_token=16, cond_pca=64,
                  sampling_steps=25, n_samples=4, lr=2e-3, batch_size=64, steps=800, ema_decay=0.99,
                  ema_warmup=True, grad_clip=1.0, predict_batch=2048),
    "tiny": dict(hidden=16, depth=1, heads=2, max_gene_tokens=16, cond_pca=8, sampling_steps=5,
                 n_samples=2, lr=1e-3, batch_size=32, steps=20, ema_decay=0.9, ema_warmup=True,
                 grad_clip=1.0),
}

HOMES = {"stem": ConfigHome(StemConfig, PRESETS)}
