"""HisToGene's Config and presets, torch-free: method.py takes them from here, and planning
(`flag-bench run --dry-run`, `flag-bench show histogene`) reads them without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from flag_bench.methods.config_home import ConfigHome

TOKENS = ("pixels", "embeddings")


@dataclass(frozen=True)
class HisToGeneConfig:
    tokens: str = "pixels"  # "embeddings": encoder embeddings (token_encoder) instead of raw pixels
    token_encoder: str = "efficientnet-lite0"
    patch_px: int = 112
    patch_um: float | None = None  # None: the run's patch field
    pixel_scale: float = 1.0  # 1.0 = raw 0-255 as the official loader; 1/255 = ToTensor units
    dim: int = 1024
    depth: int = 8  # the tutorial's n_layers (class default 4)
    heads: int = 16
    dim_head: int = 64
    mlp_dim: int = 2048
    dropout: float = 0.1
    lr: float = 1e-5  # tutorial and README; vis_model.py's class default is 1e-4
    epochs: int = 100
    n_pos: int | None = None  # None: max(min_pos, the training slides' largest grid index + 1 + pos_margin)
    min_pos: int = 64  # the official table size (vis_model.py n_pos=64)
    pos_margin: int = 2
    grid_step_um: float | None = None  # None: each slide's median nearest-neighbour distance
    max_seq_len: int | None = 2048  # larger slides are windowed (memory guard)
    amp: bool = False

    def __post_init__(self):
        if self.tokens not in TOKENS:
            raise ValueError(f"tokens must be one of {TOKENS}, got {self.tokens!r}")
        if min(self.patch_px, self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.epochs) < 1:
            raise ValueError("patch_px, dim, depth, heads, dim_head, mlp_dim and epochs must be >= 1")
        if self.n_pos is not None and self.n_pos < 1 or self.min_pos < 1:
            raise ValueError("n_pos and min_pos must be >= 1")
        if self.max_seq_len is not None and self.max_seq_len < 1:
            raise ValueError("max_seq_len must be >= 1")
        if self.pos_margin < 0 or self.pixel_scale <= 0 or (self.grid_step_um is not None and self.grid_step_um <= 0):
            raise ValueError("pos_margin must be >= 0, pixel_scale and grid_step_um > 0")


# what each preset was chosen on: the card's tuned_on (card.py); keep it in step with this table
PRESETS = {
    # paper: the tutorial's model. Memory per sequence of N spots (fp32, training): input
    # N x 37,632 x 4 B (~0.15 MB per spot) plus per layer 16 x N^2 x 4 B attention scores kept
    # for backward (N = 2,048: ~0.27 GB per layer, ~2.1 GB over 8 layers) and ~100 M weights
    # with Adam state (~1.7 GB); slides above 2,048 spots are windowed.
    "paper": {},
    # CPU: 32 px patches (3,072 values), d 64, 2 layers, lr 1e-3 (1e-5 does not converge in
    # the CPU epoch budget, baselines-spec §2.9) and pixels in 0-1 units: at 0-255 the patch
    # token swamps the residual stream and the fit stalls (her2st-mini C2, G=50: PCC 0.36,
    # MSE 1.04 vs the mean's 0.98; at 0-1: 0.52 / 0.79). Both recorded as deviations.
    "small": dict(patch_px=32, pixel_scale=1 / 255, dim=64, depth=2, heads=4, dim_head=16, mlp_dim=128,
                  lr=1e-3, epochs=150, max_seq_len=1024),
    "tiny": dict(patch_px=8, pixel_scale=1 / 255, dim=16, depth=1, heads=2, dim_head=8, mlp_dim=32, lr=1e-3, epochs=3,
                 max_seq_len=64),
}

HOMES = {"histogene": ConfigHome(HisToGeneConfig, PRESETS)}
