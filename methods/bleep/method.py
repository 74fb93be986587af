"""BLEEP (Xie et al., NeurIPS 2023): contrastive image/expression embedding, prediction by retrieval.

An image encoder + projection head and an expression projection head are trained with the
soft-target symmetric contrastive loss (nets.py); the checkpoint with the lowest contrastive loss
on the validation slide is kept; a test spot's prediction averages the measured expression of
the training spots whose expression embeddings are most cosine-similar to its image embedding
(retrieval.py, chunked). Departures from the official code are config switches listed in
``summary["deviations"]``: no Harmony (it uses test expression), the harness's target and panel,
validation on a held-out training slide instead of a random 80/20 spot split, tiles cut at the
harness's um/px, and on CPU presets heads trained on frozen encoder features.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from flag_bench.errors import UserError
from flag_bench.methods.bleep import config as config_module
from flag_bench.methods.bleep.card import BLEEP
from flag_bench.methods.bleep.config import PRESETS, BleepConfig
from flag_bench.methods.bleep import nets
from flag_bench.methods.bleep.retrieval import retrieve
from flag_bench.methods.common import images, training
from flag_bench.methods.common.inputs import EmbeddingNormalizer, require_embeddings, stack_embeddings, stack_targets
from flag_bench.methods.common.torch_method import INIT, TRAIN, TorchMethod


class BleepNet(nn.Module):
    def __init__(self, encoder: nn.Module | None, feat_dim: int, n_genes: int, cfg: BleepConfig):
        super().__init__()
        self.encoder = encoder
        self.image_head = nets.ProjectionHead(feat_dim, cfg.projection_dim, cfg.dropout)
        self.spot_head = nets.ProjectionHead(n_genes, cfg.projection_dim, cfg.dropout)


class Bleep(TorchMethod):
    card = BLEEP
    Config = BleepConfig
    presets = PRESETS  # what each was chosen on: the card's tuned_on

    @classmethod
    def check_resources(cls, config: BleepConfig) -> None:
        """Fails with a one-line UserError when the config needs files that are not there."""
        config_module.check_resources(config)

    # -- inputs ------------------------------------------------------------------------------
    def _patch(self, data):
        from flag_bench.datasets.base import PatchSpec

        um = self.config.tile_um if self.config.tile_um is not None else data.slides[0].image.patch.size_um
        return PatchSpec(float(um), int(self.config.tile_px))

    def _images(self, data) -> torch.Tensor:
        """Frozen: standardised embeddings (n, D) float; else uint8 tiles (n, 3, px, px)."""
        if self.config.image_encoder == "frozen":
            require_embeddings(data, self.card.name)
            return torch.as_tensor(self.norm_(stack_embeddings(data, np.float32)))
        for s in data.slides:
            if s.image is None:
                raise UserError(f"method 'bleep' needs image tiles but slide {s.slide_id} has none; "
                                "use a dataset with images or image_encoder='frozen'")
        patch = self._patch(data)
        return torch.cat([images.tiles_to_tensor(s.image.tiles(patch)) for s in data.slides])

    def _embed_images(self, net: BleepNet, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        dev = next(net.parameters()).device
        if net.encoder is not None:
            if gen is not None and self.config.augment:
                x = images.augment(x, gen)
            with training.autocast(self.device, self.config.amp):
                return net.image_head(net.encoder(images.normalise(x.to(dev)))).float()
        with training.autocast(self.device, self.config.amp):
            return net.image_head(x.to(dev)).float()

    def _embed_spots(self, net: BleepNet, y: torch.Tensor) -> torch.Tensor:
        with training.autocast(self.device, self.config.amp):
            return net.spot_head(y).float()

    # -- fit ---------------------------------------------------------------------------------
    def _build(self, train) -> BleepNet:
        cfg = self.config
        self.check_resources(cfg)
        torch.manual_seed(self.stream_seed(INIT))
        if cfg.image_encoder == "frozen":
            require_embeddings(train, self.card.name)
            self.norm_ = EmbeddingNormalizer(stack_embeddings(train, np.float32), cfg.feature_pca)
            encoder, dim = None, self.norm_.dim
        else:
            encoder = nets.build_encoder(cfg.image_encoder, cfg.encoder_weights)
            dim = encoder.dim
        return BleepNet(encoder, dim, train.n_genes, cfg).to(torch.device(self.device))

    def _val_loss(self, net: BleepNet, x: torch.Tensor, y: torch.Tensor) -> float:
        """Mean contrastive loss over consecutive batches of the validation slide (fixed order)."""
        bs, losses, weights = self.config.batch_size, [], []
        with torch.no_grad():
            for a in range(0, len(y), bs):
                if len(y[a:a + bs]) < 2:
                    continue
                img = self._embed_images(net, x[a:a + bs], None)
                loss = nets.soft_clip_loss(img, self._embed_spots(net, y[a:a + bs]), self.config.temperature)
                losses.append(float(loss))
                weights.append(len(y[a:a + bs]))
        return float(np.average(losses, weights=weights)) if losses else math.nan

    def fit(self, train, val=None):
        cfg = self.config
        net = self._build(train)
        dev = torch.device(self.device)
        gen = self.generator(TRAIN)
        x = self._images(train)
        y = torch.as_tensor(stack_targets(train), device=dev)
        n = len(y)
        bs = min(cfg.batch_size, n)
        per_epoch = max(1, n // bs)  # full batches only, as the official loaders (drop_last)
        steps = max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))
        batches = _batch_stream(n, bs, gen)

        def micro_step(step, micro):
            idx = next(batches)
            img = self._embed_images(net, x[idx], gen)
            return nets.soft_clip_loss(img, self._embed_spots(net, y[idx]), cfg.temperature), {}

        validate = None
        if val is not None and sum(s.n_spots for s in val.slides) >= 2:
            xv, yv = self._images(val), torch.as_tensor(stack_targets(val), device=dev)
            validate = lambda model: -self._val_loss(model, xv, yv)  # noqa: E731
        settings = training.LoopSettings(steps=steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                         grad_accum=cfg.grad_accum, grad_clip=None, ema_decay=None,
                                         eval_every=max(1, per_epoch // cfg.grad_accum) if validate else 0)
        self.net_, loop = training.train(self, net, micro_step, settings, validate=validate)
        self._store_bank(train, val)
        self.summary = {"trained": True, **loop, "n_train_spots": n, "contrastive_batch": bs,
                        "effective_batch": bs * cfg.grad_accum, "epochs": round(steps * cfg.grad_accum / per_epoch, 2),
                        "checkpoint": "lowest validation-slide contrastive loss" if validate else "last (no validation)",
                        "bank_spots": int(len(self.bank_values_)), "deviations": self._deviations(train)}
        return self

    def _store_bank(self, train, val) -> None:
        parts = [train] + ([val] if val is not None and self.config.bank_includes_val else [])
        y = np.concatenate([stack_targets(p) for p in parts])
        self.bank_values_ = torch.as_tensor(y, device=torch.device(self.device))
        with torch.no_grad():
            self.bank_keys_ = torch.cat([self._embed_spots(self.net_, self.bank_values_[a:a + 4096])
                                         for a in range(0, len(y), 4096)])

    def _deviations(self, train) -> dict:
        cfg = self.config
        dev = {"harmony": "off: it is fitted on test expression (transductive)",
               "target": f"harness target ({train.target_transform}) on the fold panel, not the HVG union",
               "validation": "a held-out training slide, not a random 80/20 spot split",
               "contrastive_batch": f"{cfg.batch_size} x {cfg.grad_accum} accumulated (paper: 128 x 4 GPUs)"}
        if cfg.image_encoder == "frozen":
            dev["image_encoder"] = ("frozen: heads trained on the run's encoder embeddings (standardised"
                                    f"{', PCA ' + str(cfg.feature_pca) if cfg.feature_pca else ''}); "
                                    "no fine-tuning, no augmentation")
        else:
            dev["tile"] = f"{self._patch(train).key()} at the harness um/px (paper: 224 px native)"
            if cfg.image_encoder != "resnet50":
                dev["image_encoder"] = f"{cfg.image_encoder} fine-tuned instead of ResNet-50"
        if cfg.retrieval != "average" or cfg.top_k != 50:
            dev["retrieval"] = f"{cfg.retrieval}, k={cfg.top_k} (paper default: average, k=50)"
        return dev

    # -- predict -----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, test):
        cfg = self.config
        self.net_.eval()
        out = []
        for s in test.slides:
            one = type(test)(genes=test.genes, gene_ids=test.gene_ids, target_transform=test.target_transform,
                             dataset=test.dataset, slides=(s,))
            x = self._images(one)
            q = torch.cat([self._embed_images(self.net_, x[a:a + cfg.encode_batch], None)
                           for a in range(0, len(x), cfg.encode_batch)]) if len(x) else \
                torch.zeros((0, cfg.projection_dim), device=self.bank_keys_.device)
            pred = retrieve(q, self.bank_keys_, self.bank_values_, method=cfg.retrieval, k=cfg.top_k,
                            query_chunk=cfg.query_chunk, bank_chunk=cfg.bank_chunk)
            out.append(pred.cpu().numpy().astype(np.float32))
        return out


def _batch_stream(n: int, bs: int, gen: torch.Generator):
    """Endless full batches of spot indices, a fresh permutation every epoch."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for b in range(max(1, n // bs)):
            yield perm[b * bs:(b + 1) * bs]
