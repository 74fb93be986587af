"""TRIPLEX (Chung et al., CVPR 2024): target, neighbourhood and whole-slide image streams fused by
cross-attention, trained with a fusion + self-distillation loss.

Target stream: the spot's tile through a trainable CNN whose last feature map becomes tokens.
Neighbour stream: frozen features at the 5x5 positions around the spot, a Transformer with a
learned offset bias, positions off the slide masked. Global stream: frozen features of every
spot of the slide, Transformer - APEG (depthwise conv on the spot grid) - Transformer. The
global token queries one shared cross-attention stack over the target and the neighbour tokens;
four heads (fusion, target, neighbour, global), outputs clamped at 0. Departures from the
official code are config switches listed in ``summary["deviations"]``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from flag_bench.errors import UserError
from flag_bench.methods.common.inputs import EmbeddingNormalizer, require_embeddings
from flag_bench.methods.common.torch_method import INIT, TRAIN, TorchMethod
from flag_bench.methods.triplex import backbones, geometry, inputs
from flag_bench.methods.triplex.card import TRIPLEX
from flag_bench.methods.triplex.model import TriplexNet
from flag_bench.methods.triplex.train import Schedule, fit_loop, predict_bank

log = logging.getLogger(__name__)
TARGET_ENCODERS = ("resnet18", "convnet")
NEIGHBOUR_SOURCES = ("region", "grid")
MONITORS = ("pcc", "mse")
CIGA = "ciga-resnet18"
# the official "andersson" (HER2ST, new code) architecture: fusion / global / neighbour
OFFICIAL_SIZE = dict(emb_dim=512, depth_fusion=1, depth_global=3, depth_neighbour=3, heads_fusion=4, heads_global=16,
                     heads_neighbour=16, mlp_ratio_fusion=4.0, mlp_ratio_global=4.0, mlp_ratio_neighbour=1.0,
                     dropout_fusion=0.2, dropout_global=0.1, dropout_neighbour=0.3)


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
                                     ("target_norm", self.target_norm, inputs.TARGET_NORMS)):
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
            raise ValueError(backbones.missing_weights_message(self.ciga_weights))

    @property
    def needs_ciga(self) -> bool:
        return self.target_encoder == "resnet18" or self.feature_encoder == CIGA


class Triplex(TorchMethod):
    card = TRIPLEX
    Config = TriplexConfig
    # what each preset was chosen on: the card's tuned_on (card.py); keep it in step with this table
    presets = {
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

    @classmethod
    def check_resources(cls, config: TriplexConfig) -> None:
        """Fails with a one-line UserError when the config needs files that are not there."""
        if config.needs_ciga and (not config.ciga_weights or not Path(config.ciga_weights).is_file()):
            raise UserError(backbones.missing_weights_message(config.ciga_weights))

    # -- inputs ------------------------------------------------------------------------------
    def _patch(self, s, px: int):
        from flag_bench.datasets.base import PatchSpec

        um = self.config.tile_um if self.config.tile_um is not None else s.image.patch.size_um
        return PatchSpec(float(um), int(px))

    def _encoder(self, s):
        name = self.config.feature_encoder
        if name == CIGA:
            if getattr(self, "ciga_", None) is None:
                self.ciga_ = backbones.CigaResNet18(self.config.ciga_weights)
            return self.ciga_
        return s.image.encoders(name)

    def _frozen(self, s) -> np.ndarray:
        """(n, F) frozen features of every spot, through the embedding cache."""
        if self.config.feature_encoder is None:
            return np.asarray(s.embeddings, dtype=np.float32)
        from flag_bench.datasets.embed_cache import embeddings_for

        img = s.image
        return embeddings_for(img.ref, img.read, self._encoder(s), img.patch, device=img.device,
                              cache_dir=img.cache_dir)

    def _part(self, s, raw: np.ndarray) -> dict:
        cfg = self.config
        grid = geometry.infer_grid(s.coords_um, cfg.grid_step_um, cfg.max_grid_cells)
        feats = self.norm_(raw)
        if cfg.neighbour_source == "grid":
            table = geometry.cell_means(grid, feats)
            rows, mask = geometry.neighbourhood(grid, cfg.neighbour_radius)
        else:
            patch = s.image.patch
            tiles, mask = inputs.region_tiles(s, cfg.neighbour_radius, patch.size_um, patch.size_px)
            table = self.norm_(self._encoder(s).encode(tiles, self.device))
            rows = np.arange(len(table)).reshape(s.n_spots, -1)
        info = {"slide": s.slide_id, "grid": list(grid.shape), "grid_step_um": [round(v, 2) for v in grid.step_um],
                "grid_collisions": grid.collisions, "neighbour_masked_fraction": round(float(1 - mask.mean()), 4)
                if mask.size else 0.0}
        log.info("triplex: slide %s grid %s, %d spots merged by the rounding", s.slide_id, grid.shape, grid.collisions)
        return {"tiles": s.image.tiles(self._patch(s, cfg.tile_px)), "feats": feats, "table": table, "rows": rows,
                "mask": mask, "grid": grid, "info": info}

    def _bank(self, data, with_targets: bool) -> inputs.Bank:
        inputs.check_images(data)
        if self.config.feature_encoder is None:
            require_embeddings(data, self.card.name)
        parts = [self._part(s, self._frozen(s)) for s in data.slides]
        targets = [self._targets(s, p["grid"]) for s, p in zip(data.slides, parts)] if with_targets else None
        return inputs.stack_bank(parts, targets)

    def _targets(self, s, grid: geometry.Grid) -> np.ndarray:
        y = inputs.normalise_targets(s, self.config.target_norm)
        return geometry.smooth_targets(grid, y) if self.config.smooth_targets else y

    # -- fit / predict -----------------------------------------------------------------------
    def _schedule(self) -> Schedule:
        c = self.config
        return Schedule(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, weight_decay=c.weight_decay,
                        patience=c.patience, plateau_patience=c.plateau_patience, plateau_factor=c.plateau_factor,
                        monitor=c.monitor, alpha=c.alpha, augment=c.augment, amp=c.amp)

    def fit(self, train, val=None):
        cfg = self.config
        self.check_resources(cfg)
        inputs.check_images(train)
        if cfg.feature_encoder is None:
            require_embeddings(train, self.card.name)
        self.norm_ = EmbeddingNormalizer(np.concatenate([self._frozen(s) for s in train.slides]), cfg.feature_pca)
        bank = self._bank(train, True)
        vbank = self._bank(val, True) if val is not None and sum(s.n_spots for s in val.slides) >= 2 else None
        dev = torch.device(self.device)
        torch.manual_seed(self.stream_seed(INIT))
        trunk = backbones.build_target_trunk(cfg.target_encoder, cfg.conv_width, cfg.ciga_weights)
        net = TriplexNet(trunk, bank.feats.shape[1], train.n_genes, cfg).to(dev)
        if cfg.init_bias_to_mean:
            with torch.no_grad():
                for head in (net.fc, net.fc_target, net.fc_neighbour, net.fc_global):
                    head.bias.copy_(bank.targets.mean(0))
        loop = fit_loop(self, net, bank, vbank, self._schedule(), dev, self.generator(TRAIN))
        self.net_ = net
        tokens = net.trunk(torch.zeros(1, 3, cfg.tile_px, cfg.tile_px, device=dev)).flatten(2).shape[-1]
        self.summary = {"trained": True, **loop, "n_train_spots": int(len(bank.feats)), "target_tokens": int(tokens),
                        "feature_dim": int(bank.feats.shape[1]), "features": self.norm_.describe(),
                        "slides": bank.info + (vbank.info if vbank is not None else []),
                        "grid_collisions": int(sum(i["grid_collisions"] for i in bank.info)),
                        "output_space": "harness target" if cfg.target_norm == "harness" else
                        f"{cfg.target_norm} (not the harness target: scores are not comparable)",
                        "deviations": self._deviations(train, val)}
        return self

    @torch.no_grad()
    def predict(self, test):
        bank = self._bank(test, False)
        pred = predict_bank(self.net_, bank, torch.device(self.device), self.config.predict_batch, self.config.amp)
        return [pred[st:st + n] for st, n, _, _ in bank.slides]

    def _deviations(self, train, val) -> dict:
        from flag_bench.methods.triplex.deviations import deviations

        return deviations(self.config, train, val, OFFICIAL_SIZE, asdict(self.config))
