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
from dataclasses import asdict

import numpy as np
import torch

from flag_bench.methods.common.inputs import EmbeddingNormalizer, require_embeddings
from flag_bench.methods.common.torch_method import INIT, TRAIN, TorchMethod
from flag_bench.methods.triplex import backbones, geometry, inputs
from flag_bench.methods.triplex import config as config_module
from flag_bench.methods.triplex.card import TRIPLEX
from flag_bench.methods.triplex.config import CIGA, OFFICIAL_SIZE, PRESETS, TriplexConfig
from flag_bench.methods.triplex.model import TriplexNet
from flag_bench.methods.triplex.train import Schedule, fit_loop, predict_bank

log = logging.getLogger(__name__)


class Triplex(TorchMethod):
    card = TRIPLEX
    Config = TriplexConfig
    presets = PRESETS  # what each was chosen on: the card's tuned_on

    @classmethod
    def check_resources(cls, config: TriplexConfig) -> None:
        """Fails with a one-line UserError when the config needs files that are not there."""
        config_module.check_resources(config)

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
