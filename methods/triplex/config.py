"""TRIPLEX's Config, presets and resource check, torch-free: method.py, inputs.py and backbones.py
take them from here, and planning (`flag-bench run --dry-run`, `flag-bench show triplex`) reads
them without importing torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flag_bench.errors import UserError
from flag_bench.methods.config_home import ConfigHome

TARGET_ENCODERS = ("resnet18", "convnet")
NEIGHBOUR_SOURCES = ("region", "grid")
MONITORS = ("pcc", "mse")
TARGET_NORMS = ("harness", "scprep_panel_log10", "panel_cpm_ln")
CIGA = "ciga-resnet18"
# the official "andersson" (HER2ST, new code) architecture: fusion / global / neighbour
OFFICIAL_SIZE = dict(emb_dim=512, depth_fusion=1, depth_global=3, depth_neighbour=3, heads_fusion=4, heads_global=16,
                     heads_neighbour=16, mlp_ratio_fusion=4.0, mlp_ratio_global=4.0, mlp_ratio_neighbour=1.0,
                     dropout_fusion=0.2, dropout_global=0.1, dropout_neighbour=0.3)


def missing_weights_message(path: str | None) -> str:
    what = "no ciga_weights set" if not path else f"ciga_weights {path} does not exist"
    return (f"method 'triplex': the ResNet-18 encoders need Ciga et al.'s local tenpercent_resnet18.ckpt ({what}); "
            "set [methods.triplex] ciga_weights = '/path/to/tenpercent_resnet18.ckpt' or use the small preset")


@dataclass(frozen=True)
class TriplexConfig:
    target_encoder: str = "resnet18"  # Ciga ResNet-18, trainable; "convnet": SmallConv from scratch
    conv_width: int = 32
    ciga_weights: str | None = None  # local tenpercent_resnet18.ckpt (never downloaded)
    feature_encoder: str | None = CIGA  # frozen features; None: the run's embeddings
    feature_pca: int | None = None
    feature_projection: bool = False  # force Linear(F -> D) even when F == D
    neighbour_source: str = "region"  # 5x5 image tiles around the spot; "grid": 5x5 spot-grid cells
    neighbour_radius: int = 2
    tile_px: int = 224
    tile_um: float | None = None  # None: the run's patch field
    augment: bool = True
    emb_dim: int = 512
    depth_fusion: int = 1
    depth_global: int = 3
    depth_neighbour: int = 3
    heads_fusion: int = 4
    heads_global: int = 16
    heads_neighbour: int = 16
    mlp_ratio_fusion: float = 4.0
    mlp_ratio_global: float = 4.0
    mlp_ratio_neighbour: float = 1.0
    dropout_fusion: float = 0.2
    dropout_global: float = 0.1
    dropout_neighbour: float = 0.3
    apeg_kernel: int = 3
    alpha: float = 0.3
    clamp_outputs: bool = True
    # start the four heads at the training targets' mean (official: default init, outputs near
    # 0): with few steps per epoch the clamped heads otherwise spend ~20 epochs climbing to the
    # mean, and a PCC monitor can stop inside that climb (her2st-mini C6: MSE 4.4)
    init_bias_to_mean: bool = False
    target_norm: str = "harness"  # or the authors' "scprep_panel_log10" / "panel_cpm_ln"
    smooth_targets: bool = False  # the authors' 3x3 smoothing (training targets only here)
    grid_step_um: float | None = None  # None: per-axis lattice steps inferred from the coordinates
    max_grid_cells: int = 4_000_000
    lr: float = 1e-4
    weight_decay: float = 0.01  # torch AdamW's default, which the official optimiser uses
    batch_size: int = 128
    epochs: int = 1000
    patience: int = 20
    plateau_patience: int = 10
    plateau_factor: float = 0.1
    monitor: str = "pcc"
    predict_batch: int = 1024
    amp: bool = False

    def __post_init__(self):
        for name, value, allowed in (("target_encoder", self.target_encoder, TARGET_ENCODERS),
                                     ("neighbour_source", self.neighbour_source, NEIGHBOUR_SOURCES),
                                     ("monitor", self.monitor, MONITORS),
                                     ("target_norm", self.target_norm, TARGET_NORMS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if min(self.conv_width, self.tile_px, self.emb_dim, self.depth_fusion, self.depth_global, self.depth_neighbour,
               self.heads_fusion, self.heads_global, self.heads_neighbour, self.batch_size, self.epochs,
               self.predict_batch, self.apeg_kernel) < 1 or self.neighbour_radius < 0:
            raise ValueError("sizes, depths, heads, batch sizes and epochs must be >= 1, neighbour_radius >= 0")
        if any(self.emb_dim % h for h in (self.heads_fusion, self.heads_global, self.heads_neighbour)):
            raise ValueError("emb_dim must be a multiple of every heads_* value")
        if not 0 <= self.alpha <= 1:
            raise ValueError("alpha must be in [0, 1]")
        if self.neighbour_source == "region" and self.feature_encoder is None:
            raise ValueError("neighbour_source 'region' encodes tiles itself: name a feature_encoder")
        if self.needs_ciga and self.ciga_weights and not Path(self.ciga_weights).is_file():
            raise ValueError(missing_weights_message(self.ciga_weights))

    @property
    def needs_ciga(self) -> bool:
        return self.target_encoder == "resnet18" or self.feature_encoder == CIGA


# what each preset was chosen on: the card's tuned_on (card.py); keep it in step with this table
PRESETS = {
    # paper: the official HER2ST ("andersson", new code) model and recipe with the Ciga
    # ResNet-18. GPU memory of one training step (batch 128 x 224 px, 25 x 512 neighbour
    # features, 250 genes; benchmarks/bench_triplex_gpu.py on an H100): the global stream
    # re-encodes every slide in the batch, so memory grows with those slides' spots:
    # 4 slides x 600 spots 3.7 GiB fp32 / 2.4 GiB amp; 8 x 4,000 spots 6.9 / 4.5 GiB.
    # Plus the region neighbourhood encoding (frozen ResNet-18, inference; not measured).
    "paper": {},
    # CPU (~550-750 training spots on her2st-mini): a three-stage conv net on 32 px tiles
    # (4 x 4 = 16 target tokens; 56 px gives the paper's 49 but ~4x the conv cost) trained
    # from scratch, EfficientNet-Lite0 frozen features (PCA 64), neighbours from the spot
    # grid (25 region encodings per spot cost minutes), d 64, lr 1e-3, batch 256 (fewer
    # steps: every step re-encodes each slide of the batch), at most 40 epochs, patience 8.
    "small": dict(target_encoder="convnet", conv_width=8, tile_px=32, feature_encoder="efficientnet-lite0",
                  feature_pca=64, neighbour_source="grid", emb_dim=64, depth_fusion=1, depth_global=2,
                  depth_neighbour=1, heads_fusion=4, heads_global=4, heads_neighbour=4, mlp_ratio_fusion=2.0,
                  mlp_ratio_global=2.0, mlp_ratio_neighbour=2.0, dropout_fusion=0.1, dropout_global=0.1,
                  dropout_neighbour=0.1, lr=1e-3, batch_size=256, epochs=40, patience=8, plateau_patience=4,
                  init_bias_to_mean=True),
    "tiny": dict(target_encoder="convnet", conv_width=4, tile_px=16, feature_encoder=None, feature_pca=8,
                 neighbour_source="grid", emb_dim=16, depth_fusion=1, depth_global=2, depth_neighbour=1,
                 heads_fusion=2, heads_global=2, heads_neighbour=2, mlp_ratio_fusion=1.0, mlp_ratio_global=1.0,
                 mlp_ratio_neighbour=1.0, lr=1e-3, batch_size=32, epochs=2, patience=0, init_bias_to_mean=True),
}


def check_resources(config: TriplexConfig) -> None:
    """Fails with a one-line UserError when the config needs files that are not there."""
    if config.needs_ciga and (not config.ciga_weights or not Path(config.ciga_weights).is_file()):
        raise UserError(missing_weights_message(config.ciga_weights))


HOMES = {"triplex": ConfigHome(TriplexConfig, PRESETS, check_resources)}
